"""resolve-model: a local model folder for the configured model, and its content hash; for a batch,
the catalogue model (and LoRA adapter) its lines name, with that model's engine settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prefect import task
from pydantic import BaseModel, Field

from nightshift.core.artifacts import ModelRecord
from nightshift.core.catalogue import Catalogue
from nightshift.core.errors import BatchFileError, ConfigError
from nightshift.core.hashing import sha256_json
from nightshift.core.jsonl import iter_lines
from nightshift.core.validation import batch_model
from nightshift.engine.models import model_sha256, resolve_adapter, resolve_model
from nightshift.settings import EngineConfig, StorageConfig
from nightshift.storage.io import read_chunks


@task(name="resolve-model", retries=1)
def resolve_model_task(model: str, served_model_name: str | None, cache_dir: str) -> ModelRecord:
    """Find or build the model folder (no hub access) and hash it for the batch version."""
    path = resolve_model(model, Path(cache_dir)).absolute()
    return ModelRecord(
        name=served_model_name or path.name,
        source=str(path),
        sha256=model_sha256(path),
    )


class BatchModel(BaseModel):
    """The model a batch runs on, from the catalogue down to local folders and engine settings."""

    record: ModelRecord = Field(
        description=(
            "What the batch version and the manifest record: the id the lines name (a model or an adapter), the base "
            "model's folder (its tokenizer counts prompts), and the hash of the weights that answer (base + adapter)."
        )
    )
    model: str = Field(description="The catalogue model whose engine serves the batch (the adapter's base).")
    model_path: str = Field(description="That model's local folder.")
    adapters: dict[str, str] = Field(
        default_factory=dict, description="Every LoRA adapter of that model by id → local folder: one engine serves them all."
    )
    max_lora_rank: int | None = Field(default=None, description="The largest adapter rank (None: no adapters).")
    engine: EngineConfig = Field(description="The engine settings with the model's catalogue overrides applied.")


@task(name="resolve-batch-model", retries=1)
def resolve_batch_model(
    catalogue: Catalogue,
    input_uri: str,
    storage: StorageConfig,
    engine: EngineConfig,
    cache_dir: str,
    requested: str | None = None,
) -> BatchModel:
    """The catalogue model (or adapter) of a batch: ``requested`` (the run's ``model`` parameter),
    else the one the file's first line naming a catalogue id names, else the catalogue's default.

    ``requested`` may also be a model folder or an embedded model name outside the catalogue (the
    run then serves that model alone, under ``engine.served_model_name`` or the folder's name).
    Reads the file only up to that line, so the engine can start while the file is validated.
    """
    catalogue = run_catalogue(catalogue, requested, engine)
    if requested is not None:
        requested = catalogue.default if catalogue.resolve(requested) is None else requested
    named = requested or batch_model(_head_lines(input_uri, storage), catalogue)
    ref = catalogue.resolve(named)
    assert ref is not None  # named is a catalogue id, or None (the default)
    entry = catalogue.models[ref.model]
    config = engine.for_model(entry.engine, where=f"models.{ref.model}.engine")
    if ref.adapter is not None and config.backend != "actor":
        raise ConfigError(f"the LoRA adapter {ref.adapter!r} needs engine.backend 'actor' (ray.data.llm serves base models only)")
    cache = Path(cache_dir)
    path = resolve_model(entry.source, cache, storage.storage_options(entry.source)).absolute()
    adapters: dict[str, str] = {}
    ranks: list[int] = []
    sha = model_sha256(path)
    for name, adapter in sorted(entry.adapters.items()):
        folder, rank = resolve_adapter(adapter.source, cache, storage.storage_options(adapter.source))
        adapters[name] = str(folder.absolute())
        ranks.append(adapter.max_lora_rank or rank)
        if name == ref.adapter:
            # The answers come from base and adapter weights together: both enter the version and cache keys.
            sha = sha256_json({"model": sha, "adapter": model_sha256(folder)})
    return BatchModel(
        record=ModelRecord(name=ref.served_name, source=str(path), sha256=sha),
        model=ref.model,
        model_path=str(path),
        adapters=adapters,
        max_lora_rank=max(ranks) if ranks else None,
        engine=config,
    )


def run_catalogue(catalogue: Catalogue, requested: str | None, engine: EngineConfig) -> Catalogue:
    """The models a run may serve: the catalogue, or, when the run asks for a model folder or an
    embedded model outside it (``--model``), that model alone (named ``engine.served_model_name``
    or after the folder)."""
    if requested is None or catalogue.resolve(requested) is not None:
        return catalogue
    return Catalogue.single(engine.served_model_name or Path(requested).name, requested)


#: How far into the file the model is looked for before the engine starts (validation reads it all).
HEAD_BYTES = 8 << 20


def _head_lines(input_uri: str, storage: StorageConfig) -> Iterator[tuple[int, str]]:
    """The batch file's lines from its start, by the one line rule (``core.jsonl``), read only as
    far as the caller iterates and never past ``HEAD_BYTES``: a hostile file (one endless line) costs
    at most that. A batch whose first model-naming line lies further in runs on the default model,
    and validation then names its lines' model as a mismatch."""

    def head() -> Iterator[bytes]:
        read = 0
        for chunk in read_chunks(input_uri, chunk_size=1 << 20, **storage.storage_options(input_uri)):
            yield chunk[: HEAD_BYTES - read]
            read += len(chunk)
            if read >= HEAD_BYTES:
                return

    try:
        yield from iter_lines(head())
    except (OSError, BatchFileError):
        return  # validation reads the file again and says what is wrong with it

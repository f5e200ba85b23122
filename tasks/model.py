"""resolve-model: a local model folder for the configured model, and its content hash."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from nightshift.core.artifacts import ModelRecord
from nightshift.engine.models import model_sha256, resolve_model


@task(name="resolve-model", retries=1)
def resolve_model_task(model: str, served_model_name: str | None, cache_dir: str) -> ModelRecord:
    """Find or build the model folder (no hub access) and hash it for the batch version."""
    path = resolve_model(model, Path(cache_dir)).absolute()
    return ModelRecord(
        name=served_model_name or path.name,
        source=str(path),
        sha256=model_sha256(path),
    )

"""The model catalogue: which models (and LoRA adapters of them) this deployment serves, and what an
engine-hour of each costs on spot and on dedicated capacity.

One YAML file (``engine.catalogue`` in the settings) is the one owner of these facts; without one,
the catalogue holds a single entry built from ``engine.model``. A batch line's ``body.model`` names
a catalogue model or an adapter (adapter names are model ids of their own, as vLLM serves LoRA
modules: ``GET /v1/models`` lists them with their base model as ``parent``).

Example::

    default: smollm2-135m-instruct
    models:
      smollm2-135m-instruct:
        source: smollm2-135m-instruct          # an embedded name, a folder or an object-store URL
        price_per_engine_hour: {spot: 0.12, dedicated: 0.40}
        engine: {max_model_len: 2048}           # EngineConfig fields this model overrides
        adapters:
          smollm2-sql: {source: /models/smollm2-sql-lora}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nightshift.core.errors import ConfigError

PoolKind = Literal["spot", "dedicated"]

#: Model ids: what OpenAI and vLLM accept in ``body.model`` (no whitespace or control characters).
MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$"


class EngineHourPrices(BaseModel):
    """USD per engine-hour of one model's replica, on each kind of capacity."""

    model_config = ConfigDict(extra="forbid")

    spot: float = Field(default=0.12, ge=0, description="USD per engine-hour on spot (preemptible) capacity.")
    dedicated: float = Field(default=0.40, ge=0, description="USD per engine-hour on dedicated (on-demand) capacity.")

    def for_pool(self, pool: PoolKind) -> float:
        return self.spot if pool == "spot" else self.dedicated


class AdapterEntry(BaseModel):
    """A LoRA adapter of a catalogue model, served on the base model's engine."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="The adapter's folder (PEFT layout: adapter_config.json) or object-store URL.")
    max_lora_rank: int | None = Field(
        default=None, ge=1, le=512, description="Rank to reserve; read from the adapter when unset."
    )


class ModelEntry(BaseModel):
    """One servable model: where its weights are, how its engine is built, what it costs."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="An embedded model name, a local HF folder, or an object-store URL.")
    engine: dict[str, Any] = Field(default_factory=dict, description="EngineConfig fields this model overrides.")
    price_per_engine_hour: EngineHourPrices = Field(default_factory=EngineHourPrices)
    adapters: dict[str, AdapterEntry] = Field(default_factory=dict, description="LoRA adapters by model id.")


class ModelRef(BaseModel):
    """What a ``body.model`` resolves to: a base model, and the adapter to apply when it names one."""

    model_config = ConfigDict(frozen=True)

    model: str = Field(description="The catalogue model whose engine serves the request.")
    adapter: str | None = Field(default=None, description="The adapter's model id, when the line names one.")

    @property
    def served_name(self) -> str:
        """The id written in answers: the name the line asked for."""
        return self.adapter or self.model


class Catalogue(BaseModel):
    """All servable models by id; ``default`` serves lines that name no model."""

    model_config = ConfigDict(extra="forbid")

    default: str
    models: dict[str, ModelEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _ids_are_unique(self) -> Catalogue:
        if self.default not in self.models:
            raise ValueError(f"default model {self.default!r} is not in models ({', '.join(sorted(self.models))})")
        seen: dict[str, str] = {}
        for name, entry in self.models.items():
            for model_id in (name, *entry.adapters):
                if not re.match(MODEL_ID_PATTERN, model_id):
                    raise ValueError(f"model id {model_id!r} is not a valid model id (letters, digits, ._:/@+-)")
                if model_id in seen:
                    raise ValueError(f"model id {model_id!r} is declared twice (under {seen[model_id]!r} and {name!r})")
                seen[model_id] = name
        return self

    @classmethod
    def single(cls, name: str, source: str) -> Catalogue:
        """The catalogue of a deployment with no catalogue file: one model, default prices."""
        return cls(default=name, models={name: ModelEntry(source=source)})

    @classmethod
    def load(cls, path: str | Path) -> Catalogue:
        """Read a catalogue file; a bad file raises ConfigError naming the file and the field."""
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"model catalogue {path}: cannot be read ({exc.strerror})") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"model catalogue {path}: not valid YAML ({exc.__class__.__name__})") from exc
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise ConfigError(f"model catalogue {path}: {where}: {first['msg']}") from exc

    def ids(self) -> list[str]:
        """Every model id a batch line may name: models, then adapters, each sorted."""
        return sorted(self.models) + sorted(a for entry in self.models.values() for a in entry.adapters)

    def resolve(self, model_id: str | None) -> ModelRef | None:
        """The model (and adapter) a line's ``body.model`` names; None when the id is unknown."""
        if model_id is None:
            return ModelRef(model=self.default)
        if model_id in self.models:
            return ModelRef(model=model_id)
        for name, entry in self.models.items():
            if model_id in entry.adapters:
                return ModelRef(model=name, adapter=model_id)
        return None

    def price(self, model: str, pool: PoolKind) -> float:
        """USD per engine-hour of ``model`` on ``pool``'s capacity."""
        return self.models[model].price_per_engine_hour.for_pool(pool)

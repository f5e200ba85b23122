"""A fleet scenario: pools, the model's speed, arrivals and policy settings, read from YAML.

Arrivals come from a trace file (CSV or JSONL: ``submitted_at``, ``tier``, ``requests``, ``tokens``,
optional ``priority`` and ``name``) or a seeded generator (tier mix, log-normal batch sizes, a
daily cycle) plus recurring nightly jobs. Policy settings (safety factor, at-risk margin, shard
size, tier hours...) are the product's own ``Settings`` groups, overridden per scenario.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nightshift.core.errors import NightshiftError
from nightshift.core.jobs import Priority
from nightshift.core.sla import Tier
from nightshift.settings import Settings


class ScenarioError(ValueError, NightshiftError):
    """A scenario or trace file that cannot be simulated; names the file, line and field."""

    def __init__(self, message: str, *, source: str, line: int | None = None, field: str | None = None) -> None:
        self.source, self.line, self.field = source, line, field
        where = source + (f", line {line}" if line is not None else "") + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {message}")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Reclaim(_Spec):
    """One spot reclaim at a stated moment (on top of, or instead of, the random ones)."""

    at_seconds: float = Field(ge=0, description="When the reclaim notice arrives, seconds from the start.")
    gpu: int = Field(default=0, ge=0, description="Which spot GPU (index, modulo the pool's size).")


class PoolSpec(_Spec):
    """One pool of identical GPUs; one batch run holds one GPU (one engine replica) at a time."""

    name: str
    gpus: int = Field(ge=0, le=100_000)
    price_per_gpu_hour: float = Field(ge=0, description="USD per GPU-hour, billed while a run holds the GPU.")
    requests_per_second: float | None = Field(default=None, gt=0, description="Per-GPU speed here; default: the model's.")
    tokens_per_second: float | None = Field(default=None, gt=0, description="Per-GPU token speed here; default: the model's.")


class SpotPoolSpec(PoolSpec):
    """Spot capacity: reclaimed at random with a notice, replaced after a delay."""

    name: str = "gpu-spot"
    preemptions_per_gpu_hour: float = Field(default=0.0, ge=0, le=100, description="Reclaim rate of each spot GPU.")
    notice_seconds: float = Field(
        default=120.0, ge=0, description="Reclaim notice: the GPU takes no new run, the running one goes on until the end."
    )
    replacement_seconds: float = Field(default=300.0, ge=0, description="Until a reclaimed GPU's replacement is in service.")
    reclaims: list[Reclaim] = Field(default_factory=list, description="Reclaims at stated moments (tests, replayed incidents).")


class DedicatedPoolSpec(PoolSpec):
    """On-demand capacity: never reclaimed."""

    name: str = "gpu-dedicated"


class PoolsSpec(_Spec):
    spot: SpotPoolSpec
    dedicated: DedicatedPoolSpec


class ModelSpec(_Spec):
    """How fast one GPU serves the model: stated here, or the throughput the product measured per pool."""

    requests_per_second: float | None = Field(default=None, gt=0, description="Requests/s of one batch run on one GPU.")
    tokens_per_second: float | None = Field(default=None, gt=0, description="Tokens/s cap of one run (None: no cap).")
    startup_seconds: float = Field(default=60.0, ge=0, description="Engine start on a cold GPU (warm GPUs skip it).")
    speed_sigma: float = Field(
        default=0.0,
        ge=0,
        le=2,
        description="Batches differ in speed (prompt and answer lengths): each runs at the pool's speed times a "
        "log-normal factor of median 1 and this shape; placement only knows the pool's measured average.",
    )
    store: str | None = Field(
        default=None,
        description="Artifact store URL whose throughput logs (per model and pool, kept by finished batches) give the speed.",
    )
    name: str | None = Field(
        default=None, description="Catalogue model whose throughput is read from store (default: the catalogue's default)."
    )

    @model_validator(mode="after")
    def _speed_known(self) -> ModelSpec:
        if self.requests_per_second is None and self.store is None:
            raise ValueError("give requests_per_second, or store (the product's measured pool throughput)")
        return self


class GeneratorSpec(_Spec):
    """Seeded synthetic arrivals over the scenario's duration."""

    batches: int = Field(ge=0, le=10_000_000, description="Batches submitted over the whole duration.")
    tier_mix: dict[Tier, float] = Field(description="Share of batches per tier (normalised).")
    median_requests: float = Field(gt=0, description="Median batch size (log-normal).")
    sigma: float = Field(default=1.0, ge=0, le=5, description="Log-normal shape: spread of batch sizes.")
    max_requests: int = Field(default=50_000, ge=1, description="Sizes are capped here (the batch line limit).")
    tokens_per_request: float = Field(default=500.0, gt=0, description="Prompt plus completion tokens per request.")
    daily_amplitude: float = Field(default=0.5, ge=0, le=1, description="0: flat; 1: no arrivals at the daily trough.")
    peak_hour: float = Field(default=14.0, ge=0, lt=24, description="UTC hour of the daily arrival peak.")
    priority: Priority = Priority.NORMAL


class RecurringJob(_Spec):
    """A batch submitted every day at the same hour (a nightly scoring job)."""

    name: str
    hour: float = Field(ge=0, lt=24, description="UTC hour of day it is submitted.")
    requests: int = Field(ge=1)
    tier: Tier = Tier.BASIC
    tokens_per_request: float = Field(default=500.0, gt=0)
    priority: Priority = Priority.NORMAL


class ArrivalsSpec(_Spec):
    trace: str | None = Field(default=None, description="CSV or JSONL trace, relative to the scenario file.")
    generator: GeneratorSpec | None = None
    nightly: list[RecurringJob] = Field(default_factory=list)


class Scenario(_Spec):
    """Everything one simulation needs besides the product's code."""

    name: str = "scenario"
    seed: int = 0
    start: datetime = Field(default=datetime(2026, 1, 5, tzinfo=UTC), description="Simulated clock at t = 0 (UTC).")
    duration_hours: float = Field(gt=0, le=24 * 366, description="Arrivals stop here; the run goes on until all finish.")
    pools: PoolsSpec
    model: ModelSpec
    arrivals: ArrivalsSpec
    settings: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Overrides of the product's settings groups, e.g. {pools: {safety_factor: 2}, sla: {...}}.",
    )
    base_dir: Path = Field(default=Path("."), exclude=True, description="Folder relative trace paths start from.")

    def build_settings(self, base: Settings | None = None) -> Settings:
        """The product's settings with this scenario's overrides applied (each group re-validated)."""
        settings = base or Settings()
        updates = {}
        for group, values in self.settings.items():
            current = getattr(settings, group, None)
            if not isinstance(current, BaseModel):
                raise ScenarioError("no such settings group", source=self.name, field=f"settings.{group}")
            try:
                updates[group] = type(current).model_validate({**current.model_dump(), **values})
            except ValidationError as exc:
                loc = ".".join(str(p) for p in exc.errors()[0]["loc"])
                raise ScenarioError(exc.errors()[0]["msg"], source=self.name, field=f"settings.{group}.{loc}") from None
        return settings.model_copy(update=updates)


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario YAML file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ScenarioError("file not found", source=path.name) from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise ScenarioError("not valid YAML", source=path.name, line=None if line is None else line + 1) from None
    if not isinstance(raw, dict):
        raise ScenarioError("expected a mapping at the top", source=path.name)
    try:
        return Scenario.model_validate({**raw, "base_dir": path.parent})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ScenarioError(first["msg"], source=path.name, field=".".join(str(p) for p in first["loc"])) from None


class Arrival(BaseModel):
    """One batch submission."""

    name: str
    at: float = Field(ge=0, description="Seconds from the scenario start.")
    tier: Tier
    requests: int = Field(ge=1)
    tokens: int = Field(ge=0, description="Prompt plus completion tokens of the whole batch.")
    priority: Priority = Priority.NORMAL


def arrivals(scenario: Scenario) -> list[Arrival]:
    """Every submission of the scenario, in time order (ties keep trace/generator order)."""
    out: list[Arrival] = []
    spec = scenario.arrivals
    if spec.trace:
        out += read_trace(scenario.base_dir / spec.trace, scenario.start)
    if spec.generator:
        out += generate(
            spec.generator, scenario.duration_hours * 3600, scenario.start, random.Random(f"{scenario.seed}:arrivals")
        )
    days = math.ceil(scenario.duration_hours / 24)
    for job in spec.nightly:
        for day in range(days):
            at = (day * 24 + job.hour) * 3600 - _seconds_into_day(scenario.start)
            if 0 <= at < scenario.duration_hours * 3600:
                tokens = round(job.requests * job.tokens_per_request)
                out.append(Arrival(name=f"{job.name}-d{day}", at=at, tier=job.tier, requests=job.requests, tokens=tokens))
    return sorted(out, key=lambda a: a.at)


def _seconds_into_day(t: datetime) -> float:
    return t.hour * 3600 + t.minute * 60 + t.second


def generate(spec: GeneratorSpec, duration: float, start: datetime, rng: random.Random) -> list[Arrival]:
    """Seeded arrivals: times from a daily sinusoid (by rejection), tiers from the mix, log-normal sizes."""
    tiers = list(spec.tier_mix)
    weights = [spec.tier_mix[t] for t in tiers]
    if not tiers or sum(weights) <= 0:
        raise ScenarioError("tier_mix needs a positive share", source="generator", field="tier_mix")
    offset = _seconds_into_day(start)
    out = []
    for i in range(spec.batches):
        while True:
            at = rng.uniform(0, duration)
            hour = ((at + offset) / 3600) % 24
            density = 1 + spec.daily_amplitude * math.cos(2 * math.pi * (hour - spec.peak_hour) / 24)
            if rng.uniform(0, 1 + spec.daily_amplitude) <= density:
                break
        tier = rng.choices(tiers, weights)[0]
        requests = max(1, min(spec.max_requests, round(rng.lognormvariate(math.log(spec.median_requests), spec.sigma))))
        out.append(
            Arrival(
                name=f"gen-{i:06d}",
                at=at,
                tier=tier,
                requests=requests,
                tokens=round(requests * spec.tokens_per_request),
                priority=spec.priority,
            )
        )
    return out


_TRACE_FIELDS = {"submitted_at", "tier", "requests", "tokens", "priority", "name"}


def read_trace(path: Path, start: datetime) -> list[Arrival]:
    """A CSV or JSONL trace; ``submitted_at`` is seconds from the start or an ISO-8601 time."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ScenarioError("trace file not found", source=path.name) from None
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows: list[tuple[int, Any]] = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError:
                    raise ScenarioError("not a JSON object", source=path.name, line=n) from None
    else:
        rows = [(n, row) for n, row in enumerate(csv.DictReader(io.StringIO(text)), start=2)]
    out = []
    for n, row in rows:
        if not isinstance(row, dict):
            raise ScenarioError("not a JSON object", source=path.name, line=n)
        unknown = set(row) - _TRACE_FIELDS
        if unknown:
            raise ScenarioError(f"unknown column {sorted(unknown)[0]!r}", source=path.name, line=n)
        try:
            at = _offset(row.get("submitted_at"), start)
            out.append(
                Arrival.model_validate(
                    {
                        "name": str(row.get("name") or f"{path.stem}-{n}"),
                        "at": at,
                        "tier": row.get("tier"),
                        "requests": row.get("requests"),
                        "tokens": row.get("tokens") or 0,
                        "priority": row.get("priority") or Priority.NORMAL,
                    }
                )
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            field = "submitted_at" if loc == "at" else loc or None
            raise ScenarioError(first["msg"], source=path.name, line=n, field=field) from None
        except ValueError:
            raise ScenarioError("seconds or an ISO-8601 time expected", source=path.name, line=n, field="submitted_at") from None
    return out


def _offset(value: Any, start: datetime) -> float:
    """Seconds from ``start`` of a trace's ``submitted_at`` (a number, or an ISO time)."""
    if value is None or value == "":
        raise ValueError("missing")
    try:
        return float(value)
    except (TypeError, ValueError):
        at = datetime.fromisoformat(str(value))
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        return (at - start) / timedelta(seconds=1)


Mode = Literal["policy", "all-dedicated", "all-spot"]

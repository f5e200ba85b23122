"""The one settings tree, read once at an entrypoint and passed down as sub-configs.

Environment names follow the path: ``NIGHTSHIFT_ENGINE_MAX_NUM_SEQS`` sets
``Settings().engine.max_num_seqs``. Core code never reads the environment; it receives these
models (or plain values taken from them) as arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from nightshift.core.runs import EngineKind
from nightshift.core.sharding import adaptive_shard_size

if TYPE_CHECKING:
    from nightshift.core.catalogue import Catalogue

DEFAULT_HOME = Path(".nightshift")


class EngineConfig(BaseModel):
    """How the inference engine is built and placed. Defaults are the CPU settings verified on
    a 2-core machine; set ``device``/``num_gpus``/``dtype`` for a GPU cluster."""

    model: str = Field(
        default="smollm2-135m-instruct",
        description="A model folder (HF layout) or the name of an embedded model ('smollm2-135m-instruct').",
    )
    served_model_name: str | None = Field(
        default=None, description="Model id written in responses; defaults to the model's name."
    )
    catalogue: str | None = Field(
        default=None,
        max_length=4096,
        description=(
            "The model catalogue (YAML): the models and LoRA adapters served, each model's engine settings and "
            "price per engine-hour on spot and dedicated. Unset: one model, `engine.model`, at default prices."
        ),
    )
    backend: Literal["actor", "ray-data-llm"] = Field(
        default="actor",
        description=(
            "'actor': a warm Ray actor holding vllm.LLM, reused across shards and batches (fastest "
            "here). 'ray-data-llm': ray.data.llm's vLLMEngineProcessor per batch (stage pipelining "
            "for multi-GPU clusters)."
        ),
    )
    kind: EngineKind = Field(
        default="auto",
        description=(
            "Which library generates. 'vllm': fast, fails if vLLM cannot load or run the model. "
            "'transformers': Hugging Face generate, several times slower, runs wherever torch runs. "
            "'auto': vLLM, falling back to transformers (with a warning, recorded in the manifest) when "
            "vLLM cannot be imported, cannot load the model, or fails a one-token probe on this hardware. "
            "Not part of the batch version: both engines answer the same requests, greedy ones alike."
        ),
    )
    device: Literal["cpu", "cuda"] = Field(default="cpu", description="Where vLLM runs.")
    dtype: str = Field(default="float32", description="float32 on CPU: bfloat16 is ~5x slower without native bf16.")
    max_model_len: int = Field(default=2048, ge=16, le=1_048_576, description="Context length the engine allows.")
    max_num_seqs: int = Field(default=256, ge=1, le=4096, description="Sequences the scheduler runs at once.")
    enforce_eager: bool = Field(default=True, description="Skip graph compilation: starts in seconds on CPU.")
    seed: int = Field(default=0, description="Engine seed; requests with their own seed override it.")
    num_cpus: float = Field(default=1.0, ge=0.0, description="Ray CPUs reserved for one engine replica.")
    num_gpus: float = Field(default=0.0, ge=0.0, description="Ray GPUs per engine replica (0 on CPU).")
    tensor_parallel_size: int = Field(default=1, ge=1, le=64, description="GPUs one replica is split over.")
    replicas: int = Field(
        default=1,
        ge=1,
        le=1024,
        description=(
            "Engine actors serving one engine spec; a batch's shards go to whichever is free. Ray spreads "
            "them over nodes when it can. Speed only: not part of the batch version. A fixed count: with "
            "autoscale on, min_replicas..max_replicas apply instead."
        ),
    )
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0, description="GPU memory share for vLLM.")
    kv_cache_space_gib: int = Field(default=1, ge=1, le=1024, description="VLLM_CPU_KVCACHE_SPACE on CPU.")
    default_max_tokens: int = Field(default=256, ge=1, description="Completion budget for chat requests that do not set one.")
    compact_json: bool = Field(
        default=True,
        description=(
            "Structured (JSON) answers without free whitespace: a weak model cannot spend its token budget on "
            "blank space between JSON tokens, and answers cost fewer tokens (xgrammar backend)."
        ),
    )
    keep_warm: bool = Field(default=True, description="Keep the engine actor alive after a batch so the next one skips start-up.")
    autoscale: bool = Field(
        default=False,
        description=(
            "Elastic engines: replicas follow the queued work's deadlines between min_replicas and max_replicas "
            "(Ray's autoscaler adds and removes the nodes), instead of the fixed `replicas`."
        ),
    )
    min_replicas: int = Field(
        default=0, ge=0, le=1024, description="Fewest replicas per engine with autoscale (0: idle engines stop)."
    )
    max_replicas: int = Field(default=4, ge=1, le=1024, description="Most replicas per engine with autoscale.")
    idle_seconds: float = Field(
        default=300.0,
        ge=0,
        le=86_400,
        description="With autoscale, a replica above the target is retired once it has run no shard for this long.",
    )
    replica_requests_per_second: float = Field(
        default=5.0, gt=0, description="Assumed throughput of one replica until the engine has measured its own (autoscale)."
    )
    spot_resource: str | None = Field(
        default=None,
        max_length=64,
        description=(
            "Ray custom resource that spot nodes advertise (KubeRay rayStartParams `resources`); with dedicated_resource "
            "set too, autoscaled replicas ask for one or the other by the placement rule. None: any node."
        ),
    )
    dedicated_resource: str | None = Field(
        default=None, max_length=64, description="Ray custom resource that dedicated (on-demand) nodes advertise."
    )
    spot_wait_seconds: float = Field(
        default=120.0,
        gt=0,
        le=86_400,
        description=(
            "Spot capacity counts as gone for this long after a spot node is lost or a spot replica waited this long "
            "for one; meanwhile the placement rule puts replicas on dedicated capacity."
        ),
    )
    tool_call_parser: str | None = Field(
        default="hermes",
        max_length=64,
        description=(
            "vLLM tool-call parser that finds tool calls in the text of an answer (vLLM's --tool-call-parser: "
            "'hermes' for Qwen/SmolLM2-style <tool_call> JSON, 'llama3_json', 'mistral', 'pythonic'...). It serves "
            "tool_choice 'auto'; 'required' and a named function are enforced by a grammar. None refuses 'auto'."
        ),
    )

    @model_validator(mode="after")
    def _replica_bounds(self) -> EngineConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("engine.min_replicas must not exceed engine.max_replicas")
        return self

    @model_validator(mode="after")
    def _ray_data_llm_is_vllm(self) -> EngineConfig:
        """ray.data.llm builds vLLM itself: the transformers engine runs only in the actor backend."""
        if self.backend == "ray-data-llm" and self.kind == "transformers":
            raise ValueError("backend 'ray-data-llm' runs vLLM only; use backend 'actor' with kind 'transformers'")
        return self

    def for_model(self, overrides: Mapping[str, Any], *, where: str = "engine") -> EngineConfig:
        """This config with a catalogue model's engine settings applied, checked as the settings are.

        Raises:
            ConfigError: an override names no engine setting, one that says which model this is
                (``model``, ``served_model_name``, ``catalogue``), or a value out of its bounds;
                the message starts with ``where``.
        """
        from nightshift.core.errors import ConfigError

        for name in overrides:
            if name not in type(self).model_fields or name in _NOT_PER_MODEL:
                raise ConfigError(f"{where}.{name}: not an engine setting a catalogue model can set")
        try:
            return type(self).model_validate({**self.model_dump(), **overrides})
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{where}{'.' + field if field else ''}: {first['msg']}") from None

    def output_params(self) -> dict[str, object]:
        """The settings that change what the model outputs; they enter the batch version.

        Scheduling knobs (max_num_seqs, num_cpus, keep_warm...) change speed, not results, and
        are left out so that moving a batch to another pool keeps its version and finished shards.
        So is ``kind``: with "auto" the engine is known only once the actor has started (after the
        version is computed), and greedy outputs are the same on both engines, so a batch resumed on
        a machine where vLLM cannot run keeps its version and finished shards.
        """
        return {
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "seed": self.seed,
            "default_max_tokens": self.default_max_tokens,
            "compact_json": self.compact_json,
            "tool_call_parser": self.tool_call_parser,
        }


#: Engine settings that say which model an engine serves: the catalogue entry says it instead.
_NOT_PER_MODEL = frozenset({"model", "served_model_name", "catalogue"})


class RayConfig(BaseModel):
    """Where Ray runs."""

    address: str | None = Field(
        default=None, description="None starts a local Ray; 'auto', 'host:port' or 'ray://host:port' joins one."
    )
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs of a local Ray (None: all).")
    object_store_memory: int = Field(default=512 * 1024**2, ge=78_643_200, description="Bytes of object store for a local Ray.")
    temp_dir: Path | None = Field(default=None, description="Ray's session directory for a local Ray.")
    code: Literal["ship", "installed"] = Field(
        default="ship",
        description=(
            "How Ray workers of a cluster joined by address get nightshift's code. 'ship': the driver uploads "
            "its packages (nightshift, flows, tasks, blocks) with Ray's runtime_env py_modules, so nodes need "
            "only the dependencies. 'installed': the nodes' image has nightshift installed (what Ray recommends "
            "in production); nothing is uploaded. A local Ray (no address) always uses the driver's own code."
        ),
    )

    @field_validator("address", mode="before")
    @classmethod
    def _blank_is_local(cls, value: object) -> object:
        """An empty address (a deployment's ``{{ $NIGHTSHIFT_RAY_ADDRESS }}`` left unset) means a local Ray."""
        return None if isinstance(value, str) and not value.strip() else value


class StorageConfig(BaseModel):
    """Where batches and their artifacts live (any fsspec URL: a folder, file://, s3://).

    S3 credentials come from the environment (``AWS_ACCESS_KEY_ID``...), a profile or the
    instance role, as boto does everywhere else, or from a ``NightshiftStorage`` block; when a
    block fills them in they stay ``SecretStr`` (masked in logs, reprs and task-input dumps).
    """

    root: str = Field(default=str(DEFAULT_HOME / "store"), description="Root URL of the artifact store.")
    shard_size: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description=(
            "Requests per shard, fixed. Unset: sized from the pool's measured throughput so each shard takes about "
            "checkpoint_seconds (within min_shard_size..max_shard_size), first_shard_size until something is measured. "
            "A run's own shard_size parameter wins over both."
        ),
    )
    first_shard_size: int = Field(
        default=256, ge=1, le=1_000_000, description="Requests per shard while no throughput is measured yet (adaptive sizing)."
    )
    checkpoint_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Engine time one shard should take: what a crash loses at most, and how often progress moves.",
    )
    min_shard_size: int = Field(default=32, ge=1, le=1_000_000, description="Fewest requests in an adaptive shard.")
    max_shard_size: int = Field(
        default=4096, ge=1, le=1_000_000, description="Most requests in an adaptive shard (what an engine actor holds in memory)."
    )
    shard_order: Literal["prefix", "input"] = Field(
        default="prefix",
        description=(
            "'prefix': requests sharing a prompt prefix (system prompt, document, few-shot block) go in the same "
            "shards, so the engine's prefix cache computes the shared part once; 'input': file order. Output files "
            "are in input order either way."
        ),
    )
    order_window: int = Field(
        default=50_000,
        ge=1,
        le=10_000_000,
        description="Requests planned together: prefix order groups within a window, and planning memory is bounded by it.",
    )
    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint (MinIO, Ceph, moto...).")
    region: str | None = Field(default=None, description="S3 region name.")
    access_key_id: SecretStr | None = Field(default=None, description="S3 key id; default: the environment/role.")
    secret_access_key: SecretStr | None = Field(default=None, description="S3 secret; default: the environment/role.")
    block: str | None = Field(
        default=None, description="Name of a saved NightshiftStorage block; when set, it replaces the fields above."
    )
    retry_seconds: float = Field(
        default=120.0,
        ge=0,
        le=3600,
        description=(
            "How long a storage call keeps retrying (exponential backoff) while the store does not answer; "
            "then the run fails with a resumable state."
        ),
    )
    retention_days: float = Field(
        default=7.0,
        gt=0,
        description="Days a batch version and its cache entries are kept after their last write; cleanup deletes older ones.",
    )

    def shard_size_for(self, requests_per_second: float | None) -> int:
        """Requests per shard for an engine measured at ``requests_per_second`` (None: not measured)."""
        if self.shard_size is not None:
            return self.shard_size
        return adaptive_shard_size(
            requests_per_second,
            checkpoint_seconds=self.checkpoint_seconds,
            minimum=self.min_shard_size,
            maximum=max(self.min_shard_size, self.max_shard_size),
            default=self.first_shard_size,
        )

    def storage_options(self, url: str | None = None) -> dict[str, object]:
        """fsspec options for ``url`` (default: the root); only s3:// URLs take any."""
        if not (url or self.root).startswith(("s3://", "s3a://")):
            return {}
        client: dict[str, object] = {}
        if self.endpoint_url:
            client["endpoint_url"] = self.endpoint_url
        if self.region:
            client["region_name"] = self.region
        options: dict[str, object] = {"client_kwargs": client, "use_listings_cache": False}
        # Listings are not cached (above): the engine actor writes shard results the driver then checks.
        if self.access_key_id and self.secret_access_key:
            options.update(key=self.access_key_id.get_secret_value(), secret=self.secret_access_key.get_secret_value())
        return options

    def resolved(self) -> StorageConfig:
        """The same config with a local root made absolute (Ray workers have another cwd)."""
        if "://" in self.root:
            return self
        return self.model_copy(update={"root": str(Path(self.root).absolute())})


class LimitsConfig(BaseModel):
    """Batch file limits (OpenAI's by default)."""

    max_lines: int = Field(default=50_000, ge=1, description="Request lines a batch may hold.")
    max_bytes: int = Field(default=200 * 1024**2, ge=1, description="Bytes a batch file may hold.")
    validate_window: int = Field(
        default=10_000,
        ge=1,
        le=1_000_000,
        description="Lines validated together: validation memory is bounded by it (about 4 KB a line), not by the file.",
    )


class SLAConfig(BaseModel):
    """Deadlines per tier, in hours from submission."""

    enterprise_hours: float = Field(default=6.0, gt=0)
    premium_hours: float = Field(default=12.0, gt=0)
    basic_hours: float = Field(default=24.0, gt=0)
    free_hours: float = Field(default=72.0, gt=0)

    at_risk_margin_seconds: float = Field(
        default=360.0,
        ge=0,
        description="At risk when the ETA exceeds the time left by more than this (0.1 h).",
    )
    min_requests_per_second: float = Field(default=5.0, ge=0, description="Warn below this throughput while work remains.")
    max_error_rate: float = Field(default=0.05, ge=0, le=1, description="Warn when failed / finished requests exceed this.")
    max_accelerator_utilisation: float = Field(
        default=0.9, ge=0, le=1, description="Warn when the engine reports accelerator utilisation above this."
    )
    progress_interval_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="Progress is published on every finished shard and at least this often."
    )
    rate_window_seconds: float = Field(default=120.0, gt=0, description="Sliding window for requests/s and tokens/s.")

    def hours(self) -> dict[str, float]:
        """Tier name → deadline in hours."""
        return {
            "enterprise": self.enterprise_hours,
            "premium": self.premium_hours,
            "basic": self.basic_hours,
            "free": self.free_hours,
        }


class ApiConfig(BaseModel):
    """The OpenAI-compatible Files/Batches gateway (``nightshift serve``)."""

    host: str = Field(default="127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(default=8080, ge=0, le=65535, description="Port the gateway listens on.")
    database_url: str = Field(
        default=f"sqlite+aiosqlite:///{DEFAULT_HOME / 'gateway.db'}",
        description="Async SQLAlchemy URL of the gateway database (SQLite file; postgresql+asyncpg://... for Postgres).",
    )
    jwt_secret: SecretStr | None = Field(default=None, description="HS256 key for bearer JWTs (None: HS256 tokens refused).")
    jwt_public_key: str | None = Field(default=None, description="PEM public key for RS256 bearer JWTs.")
    jwt_audience: str = Field(default="nightshift", description="Required 'aud' claim of bearer JWTs.")
    free_requests_per_hour: int = Field(default=100, ge=0, description="API calls per key per hour on the free tier.")
    basic_requests_per_hour: int = Field(default=500, ge=0, description="API calls per key per hour on the basic tier.")
    premium_requests_per_hour: int = Field(default=2_000, ge=0, description="API calls per key per hour on the premium tier.")
    enterprise_requests_per_hour: int = Field(
        default=10_000, ge=0, description="API calls per key per hour on the enterprise tier."
    )

    allowed_file_roots: list[Path] = Field(
        default_factory=list, description="Folders a job's file:// input_file_url may point into (none: file:// refused)."
    )
    allowed_https_hosts: list[str] = Field(
        default_factory=list, description="Hosts a job's https:// input_file_url may name (none: https refused)."
    )
    max_inline_items: int = Field(default=1_000, ge=1, le=100_000, description="Items a job may carry inline.")
    results_url_seconds: int = Field(
        default=3_600, ge=60, le=7 * 86_400, description="Lifetime of presigned result URLs (S3 stores)."
    )
    track_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3_600,
        description="Seconds between the tracker's passes over unfinished batches "
        "(the fallback: runs report through Prefect events).",
    )
    sync_seconds: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="A batch polled again within this many seconds is answered from its last step (one store read per "
        "batch per interval, whatever the number of clients).",
    )
    store_retry_seconds: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description=(
            "Longest a gateway call retries an unreachable artifact store before it answers with an error "
            "(capped by storage.retry_seconds): a client is never held for the workers' retry budget."
        ),
    )
    key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="Seconds an authenticated API key is remembered (a revoked key stops working within this); 0: never.",
    )
    max_json_body_bytes: int = Field(
        default=8 * 1024**2, ge=1_024, le=256 * 1024**2, description="Bytes a JSON request body may have (batches, jobs)."
    )
    part_max_age_seconds: float = Field(
        default=3_600.0, ge=0, description="Age after which a half-written upload (.part) is swept as abandoned."
    )
    drill_orgs: list[str] = Field(
        default_factory=list,
        description="Org names whose batches may carry the fault-injection metadata (SLA drills); tenants cannot set it.",
    )

    def check_serving(self) -> None:
        """Refuse settings that would make an unsafe gateway (raised at start, before any request).

        Raises:
            ValueError: the HS256 secret is set but empty or short (every HS256 call would fail,
                or tokens could be forged by guessing).
        """
        if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value()) < 32:
            raise ValueError(
                "NIGHTSHIFT_API_JWT_SECRET is set but shorter than 32 characters: unset it (HS256 tokens refused) "
                "or give a long random secret"
            )

    webhook_allow_http: bool = Field(
        default=False, description="Let webhook URLs use http:// (https:// only otherwise); for internal receivers."
    )
    egress_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names (exact), IP addresses or CIDRs the gateway may call although they are loopback, "
        "private, link-local or reserved (internal webhook receivers, test servers).",
    )
    egress_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, description="Connect/read/write timeout of outbound requests; a whole webhook POST."
    )
    egress_download_seconds: float = Field(
        default=300.0, gt=0, le=86_400, description="Deadline of a whole https input download."
    )
    egress_max_response_bytes: int = Field(
        default=1024**2, ge=0, le=1024**3, description="Bytes of a webhook receiver's reply the gateway reads."
    )
    egress_ca_file: Path | None = Field(
        default=None, description="PEM bundle the gateway trusts for outbound https (default: the public CAs of certifi)."
    )
    webhook_attempts: int = Field(default=5, ge=1, le=20, description="Tries of a webhook delivery (backoff between them).")
    s3_input_prefixes: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Org id (org_...) or org name → s3://bucket/prefix/ its jobs may read as input_file_url "
        "(none: s3 inputs refused; the store's own area is never an input).",
    )

    @field_validator("s3_input_prefixes")
    @classmethod
    def _s3_prefixes_are_urls(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for org, prefixes in value.items():
            for prefix in prefixes:
                bucket, _, key = prefix.removeprefix("s3://").partition("/")
                if not prefix.startswith("s3://") or not bucket or any(p in (".", "..") for p in key.split("/")):
                    raise ValueError(f"s3_input_prefixes[{org!r}]: {prefix!r} is not an s3://bucket/prefix/ URL")
        return value

    def s3_prefixes_for(self, org_id: str, org_name: str | None = None) -> list[str]:
        """The s3 prefixes an org may read, listed under its id or its name."""
        return [*self.s3_input_prefixes.get(org_id, []), *(self.s3_input_prefixes.get(org_name, []) if org_name else [])]

    def requests_per_hour(self) -> dict[str, int]:
        """Tier name → API calls per key per hour."""
        return {
            "free": self.free_requests_per_hour,
            "basic": self.basic_requests_per_hour,
            "premium": self.premium_requests_per_hour,
            "enterprise": self.enterprise_requests_per_hour,
        }


class AlertsConfig(BaseModel):
    """Where SLA alerts go: a webhook Prefect's automations post to (Slack-compatible or any HTTP).

    Without a URL, ``nightshift up`` runs a local sink on 127.0.0.1 that appends every alert to
    ``{home}/alerts.jsonl`` (``nightshift alerts tail`` shows them).
    """

    webhook_url: SecretStr | None = Field(default=None, description="Webhook URL (a secret: Slack URLs carry a token).")
    block: str = Field(default="nightshift-alerts", description="Name of the notification block the automations use.")


class PoolsConfig(BaseModel):
    """Where batches run: the spot and dedicated deployments and how placement picks between them.

    Pool names, types and concurrency limits are declared in ``deployments/pools.yaml`` and read
    back from Prefect; here are only the deployments placement chooses from and its estimates.
    """

    spot_deployment: str = Field(default="process-batch/spot", description="Deployment on cheap, preemptible capacity.")
    dedicated_deployment: str = Field(
        default="process-batch/dedicated", description="Deployment on on-demand capacity; preempted spot runs resume here."
    )
    safety_factor: float = Field(
        default=1.5, ge=1.0, le=100.0, description="Spot is chosen when its estimated runtime times this fits the deadline."
    )
    spot_requests_per_second: float = Field(
        default=5.0, gt=0, description="Assumed spot throughput until a batch on the pool has measured it."
    )
    dedicated_requests_per_second: float = Field(
        default=5.0, gt=0, description="Assumed dedicated throughput until a batch on the pool has measured it."
    )
    priority_queues: dict[str, str] = Field(
        default={"high": "high", "normal": "default", "low": "low"},
        description="Job priority → work queue of the chosen pool (declared with their priorities in pools.yaml).",
    )


class MetricsConfig(BaseModel):
    """Prometheus metrics of batch runs, pushed to a Pushgateway (see ``nightshift.telemetry.metrics``)."""

    pushgateway_url: str | None = Field(
        default=None, description="Pushgateway address (http://host:9091); None: batch runs push nothing."
    )
    job: str = Field(default="nightshift_batch", description="The job label batch runs push under.")
    push_timeout_seconds: float = Field(default=2.0, gt=0, le=60, description="A push that takes longer is dropped.")


class LogConfig(BaseModel):
    """nightshift's own logs (Prefect's run logs keep Prefect's settings)."""

    format: Literal["json", "text"] = Field(default="text", description="One JSON object per line, or plain text.")
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Lowest level logged.")
    file: Path | None = Field(default=None, description="Append records to this file instead of stderr.")


class Settings(BaseSettings):
    """Everything configurable, one tree. Build it once at an entrypoint."""

    model_config = SettingsConfigDict(env_prefix="NIGHTSHIFT_", env_nested_delimiter="_", env_nested_max_split=1)

    home: Path = Field(default=DEFAULT_HOME, description="Local state: model cache, Prefect home, Ray temp.")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    sla: SLAConfig = Field(default_factory=SLAConfig)
    pools: PoolsConfig = Field(default_factory=PoolsConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    def catalogue(self) -> Catalogue:
        """The models this deployment serves: the catalogue file, or ``engine.model`` alone."""
        from nightshift.core.catalogue import Catalogue

        if self.engine.catalogue:
            catalogue = Catalogue.load(self.engine.catalogue)
            for name, entry in catalogue.models.items():  # a bad engine override fails here, not in a run
                self.engine.for_model(entry.engine, where=f"model catalogue {self.engine.catalogue}: models.{name}.engine")
            return catalogue
        name = self.engine.served_model_name or Path(self.engine.model).name
        return Catalogue.single(name, self.engine.model)

    @model_validator(mode="after")
    def _defaults_follow_home(self) -> Settings:
        """``NIGHTSHIFT_HOME`` moves everything that defaults under ``.nightshift/``: the store and
        the gateway database follow it unless set themselves (models, Prefect, logs and alerts are
        built from ``home`` where they are used)."""
        if self.home == DEFAULT_HOME:
            return self
        if "root" not in self.storage.model_fields_set:
            self.storage = self.storage.model_copy(update={"root": str(self.home / "store")})
        if "database_url" not in self.api.model_fields_set:
            self.api = self.api.model_copy(update={"database_url": f"sqlite+aiosqlite:///{self.home / 'gateway.db'}"})
        return self


def settings_reference() -> str:
    """The configuration page (``docs/configuration.md``): every setting with its environment
    variable, default and meaning, generated from this tree by ``nightshift config-docs`` so it
    never drifts (a test compares the committed page with this)."""
    import annotated_types
    from pydantic_core import PydanticUndefined

    def default(field: object) -> str:
        value = getattr(field, "default", None)
        factory = getattr(field, "default_factory", None)
        if value is PydanticUndefined and factory is not None:
            value = factory()
        if value is None or value == [] or value == {}:
            return "—"
        if isinstance(value, SecretStr):
            return "(secret)"
        return f"`{value}`"

    def bounds(field: object) -> str:
        marks = {annotated_types.Ge: ("≥", "ge"), annotated_types.Gt: (">", "gt"), annotated_types.Le: ("≤", "le")}
        marks[annotated_types.Lt] = ("<", "lt")
        found = []
        for meta in getattr(field, "metadata", []):
            for kind, (sign, attr) in marks.items():
                if isinstance(meta, kind):
                    found.append(f"{sign} {getattr(meta, attr)}")
        return f" ({', '.join(found)})" if found else ""

    def row(env: str, field: object) -> str:
        text = (getattr(field, "description", None) or "").replace("|", "\\|").replace("\n", " ")
        return f"| `{env}` | {default(field)} | {text}{bounds(field)} |"

    out = [
        "# Configuration",
        "",
        "Generated from `nightshift/settings.py` by `nightshift config-docs`; a test fails when this page is stale.",
        "",
        "Every setting is an environment variable named after its path in the settings tree:",
        "`NIGHTSHIFT_<GROUP>_<FIELD>` (lists and maps as JSON). Secrets can also come from Prefect blocks.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    groups = []
    for name, field in Settings.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            groups.append((name, kind))
        else:
            out.append(row(f"NIGHTSHIFT_{name.upper()}", field))
    for name, kind in groups:
        title = " ".join((kind.__doc__ or "").strip().split("\n\n")[0].split()).split(". ")[0].rstrip(".")
        out += ["", f"## `{name}`: {title}", "", "| variable | default | meaning |", "|---|---|---|"]
        out += [row(f"NIGHTSHIFT_{name.upper()}_{sub.upper()}", f) for sub, f in kind.model_fields.items()]
    return "\n".join(out) + "\n"

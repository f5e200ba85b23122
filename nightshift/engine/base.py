"""The engine interface, the request isolation both engines share, and the factory that picks one.

Two engines answer the same ``ValidRequest`` rows with the same ``ResultRow`` rows: vLLM (fast, the
default) and Hugging Face transformers ``generate`` (slow, runs wherever torch runs). Which one
serves a batch is ``EngineConfig.kind``; ``"auto"`` tries vLLM and falls back to transformers when
vLLM cannot be imported, cannot load the model, or cannot run it on this hardware.
"""

from __future__ import annotations

import gc
import importlib
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, Field

from nightshift.core.artifacts import ResultRow
from nightshift.core.errors import UnsupportedRequestError
from nightshift.core.hashing import sha256_json
from nightshift.core.protocol import BatchError, Endpoint, ValidRequest
from nightshift.settings import EngineConfig

log = logging.getLogger(__name__)

#: Where each engine kind is defined, imported on first use: importing this module loads no engine
#: (and no vLLM or torch, which the engine modules import lazily themselves).
ENGINE_MODULES: dict[str, str] = {"vllm": "nightshift.engine.vllm_engine", "transformers": "nightshift.engine.hf_engine"}
_COUNTING = threading.Lock()
#: Engine classes by ``kind``, filled as each engine module defines its ``BaseEngine`` subclass.
_ENGINES: dict[str, type[BaseEngine]] = {}


class EngineSpec(BaseModel):
    """What an engine actor serves; equal specs share one warm actor."""

    model_path: str
    served_model_name: str
    endpoint: Endpoint
    config: EngineConfig
    adapters: dict[str, str] = Field(default_factory=dict, description="LoRA adapters served beside the model: id → folder.")
    max_lora_rank: int | None = Field(default=None, ge=1, description="The largest adapter rank (None: no adapters).")

    def actor_name(self, replica: int = 0) -> str:
        """Stable name of replica ``replica`` of the actors serving this spec.

        The replica count is left out of the hash: scaling a spec from one replica to three keeps
        replica 0 (and its warm engine) and adds two beside it.
        """
        digest = sha256_json(self.model_dump(mode="json", exclude={"config": {"replicas"}}))[:16]
        return f"engine-{digest}-{replica}"


class Engine(Protocol):
    """What the runner needs from an engine: identity, counters, and rows out for requests in."""

    model_name: str
    endpoint: Endpoint

    def info(self) -> dict[str, Any]:
        """Engine identity and counters; ``info()["engine"]`` names the implementation."""
        ...

    def run(self, requests: Sequence[ValidRequest], *, priority: int = 0) -> list[ResultRow]:
        """Answer ``requests`` in order, one row each; a request the engine rejects is an error row.

        ``priority`` ranks this call's requests against other callers' (lower runs first).
        """
        ...


class BaseEngine(ABC):
    """Request isolation shared by both engines: subclasses answer a group in ``_run_many``.

    A group that raises is retried one request at a time, so one bad request costs only its own
    row (code ``engine_error``, or the code an ``UnsupportedRequestError`` carries); only a failure
    of the engine as a whole would make every row an error.
    """

    kind: ClassVar[str]
    #: True when ``run`` may be called from several threads at once (their requests share the engine).
    concurrent: ClassVar[bool] = False
    model_name: str
    endpoint: Endpoint
    requests_served: int
    fallback_reason: str | None = None  # set by build_engine when "auto" fell back to this engine

    @abstractmethod
    def __init__(self, spec: EngineSpec) -> None:
        """Load ``spec.model_path`` to answer ``spec.endpoint`` requests under ``spec.served_model_name``,
        and ``spec.adapters`` (LoRA adapter id → folder) under their ids."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Register each engine under its ``kind``, so ``build_engine`` finds it by name."""
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            _ENGINES[cls.kind] = cls

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """Engine identity and counters (for manifests and warm-reuse checks)."""

    @abstractmethod
    def _run_many(self, requests: Sequence[ValidRequest], priority: int = 0) -> list[ResultRow]:
        """Answer a group of requests; raise when the group cannot be answered."""

    def run(self, requests: Sequence[ValidRequest], *, priority: int = 0) -> list[ResultRow]:
        """Answer ``requests`` in order; a request the engine rejects becomes an error row."""
        if not requests:
            return []
        try:
            rows = self._run_many(requests, priority)
        except Exception as exc:  # noqa: BLE001 - isolate the bad request(s) below
            if len(requests) == 1:
                rows = [self._error_row(requests[0], exc)]
            else:
                log.warning("engine rejected a group of %d requests (%s); retrying one by one", len(requests), exc)
                rows = [self._run_one(r, priority) for r in requests]
        with _COUNTING:  # callers on several threads share a concurrent engine
            self.requests_served += len(requests)
        for row, request in zip(rows, requests, strict=True):
            row.cache_key = request.cache_key
        return rows

    def close(self) -> None:
        """Let go of what the engine holds beyond Python references (threads); nothing by default."""
        return None

    def probe(self) -> None:
        """Answer one tiny request, raising if the engine cannot run on this model and hardware.

        Some failures only show at the first forward pass (vLLM's CPU attention rejects a head
        size after the model has loaded), so ``auto`` probes before it commits to an engine.
        Not counted in ``requests_served``.
        """
        body: dict[str, Any]
        if self.endpoint is Endpoint.CHAT_COMPLETIONS:
            body = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 1, "temperature": 0}
        elif self.endpoint is Endpoint.COMPLETIONS:
            body = {"prompt": "Hello", "max_tokens": 1, "temperature": 0}
        elif self.endpoint is Endpoint.RESPONSES:
            body = {"input": "Hello", "max_output_tokens": 1, "temperature": 0}
        else:
            body = {"input": "Hello"}
        (row,) = self._run_many([ValidRequest(line=1, custom_id="probe", url=self.endpoint, body=body)])
        if row.error is not None:
            raise RuntimeError(f"probe request failed: {row.error.message}")

    def _run_one(self, request: ValidRequest, priority: int = 0) -> ResultRow:
        try:
            return self._run_many([request], priority)[0]
        except Exception as exc:  # noqa: BLE001 - one request's failure is its own error row
            return self._error_row(request, exc)

    @staticmethod
    def _error_row(request: ValidRequest, exc: Exception) -> ResultRow:
        """The error row for ``request``; ``UnsupportedRequestError`` keeps its own code and field."""
        if isinstance(exc, UnsupportedRequestError):
            error = BatchError(code=exc.code, message=str(exc), param=exc.param, line=request.line)
        else:
            error = BatchError(code="engine_error", message=f"{type(exc).__name__}: {exc}", line=request.line)
        return ResultRow(line=request.line, custom_id=request.custom_id, error=error)


def build_engine(spec: EngineSpec) -> Engine:
    """The engine ``spec.config.kind`` asks for; with ``"auto"``, vLLM unless it cannot serve the model.

    ``"auto"`` falls back on any failure to import vLLM, build ``LLM`` or answer a one-token
    probe, logs a warning with the reason, and records it as ``info()["fallback_reason"]``.
    An explicit ``"vllm"`` never falls back: its failure raises (or fails requests) as before.
    """
    if spec.config.kind != "auto":
        return engine_class(spec.config.kind)(spec)
    engine: BaseEngine | None = None
    try:
        engine = engine_class("vllm")(spec)
        engine.probe()
        return engine
    except Exception as exc:  # noqa: BLE001 - any vLLM failure is a reason to fall back
        reason = f"{type(exc).__name__}: {exc}"
    # Drop the failed vLLM engine (and its KV cache) before loading the model a second time.
    if engine is not None:
        engine.close()
    del engine
    gc.collect()
    log.warning("vLLM cannot serve %s (%s); falling back to the transformers engine", spec.model_path, reason)
    fallback = engine_class("transformers")(spec)
    fallback.fallback_reason = reason
    return fallback


def engine_class(kind: str) -> type[BaseEngine]:
    """The engine class registered for ``kind`` (vllm, transformers), importing its module on first use."""
    if kind not in _ENGINES:
        if kind not in ENGINE_MODULES:
            raise ValueError(f"unknown engine kind {kind!r}; choose one of {sorted(ENGINE_MODULES)}")
        importlib.import_module(ENGINE_MODULES[kind])
    return _ENGINES[kind]

"""vLLM behind one method: a list of valid requests in, one result row per request out.

``VLLMEngine`` is plain Python (used in-process by benchmarks and as the body of the Ray actor
in ``nightshift.engine.runner``). A request the engine rejects becomes an error row; only a
failure of the engine itself raises.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from nightshift.core.artifacts import ResultRow
from nightshift.core.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    Endpoint,
    Usage,
    ValidRequest,
)
from nightshift.engine import sampling
from nightshift.engine.base import BaseEngine
from nightshift.settings import EngineConfig

log = logging.getLogger(__name__)

#: Environment vLLM's CPU backend needs; set before vllm is imported (setdefault: the operator wins).
CPU_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine core in this process: no extra process per actor
    "HF_HUB_OFFLINE": "1",  # weights come from local folders only
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


def prepare_environment(config: EngineConfig) -> None:
    """Set the process environment vLLM reads at import, before the first ``import vllm``."""
    for key, value in CPU_ENV.items():
        os.environ.setdefault(key, value)
    if config.device == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_space_gib))
        # Ray sets OMP_NUM_THREADS=num_cpus in every worker; vLLM's CPU backend binds its OpenMP
        # threads to cores only when it is unset, which is worth ~10-15% throughput here.
        os.environ.pop("OMP_NUM_THREADS", None)


class VLLMEngine(BaseEngine):
    """One vLLM engine for one endpoint kind (a generating or a pooling model)."""

    kind = "vllm"

    def __init__(self, model_path: str, served_model_name: str, endpoint: Endpoint, config: EngineConfig) -> None:
        prepare_environment(config)
        from vllm import LLM

        self.model_name = served_model_name
        self.endpoint = endpoint
        self.config = config
        started = time.perf_counter()
        kwargs: dict[str, Any] = {
            "model": model_path,
            "dtype": config.dtype,
            "max_model_len": config.max_model_len,
            "max_num_seqs": config.max_num_seqs,
            "enforce_eager": config.enforce_eager,
            "seed": config.seed,
            "tensor_parallel_size": config.tensor_parallel_size,
            "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True} if config.compact_json else {},
        }
        if config.device == "cuda":
            kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
        if not endpoint.is_generative:
            kwargs.update(runner="pooling", convert="embed")
        self.llm = LLM(**kwargs)
        self.startup_seconds = time.perf_counter() - started
        self.requests_served = 0
        log.info("vLLM engine for %s (%s) ready in %.1fs", served_model_name, endpoint.value, self.startup_seconds)

    # ------------------------------------------------------------------ public

    def info(self) -> dict[str, Any]:
        """Engine identity and counters (for manifests and warm-reuse checks)."""
        return {
            "engine": self.kind,
            "model": self.model_name,
            "endpoint": self.endpoint.value,
            "startup_seconds": self.startup_seconds,
            "requests_served": self.requests_served,
            "pid": os.getpid(),
        }

    # ------------------------------------------------------------------ internals
    # (run(), request isolation and error rows are BaseEngine's, shared with the transformers engine)

    def _sampling_params(self, body: ChatCompletionRequest | CompletionRequest, prompt_tokens: int | None) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        kwargs = sampling.sampling_kwargs(
            body,
            default_max_tokens=self.config.default_max_tokens,
            prompt_tokens=prompt_tokens,
            max_model_len=self.config.max_model_len,
        )
        if "structured_outputs" in kwargs:
            kwargs["structured_outputs"] = StructuredOutputsParams(**kwargs["structured_outputs"])
        return SamplingParams(**kwargs)

    def _run_many(self, requests: Sequence[ValidRequest]) -> list[ResultRow]:
        if self.endpoint is Endpoint.EMBEDDINGS:
            return self._embed(requests)
        if self.endpoint is Endpoint.CHAT_COMPLETIONS:
            bodies = [ChatCompletionRequest.model_validate(r.body) for r in requests]
            params = [self._sampling_params(b, r.prompt_tokens) for b, r in zip(bodies, requests, strict=True)]
            messages = [[{"role": m.role, "content": m.text()} for m in b.messages] for b in bodies]
            outputs = self.llm.chat(messages, params, use_tqdm=False)  # type: ignore[arg-type]
            build = sampling.chat_completion
            echo = [""] * len(requests)
        else:
            cbodies = [CompletionRequest.model_validate(r.body) for r in requests]
            params = [self._sampling_params(b, r.prompt_tokens) for b, r in zip(cbodies, requests, strict=True)]
            outputs = self.llm.generate([b.prompt for b in cbodies], params, use_tqdm=False)
            build = sampling.completion
            echo = [b.prompt if b.echo else "" for b in cbodies]
        rows = []
        for request, out, prefix in zip(requests, outputs, echo, strict=True):
            prompt_tokens = len(out.prompt_token_ids or [])
            choices = [(prefix + c.text, len(c.token_ids), c.finish_reason) for c in out.outputs]
            body = build(model=self.model_name, prompt_tokens=prompt_tokens, choices=choices)
            rows.append(ResultRow(line=request.line, custom_id=request.custom_id, body=body.model_dump(), usage=body.usage))
        return rows

    def _embed(self, requests: Sequence[ValidRequest]) -> list[ResultRow]:
        bodies = [EmbeddingRequest.model_validate(r.body) for r in requests]
        texts = [t for b in bodies for t in b.inputs()]
        outputs = self.llm.embed(texts, use_tqdm=False)
        rows, i = [], 0
        for request, body in zip(requests, bodies, strict=True):
            outs = outputs[i : i + len(body.inputs())]
            i += len(body.inputs())
            tokens = sum(len(o.prompt_token_ids or []) for o in outs)
            resp = sampling.embedding_response(
                model=self.model_name, embeddings=[list(map(float, o.outputs.embedding)) for o in outs], prompt_tokens=tokens
            )
            rows.append(
                ResultRow(
                    line=request.line,
                    custom_id=request.custom_id,
                    body=resp.model_dump(),
                    usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
                )
            )
        return rows

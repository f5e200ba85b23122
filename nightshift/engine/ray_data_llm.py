"""The ``ray-data-llm`` backend: all pending shards as one Ray Data stream through ``ray.data.llm``.

Ray Data reads the shard files on the workers, ``build_processor`` runs chat templating,
tokenizing, vLLM and detokenizing as pipelined stages (each its own actor pool, so on a GPU
cluster the CPU stages overlap the GPU), and the driver books results per shard as they stream
back: a shard's results file is written the moment its last row arrives.

On a 2-core CPU box the extra stages compete with vLLM for the same cores (PLATFORM.md measured
0.4x raw vLLM), which is why the warm ``actor`` backend is the default there. This backend
serves one completion per request (``n`` > 1 is an error row) and derives ``finish_reason``
from the token budget, as the processor does not return it.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from nightshift.core.artifacts import ResultRow, encode_rows
from nightshift.core.errors import UnsupportedRequestError
from nightshift.core.protocol import BatchError, ChatCompletionRequest, CompletionRequest, Endpoint, ValidRequest
from nightshift.engine import sampling
from nightshift.engine.runner import EngineSpec, ShardJob, ShardOutcome
from nightshift.runtime import ENGINE_ENV
from nightshift.settings import StorageConfig
from nightshift.storage import ArtifactStore


def _processor_config(spec: EngineSpec) -> Any:
    from ray.data.llm import vLLMEngineProcessorConfig

    cfg = spec.config
    light = {"num_cpus": 0.1, "concurrency": 1}  # CPU stages must not take the engine's cores
    env = {**ENGINE_ENV, "VLLM_CPU_KVCACHE_SPACE": str(cfg.kv_cache_space_gib)}
    engine_kwargs: dict[str, Any] = {
        "dtype": cfg.dtype,
        "max_model_len": cfg.max_model_len,
        "max_num_seqs": cfg.max_num_seqs,
        "enforce_eager": cfg.enforce_eager,
        "seed": cfg.seed,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True} if cfg.compact_json else {},
        "served_model_name": spec.served_model_name,
    }
    bundle = {"CPU": cfg.num_cpus} if cfg.device == "cpu" else {"GPU": 1}
    return vLLMEngineProcessorConfig(
        model_source=spec.model_path,
        engine_kwargs=engine_kwargs,
        runtime_env={"env_vars": env},
        batch_size=min(cfg.max_num_seqs, 64),
        concurrency=cfg.replicas,  # one vLLM engine per replica, like the actor backend
        should_continue_on_error=True,
        placement_group_config={"bundles": [bundle] * cfg.tensor_parallel_size},
        chat_template_stage=light if spec.endpoint is Endpoint.CHAT_COMPLETIONS else False,
        tokenize_stage=light,
        detokenize_stage=light,
    )


def _preprocess(spec: EngineSpec) -> Callable[[dict[str, Any]], dict[str, Any]]:
    cfg = spec.config

    def pre(row: dict[str, Any]) -> dict[str, Any]:
        req = ValidRequest.model_validate_json(row["text"])
        shard = str(row["path"]).rsplit("/", 1)[-1].removesuffix(".requests.jsonl")
        body: ChatCompletionRequest | CompletionRequest
        out: dict[str, Any] = {"shard": shard, "line": req.line, "custom_id": req.custom_id, "cache_key": req.cache_key or ""}
        if req.url is Endpoint.CHAT_COMPLETIONS:
            body = ChatCompletionRequest.model_validate(req.body)
            out["messages"] = [{"role": m.role, "content": m.text()} for m in body.messages]
        else:
            body = CompletionRequest.model_validate(req.body)
            out["prompt"] = body.prompt
        kwargs = sampling.sampling_kwargs(
            body, default_max_tokens=cfg.default_max_tokens, prompt_tokens=req.prompt_tokens, max_model_len=cfg.max_model_len
        )
        # A field this backend cannot answer as vLLM's server does becomes an error row (in post):
        # the row still flows through the processor, at one token, since a map cannot drop it.
        out["refused"], out["refused_param"] = "", ""
        try:
            sampling.refuse_unmatched(body, "the ray-data-llm backend")
        except UnsupportedRequestError as exc:
            out["refused"], out["refused_param"] = str(exc), exc.param or ""
            kwargs["max_tokens"] = 1
        out["n"] = kwargs.pop("n")
        out["max_tokens"] = kwargs["max_tokens"]
        out["sampling_params"] = kwargs
        return out

    return pre


def _postprocess(spec: EngineSpec) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def post(row: dict[str, Any]) -> dict[str, Any]:
        line, cid = int(row["line"]), str(row["custom_id"])
        failure = row.get("__inference_error__") or ("n > 1 is not served by the ray-data-llm backend" if row["n"] > 1 else "")
        if row.get("refused"):
            error = BatchError(code="unsupported_parameter", message=str(row["refused"]), param=row["refused_param"], line=line)
            result = ResultRow(line=line, custom_id=cid, error=error)
        elif failure:
            result = ResultRow(line=line, custom_id=cid, error=BatchError(code="engine_error", message=str(failure), line=line))
        else:
            generated = int(row["num_generated_tokens"])
            reason = "length" if generated >= int(row["max_tokens"]) else "stop"
            build = sampling.chat_completion if spec.endpoint is Endpoint.CHAT_COMPLETIONS else sampling.completion
            body = build(
                model=spec.served_model_name,
                prompt_tokens=int(row["num_input_tokens"]),
                choices=[(str(row["generated_text"]), generated, reason)],
            )
            result = ResultRow(line=line, custom_id=cid, body=body.model_dump(), usage=body.usage)
        result.cache_key = str(row["cache_key"]) or None
        return {"shard": row["shard"], "result": result.model_dump_json()}

    return post


def run_shards_ray_data(
    spec: EngineSpec,
    storage: StorageConfig,
    jobs: Sequence[ShardJob],
    *,
    on_done: Callable[[ShardOutcome], None] | None = None,
) -> list[ShardOutcome]:
    """Stream every pending shard through a ``ray.data.llm`` processor; write each shard when whole."""
    import ray.data
    from ray.data.llm import build_processor

    if spec.endpoint in (Endpoint.EMBEDDINGS, Endpoint.RESPONSES):
        raise NotImplementedError(
            f"the ray-data-llm backend serves chat and completions lines; use the actor backend for {spec.endpoint.value}"
        )
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    store = ArtifactStore.from_config(storage)
    expected = {j.name: j for j in jobs}
    processor = build_processor(
        _processor_config(spec),
        preprocess=_preprocess(spec),
        postprocess=_postprocess(spec),
        preprocess_map_kwargs={"num_cpus": 0.1},
        postprocess_map_kwargs={"num_cpus": 0.1},
    )
    # Reading a shard is light: at Ray Data's default of one CPU per read task the read would wait
    # behind the engine's reservation on a small node and the stream would never start.
    ds = ray.data.read_text(
        [j.requests_path for j in jobs],
        filesystem=PyFileSystem(FSSpecHandler(store.fs)),  # the store's own fs: endpoint and options included
        include_paths=True,
        ray_remote_args={"num_cpus": 0.1},
    )
    pending: dict[str, list[ResultRow]] = defaultdict(list)
    outcomes: list[ShardOutcome] = []
    started = time.perf_counter()
    for batch in processor(ds).iter_batches(batch_size=None, batch_format="numpy"):
        for shard, payload in zip(batch["shard"], batch["result"], strict=True):
            rows = pending[str(shard)]
            rows.append(ResultRow.model_validate(json.loads(payload)))
            job = expected[str(shard)]
            if len(rows) == job.num_requests:
                rows.sort(key=lambda r: r.line)
                data = encode_rows(rows)
                store.write_bytes(job.results_path, data)
                outcome = ShardOutcome.of(job.name, job.results_path, data, rows, time.perf_counter() - started)
                outcomes.append(outcome)
                del pending[str(shard)]
                if on_done is not None:
                    on_done(outcome)
    return outcomes

"""vLLM behind one method: a list of valid requests in, one result row per request out.

``VLLMEngine`` is plain Python (used in-process by benchmarks and as the body of the Ray actor
in ``nightshift.engine.runner``). Request bodies are answered by vLLM's own OpenAI serving layer
(``OpenAIServingChat``, ``OpenAIServingCompletion``, ``ServingEmbedding``, built by
``init_app_state`` as ``vllm run_batch`` builds them), so every field is parsed, checked and
turned into sampling parameters, tool calls and logprobs exactly as vLLM's OpenAI server does.
The serving layer drives an ``EngineClient``; here that client wraps the in-process ``LLM``'s
engine (``_InprocEngineClient``) instead of a separate engine process, so the engine stays an
``LLM`` in this process. A request the engine rejects becomes an error row; only a failure of the
engine itself raises.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, Sequence
from copy import copy
from typing import Any

from nightshift.core.artifacts import ResultRow
from nightshift.core.protocol import BatchError, Endpoint, Usage, ValidRequest
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


def engine_kwargs(model_path: str, endpoint: Endpoint, config: EngineConfig) -> dict[str, Any]:
    """vLLM engine arguments (``LLM(**kw)`` / ``AsyncEngineArgs(**kw)``) for one endpoint's engine."""
    kwargs: dict[str, Any] = {
        "model": model_path,
        "dtype": config.dtype,
        "max_model_len": config.max_model_len,
        "max_num_seqs": config.max_num_seqs,
        "enforce_eager": config.enforce_eager,
        "seed": config.seed,
        "tensor_parallel_size": config.tensor_parallel_size,
        # vLLM's neutral sampling defaults, not the model folder's generation_config.json: a request
        # means what it says, and the transformers engine applies the same defaults.
        "generation_config": "vllm",
    }
    if config.compact_json:
        kwargs["structured_outputs_config"] = {"backend": "xgrammar", "disable_any_whitespace": True}
    if config.device == "cuda":
        kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
    if not endpoint.is_generative:
        kwargs.update(runner="pooling", convert="embed")
    return kwargs


def serving_args(model_path: str, served_model_name: str, config: EngineConfig) -> Any:
    """The ``vllm serve`` command-line namespace for the OpenAI serving layer (vLLM's defaults
    except the served name and the tool-call parser)."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    argv = ["--model", model_path, "--served-model-name", served_model_name]
    if config.tool_call_parser is not None:
        # "auto" tool choice needs a parser that finds tool calls in free text; "required" and a
        # named function are enforced by a grammar and need none.
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", config.tool_call_parser]
    return make_arg_parser(FlexibleArgumentParser()).parse_args(argv)


async def build_serving(engine_client: Any, args: Any, config: EngineConfig) -> Any:
    """vLLM's serving objects over ``engine_client`` (a starlette ``State``), as ``run_batch`` builds them.

    A chat request without a token limit gets ``config.default_max_tokens`` (still capped by what
    fits the context after the prompt, which is vLLM's own default).
    """
    from starlette.datastructures import State
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state

    state = State()
    await init_app_state(engine_client, state, args, await engine_client.get_supported_tasks())
    for name in ("openai_serving_chat", "openai_serving_completion"):
        serving = getattr(state, name, None)
        if serving is not None:
            serving.default_sampling_params = {**serving.default_sampling_params, "max_tokens": config.default_max_tokens}
    return state


async def answer(state: Any, endpoint: Endpoint, body: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """One request body through vLLM's serving layer: ``(response body, None)`` or ``(None, vLLM's error object)``.

    The same steps as ``run_batch.run_request``: the endpoint's request model parses the body (a
    validation failure is a 400 error), the serving object answers, an exception becomes vLLM's error
    response.
    """
    from pydantic import TypeAdapter
    from starlette.responses import JSONResponse
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest
    from vllm.entrypoints.serve import create_error_response
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse

    try:
        if endpoint is Endpoint.CHAT_COMPLETIONS:
            response: Any = await state.openai_serving_chat.create_chat_completion(ChatCompletionRequest.model_validate(body))
        elif endpoint is Endpoint.COMPLETIONS:
            response = await state.openai_serving_completion.create_completion(CompletionRequest.model_validate(body))
        else:
            response = await state.serving_embedding(TypeAdapter(EmbeddingRequest).validate_python(body))
    except Exception as exc:  # noqa: BLE001 - vLLM's server answers any request failure with an error body
        response = create_error_response(exc)
    if isinstance(response, JSONResponse):
        data = json.loads(bytes(response.body))
        return (None, data["error"]) if "error" in data else (data, None)
    if isinstance(response, ErrorResponse):
        return None, response.error.model_dump(mode="json")
    if hasattr(response, "model_dump"):
        return response.model_dump(mode="json"), None
    # A streaming generator: validation refuses `stream`, so only a bug gets here.
    return None, {"message": "Request must not be sent in stream mode", "type": "BadRequestError", "param": "stream", "code": 400}


def error_from_vllm(error: dict[str, Any], line: int) -> BatchError:
    """nightshift's error row for vLLM's error object (``{message, type, param, code}``)."""
    # vLLM's messages are its API's own (written for clients); cut short so a huge echo stays small.
    status = int(error.get("code") or 500)
    if status == 404 and error.get("type") == "NotFoundError":
        code = "model_not_found"
    elif 400 <= status < 500:
        code = "invalid_request"
    else:
        code = "engine_error"
    return BatchError(code=code, message=str(error.get("message", ""))[:2000], param=error.get("param"), line=line)


def usage_of(body: dict[str, Any]) -> Usage:
    """The token counts of a response body (embeddings have no completion tokens)."""
    usage = body.get("usage") or {}
    return Usage(
        prompt_tokens=usage.get("prompt_tokens") or 0,
        completion_tokens=usage.get("completion_tokens") or 0,
        total_tokens=usage.get("total_tokens") or 0,
    )


#: Per request task: a one-item list set to True once the request has reached the engine (or ended).
_ENTERED: contextvars.ContextVar[list[bool]] = contextvars.ContextVar("nightshift_entered")


class _InprocEngineClient:
    """vLLM's ``EngineClient`` interface over the in-process ``LLMEngine`` of an ``LLM``.

    What ``AsyncLLM.generate`` / ``encode`` do, minus the engine process: inputs are processed,
    requests (fanned out for ``n > 1``) are queued with an output collector, and ``drive`` steps
    the engine while a group of requests is being answered. Stepping waits until every request
    of the group has reached the engine (or failed before it), so the scheduler sees the whole
    group at once, as ``LLM.chat`` would give it.
    """

    def __init__(self, llm: Any) -> None:
        self.engine = llm.llm_engine
        self.vllm_config = self.engine.vllm_config
        self.model_config = self.engine.model_config
        self.renderer = self.engine.renderer
        self.input_processor = self.engine.input_processor
        self.io_processor = getattr(self.engine, "io_processor", None)
        self.errored = False
        self.is_running = True
        self.is_stopped = False
        self.dead_error = RuntimeError("engine is dead")
        self._entering = 0

    # --- what the serving layer calls

    async def get_supported_tasks(self) -> tuple[str, ...]:
        return tuple(self.engine.get_supported_tasks())

    def check_admission(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def is_tracing_enabled(self) -> bool:
        return False

    async def abort(self, request_id: str | Sequence[str], internal: bool = False) -> None:
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        self.engine.abort_request(ids, internal)

    async def generate(self, prompt: Any, sampling_params: Any, request_id: str, **kwargs: Any) -> AsyncGenerator[Any, None]:
        async for out in self._submit(prompt, sampling_params, request_id, **kwargs):
            yield out

    async def encode(self, prompt: Any, pooling_params: Any, request_id: str, **kwargs: Any) -> AsyncGenerator[Any, None]:
        async for out in self._submit(prompt, pooling_params, request_id, **kwargs):
            yield out

    # --- the engine loop

    async def _submit(
        self,
        prompt: Any,
        params: Any,
        request_id: str,
        *,
        lora_request: Any = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        trace_headers: Any = None,
        priority: int = 0,
        session_id: str | None = None,
        reasoning_ended: bool | None = None,
        reasoning_parser_kwargs: dict[str, Any] | None = None,
        **_ignored: Any,  # data_parallel_rank, kv_hints...: one engine, no KV transfer
    ) -> AsyncGenerator[Any, None]:
        from vllm.outputs import STREAM_FINISHED
        from vllm.renderers.inputs.preprocess import extract_prompt_components
        from vllm.sampling_params import SamplingParams
        from vllm.v1.engine.output_processor import RequestOutputCollector
        from vllm.v1.engine.parallel_sampling import ParentRequest

        try:
            request = self.input_processor.process_inputs(
                request_id,
                prompt,
                params,
                supported_tasks=tuple(self.engine.get_supported_tasks()),
                lora_request=lora_request,
                tokenization_kwargs=tokenization_kwargs,
                trace_headers=trace_headers,
                priority=priority,
                session_id=session_id,
            )
            prompt_text, _, _ = extract_prompt_components(self.model_config, prompt)
            if reasoning_ended is not None:
                request.reasoning_ended = reasoning_ended
            if reasoning_parser_kwargs is not None:
                request.reasoning_parser_kwargs = reasoning_parser_kwargs
            self.input_processor.assign_request_id(request)
            queue = RequestOutputCollector(params.output_kind, request.request_id)
            params = request.params
            processor, core = self.engine.output_processor, self.engine.engine_core
            if not isinstance(params, SamplingParams) or params.n == 1:
                processor.add_request(request, prompt_text, None, 0, queue)
                core.add_request(request)
            else:
                parent = ParentRequest(request)
                for idx in range(params.n):
                    child_id, child_params = parent.get_child_info(idx)
                    child = request if idx == params.n - 1 else copy(request)
                    child.request_id = child_id
                    child.sampling_params = child_params
                    processor.add_request(child, prompt_text, parent, idx, queue)
                    core.add_request(child)
        finally:
            self._entered()
        finished = False
        try:
            while not finished:
                out = queue.get_nowait() or await queue.get()
                finished = out.finished
                if out is not STREAM_FINISHED:
                    yield out
        except (asyncio.CancelledError, GeneratorExit):
            self.engine.abort_request([queue.request_id], internal=True)  # as AsyncLLM.generate does
            raise

    def _entered(self) -> None:
        flag = _ENTERED.get(None)
        if flag is not None and not flag[0]:
            flag[0] = True
            self._entering -= 1

    async def _tracked(self, coro: Any) -> Any:
        _ENTERED.set([False])
        try:
            return await coro
        finally:
            self._entered()

    async def drive(self, coros: Sequence[Any]) -> list[Any]:
        """Run the serving coroutines of one group to completion while stepping the engine."""
        self._entering = len(coros)
        tasks = [asyncio.ensure_future(self._tracked(c)) for c in coros]
        pending = set(tasks)
        try:
            while pending:
                if self._entering == 0 and self.engine.has_unfinished_requests():
                    self.engine.step()  # outputs go to each request's collector
                    await asyncio.sleep(0)
                    pending = {t for t in pending if not t.done()}
                else:
                    # Requests still being rendered (chat templates run in vLLM's thread pool).
                    _, pending = await asyncio.wait(pending, timeout=0.002, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if pending:  # the engine itself failed: leave nothing of this group behind for the next one
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        return [t.result() for t in tasks]


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
        self.llm = LLM(**engine_kwargs(model_path, endpoint, config))
        self.client = _InprocEngineClient(self.llm)
        # One event loop for the engine's life: the serving objects keep loop-bound state.
        self.loop = asyncio.new_event_loop()
        self.serving = self.loop.run_until_complete(
            build_serving(self.client, serving_args(model_path, served_model_name, config), config)
        )
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

    def _run_many(self, requests: Sequence[ValidRequest]) -> list[ResultRow]:
        # The line's own `model` was checked at validation; the serving layer answers as the served model.
        bodies = [{**r.body, "model": self.model_name} for r in requests]
        results = self.loop.run_until_complete(self.client.drive([answer(self.serving, self.endpoint, b) for b in bodies]))
        rows = []
        for request, (body, error) in zip(requests, results, strict=True):
            if error is not None:
                rows.append(ResultRow(line=request.line, custom_id=request.custom_id, error=error_from_vllm(error, request.line)))
            else:
                assert body is not None
                rows.append(ResultRow(line=request.line, custom_id=request.custom_id, body=body, usage=usage_of(body)))
        return rows

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
import contextlib
import contextvars
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Mapping, Sequence
from copy import copy
from dataclasses import dataclass
from typing import Any

from nightshift.core.artifacts import ResultRow
from nightshift.core.protocol import BatchError, Endpoint, Usage, ValidRequest
from nightshift.engine.base import BaseEngine, EngineSpec
from nightshift.runtime import ENGINE_ENV, apply_defaults
from nightshift.settings import EngineConfig

log = logging.getLogger(__name__)


def prepare_environment(config: EngineConfig) -> None:
    """Set the process environment vLLM reads at import, before the first ``import vllm``."""
    apply_defaults(ENGINE_ENV)  # the operator's own values win
    if config.device == "cpu":
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_space_gib))
        # Ray sets OMP_NUM_THREADS=num_cpus in every worker; vLLM's CPU backend binds its OpenMP
        # threads to cores only when it is unset, which is worth ~10-15% throughput here.
        os.environ.pop("OMP_NUM_THREADS", None)


#: vLLM's allowed LoRA ranks (``LoRAConfig.max_lora_rank``): an adapter's rank is rounded up to one.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

#: Adapters the engine runs in one step (vLLM's ``max_loras``). Each batch names one adapter, so
#: this many batches on different adapters of the model share a step; more take turns.
MAX_LORAS_PER_STEP = 4


def engine_kwargs(
    model_path: str, endpoint: Endpoint, config: EngineConfig, *, adapters: int = 0, max_lora_rank: int | None = None
) -> dict[str, Any]:
    """vLLM engine arguments (``LLM(**kw)`` / ``AsyncEngineArgs(**kw)``) for one endpoint's engine,
    with LoRA enabled when it serves ``adapters`` adapters of rank up to ``max_lora_rank``."""
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
        # Requests carry their batch's deadline rank (``_InprocEngineClient``): earliest deadline first.
        "scheduling_policy": "priority",
    }
    if config.compact_json:
        kwargs["structured_outputs_config"] = {"backend": "xgrammar", "disable_any_whitespace": True}
    if config.device == "cuda":
        kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
    if not endpoint.is_generative:
        kwargs.update(runner="pooling", convert="embed")
    if adapters:
        rank = next((r for r in LORA_RANKS if r >= (max_lora_rank or 1)), LORA_RANKS[-1])
        kwargs.update(enable_lora=True, max_lora_rank=rank, max_loras=min(adapters, MAX_LORAS_PER_STEP))
    return kwargs


def serving_args(model_path: str, served_model_name: str, config: EngineConfig, adapters: Mapping[str, str] | None = None) -> Any:
    """The ``vllm serve`` command-line namespace for the OpenAI serving layer (vLLM's defaults
    except the served name, the tool-call parser and the LoRA adapters served beside the model).

    Adapters are vLLM's static LoRA modules: the serving layer loads each under its id at start
    and answers a request whose ``model`` is that id with it (``OpenAIServingModels``).
    """
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    argv = ["--model", model_path, "--served-model-name", served_model_name]
    if config.tool_call_parser is not None:
        # "auto" tool choice needs a parser that finds tool calls in free text; "required" and a
        # named function are enforced by a grammar and need none.
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", config.tool_call_parser]
    if adapters:
        modules = [json.dumps({"name": n, "path": p, "base_model_name": served_model_name}) for n, p in adapters.items()]
        argv += ["--lora-modules", *modules]
    return make_arg_parser(FlexibleArgumentParser()).parse_args(argv)


async def build_serving(engine_client: Any, args: Any, config: EngineConfig) -> Any:
    """vLLM's serving objects over ``engine_client`` (a starlette ``State``), as ``run_batch`` builds them.

    A chat or Responses request without a token limit gets ``config.default_max_tokens`` (still
    capped by what fits the context after the prompt, which is vLLM's own default). The Responses
    serving object keeps no response store, and validation refuses the fields that would need one.
    """
    from starlette.datastructures import State
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state

    state = State()
    await init_app_state(engine_client, state, args, await engine_client.get_supported_tasks())
    for name in ("openai_serving_chat", "openai_serving_completion", "openai_serving_responses"):
        serving = getattr(state, name, None)
        if serving is not None:
            serving.default_sampling_params = {**serving.default_sampling_params, "max_tokens": config.default_max_tokens}
    responses = getattr(state, "openai_serving_responses", None)
    if responses is not None:
        # Batch answers live in output files: even with VLLM_ENABLE_RESPONSES_API_STORE set, the
        # engine must not keep every response in memory (vLLM's store is never pruned).
        responses.enable_store = False
    return state


async def answer(state: Any, endpoint: Endpoint, body: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """One request body through vLLM's serving layer: ``(response body, None)`` or ``(None, vLLM's error object)``.

    The same steps as ``run_batch.run_request``: the endpoint's request model parses the body (a
    validation failure is a 400 error), the serving object answers, an exception becomes vLLM's error
    response.
    """
    from copy import deepcopy

    from pydantic import TypeAdapter
    from starlette.responses import JSONResponse
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
    from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest
    from vllm.entrypoints.serve import create_error_response
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse

    # vLLM's request validators rewrite the dict they are given (Responses sets tool_choice): not the caller's.
    body = deepcopy(body)
    try:
        if endpoint is Endpoint.CHAT_COMPLETIONS:
            response: Any = await state.openai_serving_chat.create_chat_completion(ChatCompletionRequest.model_validate(body))
        elif endpoint is Endpoint.COMPLETIONS:
            response = await state.openai_serving_completion.create_completion(CompletionRequest.model_validate(body))
        elif endpoint is Endpoint.RESPONSES:
            response = await state.openai_serving_responses.create_responses(ResponsesRequest.model_validate(body))
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
        # As vLLM's routers serialise: the Responses router by alias (`text.format.schema`, not `schema_`).
        return response.model_dump(mode="json", by_alias=endpoint is Endpoint.RESPONSES), None
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
    """The token counts of a response body (embeddings have no completion tokens; a Responses
    body names them ``input_tokens`` / ``output_tokens``)."""
    usage = body.get("usage") or {}
    return Usage(
        prompt_tokens=usage.get("prompt_tokens") or usage.get("input_tokens") or 0,
        completion_tokens=usage.get("completion_tokens") or usage.get("output_tokens") or 0,
        total_tokens=usage.get("total_tokens") or 0,
    )


@dataclass
class _RequestState:
    """What the engine loop knows of one request's task: its rank, whether it reached the engine."""

    priority: int
    entered: bool = False
    cached_tokens: int = 0


@dataclass(eq=False)
class _Group:
    """The tasks of one ``answer_all`` call, and the engine error that ended them, if any."""

    tasks: list[asyncio.Future[Any]]
    error: BaseException | None = None

    def fail(self, error: BaseException) -> None:
        """End the group with the engine's error (its requests are aborted as their tasks unwind)."""
        if self.error is None:
            self.error = error
            for task in self.tasks:
                task.cancel()


#: The state of the request whose serving coroutine runs in this task.
_STATE: contextvars.ContextVar[_RequestState] = contextvars.ContextVar("nightshift_request")


class _InprocEngineClient:
    """vLLM's ``EngineClient`` interface over the in-process ``LLMEngine`` of an ``LLM``, fed continuously.

    What ``AsyncLLM.generate`` / ``encode`` do, minus the engine process: inputs are processed,
    requests (fanned out for ``n > 1``) are queued with an output collector, and one loop
    (``pump``) steps the engine whenever it has unfinished requests. Groups of requests (a shard
    each) join the running engine at any time, so the scheduler never drains between shards or
    between batches. Each group carries a priority (its batch's deadline rank) that replaces the
    request's own: the engine runs with vLLM's ``priority`` scheduling policy, so an urgent
    batch's requests are scheduled before an earlier, lax one's that still wait.

    An idle engine starts stepping only once a whole group has been rendered and queued, so the
    scheduler sees it at once, as ``LLM.chat`` would give it.
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
        self._entering = 0  # requests whose serving coroutine has not yet queued them (or failed)
        self._groups: set[_Group] = set()
        self._wake = asyncio.Event()

    # --- what the serving layer calls

    async def get_supported_tasks(self) -> tuple[str, ...]:
        return tuple(self.engine.get_supported_tasks())

    def check_admission(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def is_tracing_enabled(self) -> bool:
        return False

    async def add_lora(self, lora_request: Any) -> bool:
        return bool(self.engine.add_lora(lora_request))  # the serving layer loads each adapter once, at start

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

        state = _STATE.get(None)
        try:
            request = self.input_processor.process_inputs(
                request_id,
                prompt,
                params,
                supported_tasks=tuple(self.engine.get_supported_tasks()),
                lora_request=lora_request,
                tokenization_kwargs=tokenization_kwargs,
                trace_headers=trace_headers,
                # The batch's deadline rank, not a body's own: a tenant does not pick its place in the queue.
                priority=state.priority if state is not None else 0,
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
                    if finished and state is not None:
                        state.cached_tokens = getattr(out, "num_cached_tokens", None) or 0
                    yield out
        except (asyncio.CancelledError, GeneratorExit):
            self.engine.abort_request([queue.request_id], internal=True)  # as AsyncLLM.generate does
            raise

    def _entered(self) -> None:
        state = _STATE.get(None)
        if state is not None and not state.entered:
            state.entered = True
            self._entering -= 1
            self._wake.set()

    async def _tracked(self, coro: Any, state: _RequestState) -> Any:
        _STATE.set(state)  # this task's own context: the engine reads it when the request is queued
        try:
            return await coro
        finally:
            self._entered()

    async def answer_all(self, coros: Sequence[Any], priority: int) -> tuple[list[Any], list[int]]:
        """Run one group's serving coroutines to completion on the running engine.

        Returns their results and the prompt tokens vLLM's prefix cache served for each. Raises
        the engine's own error when the engine failed while the group was in it.
        """
        states = [_RequestState(priority) for _ in coros]
        self._entering += len(coros)  # before any task runs: the pump must not start on half a group
        group = _Group([asyncio.ensure_future(self._tracked(c, s)) for c, s in zip(coros, states, strict=True)])
        self._groups.add(group)
        self._wake.set()
        try:
            results = await asyncio.gather(*group.tasks, return_exceptions=True)
        finally:
            self._groups.discard(group)
        if group.error is not None:
            raise group.error
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return list(results), [s.cached_tokens for s in states]

    async def pump(self) -> None:
        """Step the engine while it has work; runs for the engine's life in its event loop."""
        busy = False  # stepping since the engine was last idle
        while True:
            if self.engine.has_unfinished_requests() and (busy or self._entering == 0):
                busy = True
                try:
                    self.engine.step()  # outputs go to each request's collector
                except Exception as exc:  # noqa: BLE001 - fail the groups in the engine, keep serving later ones
                    log.warning("the vLLM engine failed a step: %s", exc)
                    for group in self._groups:
                        group.fail(exc)
                await asyncio.sleep(0)
                continue
            if not self.engine.has_unfinished_requests():
                busy = False
            # Idle, or an idle engine waiting for a group still being rendered (vLLM's thread pool).
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=0.05 if self._entering else None)


def _engine_thread(
    loop: asyncio.AbstractEventLoop,
    model_path: str,
    served_model_name: str,
    endpoint: Endpoint,
    config: EngineConfig,
    adapters: Mapping[str, str],
    max_lora_rank: int | None,
    box: dict[str, Any],
    ready: threading.Event,
) -> None:
    """The engine's thread: build the engine and its serving layer here, then step it until stopped."""
    asyncio.set_event_loop(loop)
    try:
        from vllm import LLM

        llm = LLM(**engine_kwargs(model_path, endpoint, config, adapters=len(adapters), max_lora_rank=max_lora_rank))
        client = _InprocEngineClient(llm)
        # The serving objects keep loop-bound state: they are built on the loop they serve on.
        args = serving_args(model_path, served_model_name, config, adapters)
        serving = loop.run_until_complete(build_serving(client, args, config))
    except BaseException as exc:  # noqa: BLE001 - handed to the constructor, which raises it
        box["error"] = exc
        ready.set()
        return
    pump = loop.create_task(client.pump())
    box["engine"] = (llm, client, serving)
    del llm, client, serving
    ready.set()
    try:
        loop.run_forever()
    finally:
        pump.cancel()
        with contextlib.suppress(BaseException):
            loop.run_until_complete(pump)
        loop.close()


def _shut_down(loop: asyncio.AbstractEventLoop, thread: threading.Thread, engine_core: Any) -> None:
    """Stop the engine's loop, wait for its thread, then shut its engine core down."""
    with contextlib.suppress(RuntimeError):  # the loop already ended
        loop.call_soon_threadsafe(loop.stop)
    if thread is not threading.current_thread():
        thread.join(timeout=60)
    engine_core.shutdown()


class VLLMEngine(BaseEngine):
    """One vLLM engine for one endpoint kind (a generating or a pooling model), fed continuously.

    The engine lives in a thread of its own: it is built there (vLLM's CPU backend binds that
    thread's OpenMP team to the cores) and its event loop runs there for the engine's life,
    stepping the engine while any caller's requests are in it. ``run`` may be called from many
    threads at once; each call's requests join the running engine.
    """

    kind = "vllm"
    concurrent = True

    def __init__(self, spec: EngineSpec) -> None:
        served_model_name, endpoint, config = spec.served_model_name, spec.endpoint, spec.config
        prepare_environment(config)
        self.model_name = served_model_name
        self.adapters = dict(spec.adapters)
        self.endpoint = endpoint
        self.config = config
        self.requests_served = 0
        self.loop = asyncio.new_event_loop()
        started = time.perf_counter()
        box: dict[str, Any] = {}
        ready = threading.Event()
        self._thread = threading.Thread(
            target=_engine_thread,
            args=(self.loop, spec.model_path, served_model_name, endpoint, config, self.adapters, spec.max_lora_rank, box, ready),
            name="vllm-engine",
            daemon=True,
        )
        self._thread.start()
        ready.wait()
        if "error" in box:
            raise box.pop("error")
        # Taken out of the box: the thread keeps only what it steps, so dropping this object frees the engine.
        self.llm, self.client, self.serving = box.pop("engine")
        # Dropping the engine (or close()) shuts it down at once: vLLM tears down process-global state
        # (its parallel groups) when an engine core shuts down, which must not happen later, under
        # the next engine built in this process.
        self._stop = weakref.finalize(self, _shut_down, self.loop, self._thread, self.llm.llm_engine.engine_core)
        self.startup_seconds = time.perf_counter() - started
        log.info("vLLM engine for %s (%s) ready in %.1fs", served_model_name, endpoint.value, self.startup_seconds)

    def close(self) -> None:
        """Stop the engine's thread and shut the engine down (its memory goes once this object is dropped)."""
        self._stop()

    # ------------------------------------------------------------------ public

    def info(self) -> dict[str, Any]:
        """Engine identity and counters (for manifests and warm-reuse checks)."""
        return {
            "engine": self.kind,
            "model": self.model_name,
            "adapters": sorted(self.adapters),
            "endpoint": self.endpoint.value,
            "startup_seconds": self.startup_seconds,
            "requests_served": self.requests_served,
            "pid": os.getpid(),
        }

    # ------------------------------------------------------------------ internals
    # (run(), request isolation and error rows are BaseEngine's, shared with the transformers engine)

    def _served_as(self, request: ValidRequest) -> str:
        model = request.body.get("model")
        return model if model in self.adapters else self.model_name

    def _run_many(self, requests: Sequence[ValidRequest], priority: int = 0) -> list[ResultRow]:
        # The line's `model` was checked at validation: one of this engine's adapters picks it in vLLM's
        # serving layer (OpenAIServingModels); anything else is answered as the served model.
        coros = [answer(self.serving, self.endpoint, {**r.body, "model": self._served_as(r)}) for r in requests]
        future = asyncio.run_coroutine_threadsafe(self.client.answer_all(coros, priority), self.loop)
        results, cached = future.result()
        rows = []
        for request, (body, error), cached_tokens in zip(requests, results, cached, strict=True):
            if error is not None:
                rows.append(ResultRow(line=request.line, custom_id=request.custom_id, error=error_from_vllm(error, request.line)))
            else:
                assert body is not None
                rows.append(
                    ResultRow(
                        line=request.line,
                        custom_id=request.custom_id,
                        body=body,
                        usage=usage_of(body),
                        prefix_cached_tokens=cached_tokens,
                    )
                )
        return rows

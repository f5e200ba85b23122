"""Hugging Face transformers behind the same method as vLLM: the fallback engine.

Slower than vLLM (no paged attention, no continuous batching: requests go through ``generate``
in small left-padded groups), but it runs wherever torch runs. It is built to answer as
``VLLMEngine`` does on the same model folder:

- prompts are rendered and tokenized as vLLM's ``LLM.chat`` / ``LLM.generate`` do (the
  tokenizer's chat template with ``add_generation_prompt=True`` and no extra special tokens;
  completion prompts with them), and over-long prompts are refused with vLLM's messages;
- sampling follows vLLM's rules (temperature below 1e-5 is greedy and allows only ``n=1``;
  penalties count output tokens; penalties, then temperature, then top-p);
- text comes out of the same incremental decoder (``tokenizers``' ``DecodeStream`` primed with
  the prompt), stop tokens and stop strings end a choice at the same token, and usage counts
  the same tokens (a stop token is counted, as vLLM counts it);
- ``response_format`` is enforced with xgrammar, vLLM's own grammar backend, compiled with the
  same whitespace settings;
- embeddings are the last token's final hidden state, L2-normalised: what vLLM's
  ``convert="embed"`` computes for a causal LM with no sentence-transformers pooling config;
- a request vLLM's server refuses (greedy with ``n > 1``, a prompt the context cannot hold) is
  refused with vLLM's code, field and message.

What this engine cannot match it refuses for the line (``unsupported_parameter`` naming the field)
rather than answer differently: ``tools``/``tool_choice`` (vLLM's grammar-forced calls and tool
parsers), ``logprobs``/``top_logprobs`` and ``logit_bias``. Run such batches on the vLLM engine.
A ``/v1/responses`` line is answered as the chat request it stands for (``instructions`` as the
system message, ``max_output_tokens`` as the budget, ``text.format`` as ``response_format``) and
shaped as OpenAI's ``response`` object.

Greedy outputs are therefore the same as vLLM's up to floating-point differences between the
two engines' kernels: identical on the tiny test model for short outputs; on a real model a
near-tie between two tokens can go the other way. Seeded sampling is reproducible here but is
not vLLM's sequence (the random streams differ).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

from nightshift.core.artifacts import ResultRow
from nightshift.core.errors import UnsupportedRequestError
from nightshift.core.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    Endpoint,
    ResponsesRequest,
    Usage,
    ValidRequest,
)
from nightshift.engine import sampling
from nightshift.engine.base import BaseEngine, EngineSpec

log = logging.getLogger(__name__)

#: Sequences per ``generate`` call. Every prompt in a group is left-padded to the longest, so
#: groups stay small and are formed from requests sorted by prompt length; on CPU a bigger batch
#: gains little past this.
GROUP_SIZE = 16

#: vLLM's sampling thresholds: below _SAMPLING_EPS is greedy; (0, _MAX_TEMP) is raised to _MAX_TEMP.
_SAMPLING_EPS = 1e-5
_MAX_TEMP = 1e-2

#: tokenizers' DecodeStream error after non-monotonic UTF-8 output; vLLM restarts the stream on it.
_INVALID_PREFIX = "Invalid prefix encountered"


@dataclass
class _Job:
    """One generation request, tokenized and with its sampling settings resolved."""

    index: int
    request: ValidRequest
    ids: list[int]
    params: dict[str, Any]  # sampling.sampling_kwargs(), temperature already vLLM-normalised
    max_new: int
    grammar: Any  # an xgrammar CompiledGrammar, or None
    echo: str

    @property
    def greedy(self) -> bool:
        return self.params["temperature"] == 0.0

    def group_key(self) -> tuple[Any, ...]:
        """Requests that may share one ``generate`` call (one GenerationConfig, one length)."""
        p = self.params
        sampled = None if self.greedy else (p["temperature"], p.get("top_p", 1.0), p.get("seed"))
        # A seeded request runs alone, so its output does not depend on what it was batched with.
        alone = self.index if not self.greedy and p.get("seed") is not None else None
        penalties = (p.get("presence_penalty") or 0.0, p.get("frequency_penalty") or 0.0)
        return (self.greedy, str(sampled), alone, p["n"], penalties, self.max_new)


class TransformersEngine(BaseEngine):
    """One transformers model for one endpoint kind: ``AutoModelForCausalLM`` or, for embeddings, ``AutoModel``."""

    kind = "transformers"

    def __init__(self, spec: EngineSpec) -> None:
        model_path, served_model_name, endpoint, config = spec.model_path, spec.served_model_name, spec.endpoint, spec.config
        import torch
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.model_name = served_model_name
        # LoRA adapters are vLLM's (its batched LoRA kernels): this engine refuses their lines, never
        # answering them with the base model.
        self.adapters = sorted(spec.adapters)
        self.endpoint = endpoint
        self.config = config
        self.requests_served = 0
        self.fallback_reason: str | None = None  # set by build_engine when "auto" fell back to this engine
        started = time.perf_counter()
        self.device = "cuda" if config.device == "cuda" and torch.cuda.is_available() else "cpu"
        # The same dtype as vLLM would use gives the same numerics; float32 unless told otherwise.
        dtype = getattr(torch, {"half": "float16", "float": "float32", "auto": "float32"}.get(config.dtype, config.dtype))
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        model_class = AutoModelForCausalLM if endpoint.is_generative else AutoModel
        loaded = model_class.from_pretrained(model_path, dtype=dtype, local_files_only=True)
        self.model = loaded.to(self.device).eval()  # type: ignore[arg-type]  # transformers types .to() for its own wrapper
        self.stop_ids = self._stop_token_ids(model_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.stop_ids)
        if endpoint.is_generative:
            # generate() fills every field left unset from the model's generation_config.json
            # (top_k, repetition_penalty...); vLLM applies none of them to explicit sampling
            # parameters, so neither does this engine.
            self.model.generation_config = GenerationConfig(eos_token_id=sorted(self.stop_ids), pad_token_id=self.pad_id)
        self._embed_unsupported = None if endpoint.is_generative else self._embedding_mismatch(model_path)
        self._grammar_compiler: Any = None
        torch.manual_seed(config.seed)  # unseeded sampling draws from the engine seed, as in vLLM
        self.startup_seconds = time.perf_counter() - started
        log.info("transformers engine for %s (%s) ready in %.1fs", served_model_name, endpoint.value, self.startup_seconds)

    # ------------------------------------------------------------------ public

    def info(self) -> dict[str, Any]:
        """Engine identity and counters (for manifests and warm-reuse checks)."""
        return {
            "engine": self.kind,
            "model": self.model_name,
            "endpoint": self.endpoint.value,
            "device": self.device,
            "startup_seconds": self.startup_seconds,
            "requests_served": self.requests_served,
            "pid": os.getpid(),
            "fallback_reason": self.fallback_reason,
        }

    # ------------------------------------------------------------------ loading

    def _stop_token_ids(self, model_path: str) -> set[int]:
        """The tokenizer's EOS plus the generation config's: the set vLLM stops on."""
        ids: set[int] = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        path = Path(model_path) / "generation_config.json"
        if path.is_file():
            eos = json.loads(path.read_text()).get("eos_token_id")
            ids.update([eos] if isinstance(eos, int) else (eos or []))
        if not ids:
            raise ValueError(f"{model_path}: neither the tokenizer nor generation_config.json names an EOS token")
        return ids

    def _embedding_mismatch(self, model_path: str) -> str | None:
        """Why this engine's embeddings would not be vLLM's for this model, or None when they are."""
        architectures = getattr(self.model.config, "architectures", None) or []
        if (Path(model_path) / "modules.json").is_file():
            return "the model folder carries a sentence-transformers pooling config, which only the vLLM engine applies"
        if not architectures or not all(a.endswith("ForCausalLM") for a in architectures):
            return f"embeddings are supported for causal LMs only (last-token pooling), not {architectures or 'this model'}"
        return None

    # ------------------------------------------------------------------ generation

    def _run_many(self, requests: Sequence[ValidRequest], priority: int = 0) -> list[ResultRow]:  # one at a time: no ranking
        if self.endpoint is Endpoint.EMBEDDINGS:
            return self._embed(requests)
        rows: list[ResultRow | None] = [None] * len(requests)
        jobs: list[_Job] = []
        for i, request in enumerate(requests):
            try:
                jobs.append(self._prepare(i, request))
            except Exception as exc:  # noqa: BLE001 - refused before generation: only this row fails
                rows[i] = self._error_row(request, exc)
        for group in _groups(jobs, min(GROUP_SIZE, self.config.max_num_seqs)):
            for job, choices in zip(group, self._generate(group), strict=True):
                rows[job.index] = self._row(job, choices)
        return [row for row in rows if row is not None]

    def _refuse_adapter(self, request: ValidRequest) -> None:
        model = request.body.get("model")
        if model in self.adapters:
            raise UnsupportedRequestError(
                f"the LoRA adapter {model!r} is served by the vLLM engine only; this batch ran on the transformers engine"
                + (" (vLLM could not serve the model here)" if self.fallback_reason else ""),
                param="model",
            )

    def _prepare(self, index: int, request: ValidRequest) -> _Job:
        """Tokenize one request and resolve its sampling settings as vLLM would."""
        self._refuse_adapter(request)
        body: ChatCompletionRequest | CompletionRequest
        if self.endpoint is Endpoint.RESPONSES:
            # The chat request it stands for: the same prompt, budget and format, answered alike.
            body = sampling.chat_request_for(ResponsesRequest.model_validate(request.body))
        elif self.endpoint is Endpoint.CHAT_COMPLETIONS:
            body = ChatCompletionRequest.model_validate(request.body)
        else:
            body = CompletionRequest.model_validate(request.body)
        sampling.refuse_unmatched(body, "the transformers engine")
        if isinstance(body, ChatCompletionRequest):
            messages = [{"role": m.role, "content": m.text()} for m in body.messages]
            rendered: Any = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
            ids = list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)
            echo = ""
        else:
            ids = list(self.tokenizer(body.prompt)["input_ids"])
            echo = body.prompt if body.echo else ""
        self._check_context(len(ids), generating=True)
        params = sampling.sampling_kwargs(
            body,
            default_max_tokens=self.config.default_max_tokens,
            prompt_tokens=request.prompt_tokens,
            max_model_len=self.config.max_model_len,
        )
        if params["temperature"] < _SAMPLING_EPS:
            params["temperature"] = 0.0
            if params["n"] > 1:
                raise UnsupportedRequestError(
                    f"n must be 1 when using greedy sampling, got {params['n']}.", code="invalid_request"
                )
        else:
            params["temperature"] = max(params["temperature"], _MAX_TEMP)
        # vLLM ends a sequence when it reaches the context length, whatever max_tokens says.
        max_new = min(params["max_tokens"], self.config.max_model_len - len(ids))
        grammar = self._grammar(params.get("structured_outputs"))
        return _Job(index, request, ids, params, max_new, grammar, echo)

    def _check_context(self, prompt_tokens: int, *, generating: bool) -> None:
        """Refuse a prompt the context cannot hold, with vLLM's wording."""
        limit = self.config.max_model_len
        if prompt_tokens > limit:
            raise UnsupportedRequestError(
                f"This model's maximum context length is {limit} tokens. However, your prompt contains "
                f"{prompt_tokens} input tokens, which exceeds this limit even without any output tokens. "
                "Please reduce the length of the input prompt.",
                code="invalid_request",
                param="input_tokens",
            )
        if generating and prompt_tokens == limit:
            raise UnsupportedRequestError(
                f"The decoder prompt (length {prompt_tokens}) plus the number of requested output tokens (at least 1) "
                f"is longer than the maximum model length of {limit}.",
                code="invalid_request",
            )

    def _grammar(self, spec: dict[str, Any] | None) -> Any:
        """The compiled xgrammar JSON grammar for a ``structured_outputs`` spec, as vLLM compiles it."""
        if not spec:
            return None
        try:
            import xgrammar as xgr
        except ImportError as exc:
            raise UnsupportedRequestError(
                "response_format needs a grammar backend (xgrammar), which is not installed where the transformers "
                "engine runs; run this batch on the vLLM engine",
                param="response_format",
            ) from exc
        if self._grammar_compiler is None:
            info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.model.config.vocab_size)
            self._grammar_compiler = xgr.GrammarCompiler(info, max_threads=1)
        schema = json.dumps(spec["json"]) if "json" in spec else '{"type": "object"}'
        compact = self.config.compact_json
        return self._grammar_compiler.compile_json_schema(
            schema, any_whitespace=not compact, separators=(",", ":") if compact else None
        )

    def _generate(self, group: list[_Job]) -> list[list[tuple[str, int, str | None]]]:
        """One ``generate`` call for a group of alike requests; the choices of each."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        first = group[0]
        p, n = first.params, first.params["n"]
        width = max(len(job.ids) for job in group)
        input_ids = torch.full((len(group), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for row, job in enumerate(group):
            input_ids[row, width - len(job.ids) :] = torch.tensor(job.ids, dtype=torch.long)
            attention[row, width - len(job.ids) :] = 1
        # vLLM's order: grammar mask, penalties, temperature, top-p. Passed as processors (with
        # temperature 1 and top-p 1 in the config) so transformers adds no warpers of its own.
        processors: list[Any] = []
        if any(job.grammar is not None for job in group):
            processors.append(
                _GrammarMask([job.grammar for job in group for _ in range(n)], self.stop_ids, self.model.config.vocab_size)
            )
        presence, frequency = p.get("presence_penalty") or 0.0, p.get("frequency_penalty") or 0.0
        if presence or frequency:
            processors.append(_Penalties(width, presence, frequency))
        if not first.greedy:
            processors.append(TemperatureLogitsWarper(p["temperature"]))
            if p.get("top_p", 1.0) < 1.0:
                processors.append(TopPLogitsWarper(p["top_p"]))
        neutral = {} if first.greedy else {"temperature": 1.0, "top_k": 0, "top_p": 1.0}  # (unset would mean top_k=50)
        config = GenerationConfig(
            do_sample=not first.greedy,
            num_return_sequences=n,
            max_new_tokens=first.max_new,
            eos_token_id=sorted(self.stop_ids),
            pad_token_id=self.pad_id,
            **neutral,
        )
        if not first.greedy and p.get("seed") is not None:
            torch.manual_seed(p["seed"])
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                generation_config=config,
                logits_processor=LogitsProcessorList(processors),
            )
        generated = out[:, width:].tolist()
        return [[self._finish(job, generated[row * n + k]) for k in range(n)] for row, job in enumerate(group)]

    def _finish(self, job: _Job, tokens: list[int]) -> tuple[str, int, str | None]:
        """(text, completion tokens, finish reason) of one choice, ended where vLLM would end it."""
        stop = job.params.get("stop")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        decoder = _Detokenizer(self.tokenizer, job.ids)
        text = ""
        for count, token in enumerate(tokens[: job.max_new], start=1):
            if token in self.stop_ids:
                return text, count, "stop"  # counted, but not part of the text
            piece = decoder.step(token)
            text += piece
            cut = _stop_string_end(text, len(piece), stops) if stops else None
            if cut is not None:
                return text[:cut], count, "stop"
        return text, min(len(tokens), job.max_new), "length"

    def _row(self, job: _Job, choices: list[tuple[str, int, str | None]]) -> ResultRow:
        if self.endpoint is Endpoint.RESPONSES:
            (choice,) = choices
            answer = sampling.response_object(
                model=self.model_name,
                body=ResponsesRequest.model_validate(job.request.body),
                prompt_tokens=len(job.ids),
                choice=choice,
                max_tokens=job.max_new,
            )
            data = answer.model_dump(mode="json")
            return ResultRow(line=job.request.line, custom_id=job.request.custom_id, body=data, usage=answer.as_usage())
        build = sampling.chat_completion if self.endpoint is Endpoint.CHAT_COMPLETIONS else sampling.completion
        body = build(
            model=self.model_name,
            prompt_tokens=len(job.ids),
            choices=[(job.echo + text, tokens, reason) for text, tokens, reason in choices],
        )
        return ResultRow(line=job.request.line, custom_id=job.request.custom_id, body=body.model_dump(), usage=body.usage)

    # ------------------------------------------------------------------ embeddings

    def _embed(self, requests: Sequence[ValidRequest]) -> list[ResultRow]:
        import torch

        rows: list[ResultRow | None] = [None] * len(requests)
        prepared: list[tuple[int, ValidRequest, list[list[int]]]] = []
        for i, request in enumerate(requests):
            try:
                self._refuse_adapter(request)
                if self._embed_unsupported:
                    raise UnsupportedRequestError(
                        f"the transformers engine cannot embed like vLLM here: {self._embed_unsupported}"
                    )
                body = EmbeddingRequest.model_validate(request.body)
                ids = [list(self.tokenizer(text)["input_ids"]) for text in body.inputs()]
                for one in ids:
                    self._check_context(len(one), generating=False)
                prepared.append((i, request, ids))
            except Exception as exc:  # noqa: BLE001 - refused before the forward pass: only this row fails
                rows[i] = self._error_row(request, exc)
        texts = [one for _, _, ids in prepared for one in ids]
        vectors: list[list[float]] = []
        for start in range(0, len(texts), GROUP_SIZE):
            chunk = texts[start : start + GROUP_SIZE]
            width = max(len(t) for t in chunk)
            # Right padding: positions count from 0 as in an unpadded pass, and causal attention
            # keeps the padding after a text out of its last token's state.
            input_ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            attention = torch.zeros_like(input_ids)
            for row, t in enumerate(chunk):
                input_ids[row, : len(t)] = torch.tensor(t, dtype=torch.long)
                attention[row, : len(t)] = 1
            with torch.inference_mode():
                hidden = self.model(
                    input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device)
                ).last_hidden_state
            last = hidden[torch.arange(len(chunk)), torch.tensor([len(t) - 1 for t in chunk])]
            vectors += torch.nn.functional.normalize(last.float(), dim=-1).tolist()
        k = 0
        for i, request, ids in prepared:
            tokens = sum(len(one) for one in ids)
            resp = sampling.embedding_response(model=self.model_name, embeddings=vectors[k : k + len(ids)], prompt_tokens=tokens)
            k += len(ids)
            rows[i] = ResultRow(
                line=request.line,
                custom_id=request.custom_id,
                body=resp.model_dump(),
                usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
            )
        return [row for row in rows if row is not None]


def _groups(jobs: list[_Job], group_size: int) -> list[list[_Job]]:
    """Jobs in groups of at most ``group_size`` sequences that share a ``generate`` call, shortest prompts together."""
    ordered = sorted(jobs, key=lambda job: (repr(job.group_key()), len(job.ids)))
    groups: list[list[_Job]] = []
    for _, alike in groupby(ordered, key=lambda job: repr(job.group_key())):
        members = list(alike)
        size = max(1, group_size // members[0].params["n"])
        groups += [members[i : i + size] for i in range(0, len(members), size)]
    return groups


def _stop_string_end(text: str, new_chars: int, stops: list[str]) -> int | None:
    """Where the text ends if a stop string completed in its last ``new_chars`` characters.

    vLLM's ``check_stop_strings``: the stop string that completes earliest wins, and the text
    is cut before it.
    """
    if not new_chars:
        return None
    best_end, best_start = sys.maxsize, None
    for stop in stops:
        start = text.find(stop, 1 - new_chars - len(stop))
        if start != -1 and start + len(stop) < best_end:
            best_end, best_start = start + len(stop), start
    return best_start


class _Detokenizer:
    """vLLM's incremental detokenization: a ``DecodeStream`` primed with the prompt, special tokens skipped."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int]) -> None:
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        if self.backend is not None:
            from tokenizers.decoders import DecodeStream

            self.stream = DecodeStream(ids=prompt_ids, skip_special_tokens=True)

    def step(self, token: int) -> str:
        """The text ``token`` completes (empty while a UTF-8 sequence is incomplete)."""
        if self.backend is None:
            # A slow (Python) tokenizer: decode the whole output and take the new tail.
            self.ids.append(token)
            text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            piece, self.text = text[len(self.text) :], text
            return piece
        try:
            piece = self.stream.step(self.backend, token)
        except (OverflowError, TypeError):
            piece = None
        except Exception as exc:
            if not str(exc).startswith(_INVALID_PREFIX):
                raise
            from tokenizers.decoders import DecodeStream

            self.stream = DecodeStream(skip_special_tokens=True)
            piece = self.stream.step(self.backend, token)
        return piece or ""


class _GrammarMask:
    """Logits processor: tokens a row's grammar does not allow next are masked (xgrammar).

    Rows without a grammar (``None``) are left alone; a row whose grammar has accepted a stop
    token is finished, and ``generate`` pads it from then on.
    """

    def __init__(self, grammars: list[Any], stop_ids: set[int], vocab_size: int) -> None:
        import xgrammar as xgr

        self.matchers = [None if g is None else xgr.GrammarMatcher(g, override_stop_tokens=sorted(stop_ids)) for g in grammars]
        self.bitmask = xgr.allocate_token_bitmask(len(grammars), vocab_size)
        self.vocab_size = vocab_size
        self.started = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import xgrammar as xgr

        if self.started:  # the previous step's token, now in input_ids, advances each grammar
            for row, matcher in enumerate(self.matchers):
                if matcher is not None and not matcher.is_terminated():
                    matcher.accept_token(int(input_ids[row, -1]))
        self.started = True
        rows = []
        for row, matcher in enumerate(self.matchers):
            if matcher is not None and not matcher.is_terminated():
                matcher.fill_next_token_bitmask(self.bitmask, row)
                rows.append(row)
        if rows:
            xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device), vocab_size=self.vocab_size, indices=rows)
        return scores


class _Penalties:
    """Logits processor: OpenAI presence and frequency penalties over the output tokens so far (vLLM's)."""

    def __init__(self, prompt_width: int, presence: float, frequency: float) -> None:
        self.prompt_width = prompt_width
        self.presence = presence
        self.frequency = frequency

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        output = input_ids[:, self.prompt_width :]
        if output.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, output, torch.ones_like(output, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)

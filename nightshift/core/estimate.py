"""What a batch will take before it runs: requests, tokens, ETA, engine-hours and cost, and how
sure that is. The same rule makes ``nightshift estimate``, ``POST /v1/batches/estimate`` and the
``estimate`` a run keeps in its manifest beside the actual cost.

Pure: the caller streams the file's lines in, reads the throughput logs and the pools' state, and
chooses the pool (``core.placement.choose_pool``); nothing here runs an engine or a flow.

Token rules (no tokenizer: the gateway and the CLI never load one):

- prompt tokens ≈ ⌈characters / 4⌉ of the prompt text: every string in the line's ``messages``,
  ``prompt``, ``input`` and ``instructions`` (roles included, standing in for the chat template);
- completion tokens are an upper bound: each line's ``max_completion_tokens``, ``max_tokens`` or
  ``max_output_tokens`` (times ``n``); a chat or responses line without one counts the engine's
  ``default_max_tokens`` cut to what fits the context, a completions line OpenAI's default of 16,
  an embeddings line none.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from nightshift.core.catalogue import Catalogue, EngineHourPrices
from nightshift.core.cost import BatchCost, engine_cost, engine_seconds, priced_model
from nightshift.core.placement import Placement, PoolThroughput

CHARS_PER_TOKEN = 4
#: OpenAI's completion budget of a ``/v1/completions`` line that sets none.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
TOKEN_RULE = (
    "prompt tokens = ceil(characters of the prompt text / 4); completion tokens = upper bound from each line's "
    "max_completion_tokens / max_tokens / max_output_tokens (engine default_max_tokens when a chat line sets none)"
)
_PROMPT_FIELDS = ("messages", "prompt", "input", "instructions")


class TokenCount(BaseModel):
    """What a batch file asks for, counted line by line without a tokenizer."""

    requests: int = Field(default=0, ge=0, description="Non-blank lines (each one is answered or an error line).")
    unreadable_lines: int = Field(default=0, ge=0, description="Lines that are not a JSON object with a body (error lines).")
    prompt_chars: int = Field(default=0, ge=0)
    prompt_tokens: int = Field(default=0, ge=0, description="⌈prompt characters / 4⌉ summed over lines.")
    completion_tokens: int = Field(default=0, ge=0, description="Upper bound: the completion budget of every line.")
    lines_without_budget: int = Field(default=0, ge=0, description="Lines counted at a default completion budget.")
    models: dict[str, int] = Field(default_factory=dict, description="body.model → lines naming it ('' for none).")


def _text_chars(value: Any) -> int:
    """Characters of every string inside ``value`` (dict values and list items, not dict keys)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_chars(v) for v in value.values())
    if isinstance(value, list):
        return sum(_text_chars(v) for v in value)
    return 0


def _budget(body: dict[str, Any]) -> int | None:
    """The line's own completion budget, or None when it sets none."""
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _default_budget(url: str, prompt_tokens: int, *, default_max_tokens: int, max_model_len: int) -> int:
    if url.endswith("/embeddings"):
        return 0
    if url.endswith("/completions") and not url.endswith("/chat/completions"):
        return COMPLETIONS_DEFAULT_MAX_TOKENS
    return max(1, min(default_max_tokens, max_model_len - prompt_tokens))


def count_lines(lines: Iterable[bytes | str], *, default_max_tokens: int, max_model_len: int) -> TokenCount:
    """Count a batch file's requests and estimate its tokens (rules in the module docstring).

    A line that does not parse is counted as a request (it becomes an error line) with no tokens;
    the caller stops feeding lines past its limit (``limits.max_lines``), this only counts.
    """
    count = TokenCount()
    models: Counter[str] = Counter()
    for raw in lines:
        if not raw.strip():
            continue
        count.requests += 1
        try:
            line = json.loads(raw)
        except ValueError:
            line = None
        body = line.get("body") if isinstance(line, dict) else None
        if not isinstance(body, dict):
            count.unreadable_lines += 1
            continue
        url = str(line.get("url") or "") if isinstance(line, dict) else ""
        chars = sum(_text_chars(body.get(name)) for name in _PROMPT_FIELDS)
        prompt = math.ceil(chars / CHARS_PER_TOKEN)
        budget = _budget(body)
        if budget is None:
            count.lines_without_budget += 1
            budget = _default_budget(url, prompt, default_max_tokens=default_max_tokens, max_model_len=max_model_len)
        n = body.get("n")
        choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
        count.prompt_chars += chars
        count.prompt_tokens += prompt
        count.completion_tokens += budget * choices
        model = body.get("model")
        models[model if isinstance(model, str) else ""] += 1
    count.models = dict(models)
    return count


def batch_model(count: TokenCount, catalogue: Catalogue) -> str:
    """The model id the batch runs on, by the run's own rule (``core.validation.batch_model``): the
    first catalogue id a line names, in file order (``count.models`` keeps the order names were first
    seen); the catalogue's default when no line names one. Unknown names are error lines."""
    known = set(catalogue.ids())
    return next((name for name in count.models if name in known), catalogue.default)


class ThroughputBasis(BaseModel):
    """What an ETA is computed from: a model's measured throughput on a pool, or a stated default."""

    pool: str
    requests_per_second: float = Field(gt=0)
    confidence: Literal["measured", "default"]
    batches: int = Field(ge=0, description="Finished batches the measurement is based on (0: the default).")
    basis: str = Field(description="In words: which history, or which setting.")


def throughput_basis(log: PoolThroughput, *, model: str, default_rps: float, default_setting: str) -> ThroughputBasis:
    """The model's measured requests/s on ``log.pool`` when it has run there, else the setting's default."""
    measured = log.requests_per_second()
    if measured is None:
        return ThroughputBasis(
            pool=log.pool,
            requests_per_second=default_rps,
            confidence="default",
            batches=0,
            basis=f"no history of {model} on {log.pool}: default {default_setting} = {default_rps:g} req/s",
        )
    n = len(log.samples)
    return ThroughputBasis(
        pool=log.pool,
        requests_per_second=measured,
        confidence="measured",
        batches=n,
        basis=f"measured {measured:.3g} req/s over the last {n} batch{'es' if n != 1 else ''} of {model} on {log.pool}",
    )


class BatchEstimate(BaseModel):
    """A batch's forecast: made before it runs, kept in its manifest beside the actual cost."""

    requests: int
    prompt_tokens: int = Field(description="Estimated: ⌈characters / 4⌉ of the prompt text.")
    completion_tokens: int = Field(description="Upper bound: the lines' completion budgets.")
    token_rule: str = TOKEN_RULE
    model: str = Field(description="The model id the batch runs on (the one most lines name).")
    placement: Placement = Field(description="The pool placement chooses for it, and why.")
    requests_per_second: float = Field(description="Throughput the ETA uses (see confidence and basis).")
    eta_seconds: float = Field(description="Engine time on the chosen pool: requests / requests_per_second (no queueing).")
    engine_hours: float = Field(description="eta_seconds × engine replicas / 3600.")
    cost: BatchCost
    confidence: Literal["measured", "default"] = Field(
        description="measured: this model's history on that pool; default: a setting."
    )
    basis: str
    basis_batches: int = Field(description="Finished batches the throughput is measured on (0: the default).")
    made_at: datetime


def estimate_batch(
    count: TokenCount,
    *,
    model: str,
    catalogue: Catalogue,
    placement: Placement,
    basis: ThroughputBasis,
    replicas: int,
    made_at: datetime,
) -> BatchEstimate:
    """The estimate of a counted batch on the pool placement chose, priced by the one cost rule.

    ``basis`` is the throughput of the chosen pool (placement's ``estimated_seconds`` was computed
    from it); engine-seconds are that ETA times the engine replicas, as a run's actual engine time is.
    """
    priced = priced_model(catalogue, model)
    prices: EngineHourPrices = catalogue.models[priced].price_per_engine_hour
    seconds = engine_seconds(placement.estimated_seconds, replicas)
    return BatchEstimate(
        requests=count.requests,
        prompt_tokens=count.prompt_tokens,
        completion_tokens=count.completion_tokens,
        model=model,
        placement=placement,
        requests_per_second=basis.requests_per_second,
        eta_seconds=placement.estimated_seconds,
        engine_hours=seconds / 3600,
        cost=engine_cost(engine_seconds=seconds, model=priced, pool=placement.kind, prices=prices),
        confidence=basis.confidence,
        basis=basis.basis,
        basis_batches=basis.batches,
        made_at=made_at,
    )

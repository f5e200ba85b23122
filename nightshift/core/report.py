"""What a batch run shows in the Prefect UI: artifact keys, the summary, the output and error tables.

Pure formatting over a :class:`Manifest`, an :class:`SLAReport` and output/error lines; the flow
reads the files and publishes the artifacts. Keys are derived from the batch id alone, so every
run of a batch adds a version to the same artifacts and the Artifacts page keeps one history per
batch.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from nightshift.core.artifacts import Manifest
from nightshift.core.hashing import sha256_bytes
from nightshift.core.placement import Placement
from nightshift.core.protocol import BatchRequestOutput
from nightshift.core.sla import SLAReport

#: Kinds of artifact a batch run publishes, each under ``batch-{slug}-{kind}``; ``placement`` is
#: published by the run that submitted it (submit-batch): where it went, why, and how it ended.
ARTIFACT_KINDS = ("summary", "progress", "outputs", "errors", "placement")

#: Longest slug kept verbatim; longer batch ids are cut and get the hash suffix.
_MAX_SLUG = 48


def artifact_key(batch_id: str, kind: str) -> str:
    """The Prefect artifact key of one kind of artifact of a batch: ``batch-{slug}-{kind}``.

    Prefect keys allow lowercase letters, digits and dashes only. When the batch id does not map
    onto that losslessly (``My_Batch`` and ``my-batch`` would share ``my-batch``), a short hash of
    the exact id is appended, so two batches never share an artifact history.
    """
    if kind not in ARTIFACT_KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}; one of {ARTIFACT_KINDS}")
    slug = re.sub(r"[^a-z0-9]+", "-", batch_id.lower()).strip("-")
    if slug != batch_id or len(slug) > _MAX_SLUG:
        slug = f"{slug[:_MAX_SLUG].rstrip('-')}-{sha256_bytes(batch_id.encode())[:6]}".lstrip("-")
    return f"batch-{slug}-{kind}"


def format_duration(seconds: float) -> str:
    """``3 h 59 min``, ``12 min 5 s``, ``42 s``; a minus sign when negative (a breached deadline)."""
    sign, s = ("-" if seconds < 0 else ""), round(abs(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{sign}{h} h {m} min"
    if m:
        return f"{sign}{m} min {sec} s"
    return f"{sign}{sec} s"


def _size(n: int) -> str:
    """``512 B``, ``3.4 KiB``, ``1.2 GiB``."""
    if n < 1024:
        return f"{n} B"
    size, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.1f} {unit}"


def summary_markdown(
    manifest: Manifest,
    sla: SLAReport,
    *,
    manifest_uri: str,
    pool: str | None,
    reused: bool = False,
    engine_requests: int | None = None,
    downloads: Mapping[str, str] | None = None,
    downloads_expire_at: datetime | None = None,
) -> str:
    """The run's summary: batch and version, tier and pool, request counts, usage, SLA, the estimate
    beside the actual cost, files, engine.

    Args:
        manifest: the published version's manifest.
        sla: the SLA check of this run.
        manifest_uri: where the manifest itself is (it does not record its own path).
        pool: the work pool the run ran on; None when the flow was called directly.
        reused: True when this version was already published and nothing ran.
        engine_requests: requests sent to the engine in this run.
        downloads: file name (``output``, ``errors``) → a link to download it (presigned on S3),
            valid until ``downloads_expire_at`` (None: a link that does not expire).
    """
    counts, usage, cache = manifest.request_counts, manifest.usage, manifest.cache
    reused_shards = sum(s.reused for s in manifest.shards)
    if sla.met:
        verdict = f"**SLA met** with {format_duration(sla.slack_seconds)} slack"
    else:
        verdict = f"**SLA BREACHED** {format_duration(-sla.slack_seconds)} late"
    run = "reused: this version was already published, nothing ran" if reused else "computed in this run"
    if engine_requests is not None and not reused:
        run += f" ({engine_requests} requests sent to the engine)"
    lines = [
        f"# Batch `{manifest.batch_id}`",
        "",
        f"Version `{manifest.version}` · {manifest.status} · {run}.",
        "",
        f"**Tier** `{sla.tier.value}` on pool `{pool or 'none (called directly)'}` · {verdict} "
        f"(deadline {sla.deadline:%Y-%m-%d %H:%M:%S} UTC, elapsed {format_duration(sla.elapsed_seconds)}, "
        f"{sla.requests_per_second:.2f} req/s, {sla.tokens_per_second:.1f} tokens/s).",
        "",
        "| requests | completed | failed | cache hits | prompt tokens | completion tokens | total tokens |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {counts.total} | {counts.completed} | {counts.failed} | {cache.hits} | {usage.prompt_tokens} "
        f"| {usage.completion_tokens} | {usage.total_tokens} |",
        "",
    ]
    lines += _cost_lines(manifest)
    lines += ["## Files", ""]
    downloads = downloads or {}
    # A list, not a table: URLs are long, and a table would push the sizes out of view.
    for name, record in (("output", manifest.output_file), ("errors", manifest.error_file), ("input", manifest.input)):
        count = "" if record.lines is None else f"{record.lines} lines, "
        link = f" · [download]({downloads[name]})" if name in downloads else ""
        lines.append(f"- **{name}** {count}{_size(record.bytes)}, sha256 `{record.sha256[:12]}`{link}  ")
        lines.append(f"  `{record.path}`")
    lines += ["- **manifest**  ", f"  `{manifest_uri}`"]
    if downloads and downloads_expire_at is not None:
        lines += ["", f"Download links are valid until {downloads_expire_at:%Y-%m-%d %H:%M} UTC."]
    engine = manifest.engine
    shown = ("device", "dtype", "max_model_len", "max_num_seqs", "tensor_parallel_size")
    knobs = [f"{k} {engine[k]}" for k in shown if k in engine]
    lines += [
        "",
        "## Engine",
        "",
        f"- **model** `{manifest.model.name}` (`{manifest.model.sha256[:12]}`) from `{manifest.model.source}`",
        f"- **engine** `{engine.get('backend', 'unknown')}`" + (f": {', '.join(knobs)}" if knobs else ""),
        f"- **endpoint** `{manifest.endpoint.value if manifest.endpoint else 'none'}` · "
        f"**shards** {len(manifest.shards)} ({reused_shards} reused from an interrupted run)",
    ]
    if manifest.timings:
        stages = " · ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in manifest.timings.items())
        lines.append(f"- **stages** {stages}")
    if manifest.lineage is not None:
        lineage = manifest.lineage
        lines.append(f"- **lineage** {lineage.relation} of `{lineage.parent_batch_id}` version `{lineage.parent_version}`")
    return "\n".join(lines) + "\n"


def _cost_lines(manifest: Manifest) -> list[str]:
    """The estimate made before the run beside what the run took and cost (either may be missing:
    a version published before costs were recorded, or a run with no estimate)."""
    estimate, cost, counts, usage = manifest.estimate, manifest.cost, manifest.request_counts, manifest.usage
    if estimate is None and cost is None:
        return []
    lines: list[str] = []
    if cost is not None:
        saving = f"; spot saving ${cost.spot_saving_usd:.6f}" if cost.pool == "spot" else ""
        lines += [
            f"**Cost** ${cost.usd:.6f} on {cost.pool} capacity ({cost.engine_hours:.4f} engine-hours of `{cost.model}` "
            f"× ${cost.price_per_engine_hour:g}/h{saving}).",
            "",
        ]
    lines += [
        "| | requests | prompt tokens | completion tokens | engine time | engine-hours | capacity | cost $ | spot saving $ |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    if estimate is not None:
        e = estimate.cost
        lines.append(
            f"| estimate ({estimate.confidence}) | {estimate.requests} | ~{estimate.prompt_tokens} "
            f"| ≤{estimate.completion_tokens} | {format_duration(e.engine_seconds)} | {e.engine_hours:.4f} | {e.pool} "
            f"| {e.usd:.6f} | {e.spot_saving_usd:.6f} |"
        )
    if cost is not None:
        lines.append(
            f"| actual | {counts.total} | {usage.prompt_tokens} | {usage.completion_tokens} "
            f"| {format_duration(cost.engine_seconds)} | {cost.engine_hours:.4f} | {cost.pool} | {cost.usd:.6f} "
            f"| {cost.spot_saving_usd:.6f} |"
        )
    lines.append("")
    if estimate is not None:
        lines += [f"Estimate basis: {estimate.basis}. Tokens: {estimate.token_rule}.", ""]
    return lines


def placement_markdown(
    *,
    batch_id: str,
    requests: int,
    tier: str,
    deadline: datetime,
    placement: Placement,
    run_name: str,
    run_url: str,
    final_state: str | None = None,
    final_pool: str | None = None,
) -> str:
    """What submit-batch shows: where the batch went and why, the run that carries it, and (once it
    ended) the state it ended in, with the run that ended it when the batch moved pools."""
    lines = [
        f"# Batch `{batch_id}` → `{placement.pool}` ({placement.kind})",
        "",
        f"**Why** {placement.reason}.",
        "",
        f"{requests} requests · tier `{tier}` · deadline {deadline:%Y-%m-%d %H:%M:%S} UTC · "
        f"estimated {format_duration(placement.estimated_seconds)} with {format_duration(placement.remaining_seconds)} left.",
        "",
        f"**Run** [{run_name}]({run_url}) · results under the artifact `{artifact_key(batch_id, 'summary')}`.",
    ]
    if final_state is None:
        lines += ["", "**State** running: this run waits for the batch and ends in its state."]
    else:
        moved = f" on `{final_pool}`" if final_pool and final_pool != placement.pool else ""
        lines += ["", f"**State** {final_state}{moved}."]
    return "\n".join(lines) + "\n"


def _answer(body: dict[str, Any]) -> tuple[str, str | None]:
    """The answer text of a response body and its finish reason (chat, completions, embeddings)."""
    choices = body.get("choices")
    if choices:
        choice = choices[0] or {}
        text = (choice.get("message") or {}).get("content") or choice.get("text") or ""
        return text, choice.get("finish_reason")
    data = body.get("data")
    if data:
        return f"[embedding, {len(data[0].get('embedding') or [])} dims]", None
    return "", None


def output_rows(lines: Iterable[BatchRequestOutput], *, limit: int = 10, width: int = 80) -> list[dict[str, Any]]:
    """The first ``limit`` successful outputs as table rows: custom_id, the answer's first
    ``width`` characters on one line, finish reason and token counts."""
    rows: list[dict[str, Any]] = []
    for line in lines:
        if len(rows) >= limit:
            break
        if line.response is None:
            continue
        body = line.response.body
        text, finish = _answer(body)
        text = " ".join(text.split())
        usage = body.get("usage") or {}
        rows.append(
            {
                "custom_id": line.custom_id,
                "answer": text if len(text) <= width else text[: width - 1] + "…",
                "finish_reason": finish,
                "prompt_tokens": usage.get("prompt_tokens"),
                "completion_tokens": usage.get("completion_tokens"),
            }
        )
    return rows


def error_rows(lines: Iterable[BatchRequestOutput], *, width: int = 80) -> list[dict[str, Any]]:
    """Error lines counted by error code, most frequent first, with the first line and message of each.

    No error lines give one ``none`` row with a count of 0, so the table reads "no errors" rather
    than showing an empty grid (the key's latest version must not look like a failed render).
    """
    counts: Counter[str] = Counter()
    first: dict[str, BatchRequestOutput] = {}
    for line in lines:
        code = line.error.code if line.error is not None else f"http_{line.response.status_code if line.response else 'none'}"
        counts[code] += 1
        first.setdefault(code, line)
    if not counts:
        return [{"error_code": "none", "count": 0, "first_line": None, "example": ""}]
    rows = []
    for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        error = first[code].error
        message = " ".join((error.message if error else "").split())
        rows.append(
            {
                "error_code": code,
                "count": n,
                "first_line": error.line if error else None,
                "example": message if len(message) <= width else message[: width - 1] + "…",
            }
        )
    return rows

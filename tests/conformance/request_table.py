"""Render the conformance table as the markdown of ``docs/request-fields.md``.

Run ``.venv/bin/python -m tests.conformance.request_table`` to rewrite the file after changing
``conformance_cases.py``; ``test_request_table.py`` fails while the file is stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.conformance.conformance_cases import ANSWERED, CASES, Case

DOC = Path(__file__).resolve().parents[2] / "docs" / "request-fields.md"

HEADER = """# Request fields: honoured or refused

Every field of a batch line's request body is either honoured the way vLLM's OpenAI server honours
it, or refused for that line: an error line with `error.code` and `error.param` naming the field
(`unsupported_parameter` for a field nightshift does not honour, `invalid_request` for a wrong type
or a value vLLM refuses, `model_not_found` for another model than the batch's). Nothing is dropped
silently. Any field not listed here is refused like `frobnicate`.

*Generated from the conformance table (`tests/conformance/conformance_cases.py`, checked against
vLLM's own OpenAI serving layer on every test run) by `tests/conformance/request_table.py`; do not
edit by hand.*

"""


def _transformers(case: Case) -> str:
    """What the transformers fallback engine does with the case's body (beyond validation)."""
    from nightshift.core.errors import UnsupportedRequestError
    from nightshift.core.protocol import BODY_MODELS, Endpoint, ResponsesRequest
    from nightshift.engine import sampling

    endpoint = Endpoint(case.url)
    if case.outcome != ANSWERED or endpoint is Endpoint.EMBEDDINGS:
        return "as nightshift"
    body = BODY_MODELS[endpoint].model_validate(case.body)
    if isinstance(body, ResponsesRequest):
        body = sampling.chat_request_for(body)  # as the transformers engine answers it
    try:
        sampling.refuse_unmatched(body, "the transformers engine")  # type: ignore[arg-type]
    except UnsupportedRequestError as exc:
        return f"refused (`{exc.code}`)"
    return "as nightshift"


def _example(case: Case) -> str:
    if case.note:
        return case.note
    name = case.field.removeprefix("body.")
    value: Any = case.body.get(name, "…")
    text = json.dumps(value)
    return f"`{name}: {text if len(text) <= 40 else text[:37] + '…'}`"


def render() -> str:
    """The markdown table: one row per (endpoint, field), in the conformance table's order."""
    rows: dict[tuple[str, str], list[Case]] = {}
    for case in CASES:
        rows.setdefault((case.url, case.field), []).append(case)
    lines = [
        "| Endpoint | Field | nightshift | vLLM's OpenAI server | transformers engine |",
        "|---|---|---|---|---|",
    ]
    for (url, field), cases in rows.items():
        ours, theirs, hf = [], [], []
        for case in cases:
            if case.outcome == ANSWERED:
                ours.append("honoured")
                theirs.append("same answer")
            else:
                ours.append(f"{_example(case)} refused (`{case.code}`)")
                theirs.append(f"{_example(case)} {'refused' if case.vllm == 'refuses' else 'answered'}")
            hf.append(_transformers(case))
        name = "wrong type" if field.startswith("body.") else f"`{field}`"
        if field.startswith("body."):
            name += f" (e.g. `{field.removeprefix('body.')}`)"
        cells = ["; ".join(dict.fromkeys(values)) for values in (ours, theirs, hf)]  # each wording once, in order
        lines.append(f"| `{url}` | {name} | {' | '.join(cells)} |")
    return HEADER + "\n".join(lines) + "\n"


if __name__ == "__main__":
    DOC.write_text(render())
    sys.stdout.write(f"wrote {DOC}\n")

"""docs/request-fields.md is the rendering of the conformance table, not a hand-kept copy."""

from __future__ import annotations

from tests.conformance.request_table import DOC, render


def test_request_fields_doc_is_current():
    assert DOC.is_file(), "run: .venv/bin/python -m tests.conformance.request_table"
    assert DOC.read_text() == render(), "stale: run .venv/bin/python -m tests.conformance.request_table"


def test_the_issue_lines_are_in_the_doc():
    text = render()
    assert '`stream: "True"` refused (`unsupported_parameter`)' in text
    assert '`model: "NonExistModel"` refused (`model_not_found`)' in text
    assert "| `/v1/chat/completions` | `logprobs` | honoured |" in text

"""submit-batch's own checks, before and after the batch: what needs no pool or worker (the stack
test in tests/deployments/test_submit_form.py submits through the UI form end to end)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nightshift.core.errors import BatchFileError, EgressRefused
from nightshift.settings import Settings


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict]]]:
    """A webhook receiver on loopback: its URL and the JSON bodies it got."""
    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", got
    finally:
        server.shutdown()


def test_webhook_gets_an_openai_style_batch_event_through_the_egress_policy(receiver, monkeypatch):
    from flows.submit import notify_webhook
    from nightshift.api.egress import EgressPolicy

    url, got = receiver
    # Loopback is refused by default (the egress rules); an operator admits an internal receiver.
    with pytest.raises(EgressRefused):
        notify_webhook.fn(url, "nightly", "completed", EgressPolicy.from_settings(Settings().api))
    monkeypatch.setenv("NIGHTSHIFT_API_WEBHOOK_ALLOW_HTTP", "true")
    monkeypatch.setenv("NIGHTSHIFT_API_EGRESS_ALLOWED_HOSTS", '["127.0.0.1"]')
    assert notify_webhook.fn(url, "nightly", "failed", EgressPolicy.from_settings(Settings().api)) == 204
    (event,) = got
    assert event["object"] == "event" and event["type"] == "batch.failed" and event["data"] == {"id": "nightly"}


def test_an_empty_file_or_a_refused_webhook_fails_before_anything_is_placed(tmp_path, prefect_api):
    from flows.submit import SubmitParameters, submit_batch_flow
    from nightshift.api import submit_batch

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    # No deployment is registered on this server: an error about one would mean it got that far.
    with pytest.raises(BatchFileError, match="no request lines"):
        submit_batch(str(empty))
    state = submit_batch_flow(
        SubmitParameters(input_uri=str(empty), webhook="http://169.254.169.254/latest/meta-data"), return_state=True
    )
    assert state.is_failed() and "webhook" in state.message

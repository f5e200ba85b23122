"""The Prefect UI, in a real headless Chromium, shows a batch run: its name, its state, its logs, and
the summary, progress, first-outputs and error artifacts the run published.

The run is recorded in the session's Prefect server (``prefect_api``), which serves the UI as well.
Screenshots go to a temporary folder; with ``NIGHTSHIFT_UPDATE_SCREENSHOTS=1`` they replace the
ones in ``docs/`` instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest

from tests.batchfiles import write_batch
from tests.browsers import BROWSER_MARKS, chromium, new_page, screenshot, shots_dir

pytestmark = [*BROWSER_MARKS, pytest.mark.usefixtures("ray_session")]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium, one per module."""
    with chromium() as b:
        yield b


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go (docs/ with NIGHTSHIFT_UPDATE_SCREENSHOTS=1)."""
    return shots_dir(tmp_path)


def test_flow_run_page_shows_the_run_and_its_artifacts(prefect_api, engine_env, tmp_path, browser, shots):
    from playwright.sync_api import expect
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    from flows.batch import BatchRunParameters, process_batch
    from nightshift.core.report import artifact_key

    src = tmp_path / "ui-demo.jsonl"
    write_batch(src, 6, ["invalid_json", "bad_body"])
    result = process_batch(BatchRunParameters(input_uri=str(src), tier="premium", shard_size=3))
    APILogHandler().flush()  # the flow run's own logs, for the Logs tab
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(result.flow_run_id))
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    assert run.state is not None and run.state.is_completed()
    keys = {kind: artifact_key("ui-demo", kind) for kind in ("summary", "progress", "outputs", "errors")}
    ids = {a.key: a.id for a in arts}
    assert set(keys.values()) <= set(ids)

    ui = prefect_api.removesuffix("/api")
    page = new_page(browser)

    # The flow run page: name, state, and the run's logs.
    page.goto(f"{ui}/runs/flow-run/{run.id}")
    expect(page.get_by_text(run.name, exact=True).first).to_be_visible()
    expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
    expect(page.get_by_text("Finished in state Completed()").first).to_be_visible()
    screenshot(page, shots / "prefect-flow-run.png")

    # The Artifacts tab lists all four, by their stable keys; the progress card says how far.
    # Taller: the run's graph takes the top half, and the task runs' artifacts come below the flow's.
    page.set_viewport_size({"width": 1400, "height": 1150})
    page.get_by_text("Artifacts", exact=True).first.click()
    for key in keys.values():
        expect(page.get_by_text(key, exact=True).first).to_be_visible()
    expect(page.get_by_text("8/8 requests").first).to_be_visible()
    expect(page.get_by_text("6/8 completed, 2 failed · SLA met").first).to_be_visible()
    screenshot(page, shots / "prefect-artifacts.png")
    page.set_viewport_size({"width": 1400, "height": 1000})

    # The summary card opens the rendered markdown.
    page.get_by_text(keys["summary"], exact=True).first.click()
    expect(page.get_by_role("heading", name="Batch ui-demo")).to_be_visible()
    body = page.locator("body")
    for text in (f"Version {result.version}", "premium", "SLA met", result.output_uri, result.manifest_uri, "engine"):
        expect(body).to_contain_text(text)
    counts = page.locator("table").first
    expect(counts.locator("th").first).to_have_text("requests")
    expect(counts.locator("tbody tr").first.locator("td")).to_have_text(
        ["8", "6", "2", str(result.cache_hits), *[str(x) for x in _usage(result)]]
    )
    screenshot(page, shots / "prefect-summary.png")

    # The first outputs, and the error lines counted by code.
    out = _first_output(result.output_uri)
    page.goto(f"{ui}/artifacts/artifact/{ids[keys['outputs']]}")
    table = page.locator("table").first
    expect(table).to_contain_text("custom_id")
    expect(table).to_contain_text("completion_tokens")
    expect(table.locator("tbody tr")).to_have_count(6)
    expect(table.locator("tbody tr").first).to_contain_text("req-000")
    expect(table.locator("tbody tr").first).to_contain_text(" ".join(out.split())[:40].strip())
    screenshot(page, shots / "prefect-outputs.png")

    page.goto(f"{ui}/artifacts/artifact/{ids[keys['errors']]}")
    table = page.locator("table").first
    expect(table).to_contain_text("error_code")
    expect(table).to_contain_text("invalid_json")
    expect(table.locator("tbody tr")).to_have_count(len(_error_codes(result.error_uri)))

    # Not asserted: JavaScript errors on the page. The run graph (WebGL, software-rendered here)
    # throws now and then while it animates; that is Prefect's, and the checks above see the content.
    page.close()


def _usage(result) -> tuple[int, int, int]:
    u = result.usage
    return u.prompt_tokens, u.completion_tokens, u.total_tokens


def _first_output(output_uri: str) -> str:
    from tests.batchfiles import read_jsonl

    return read_jsonl(output_uri)[0]["response"]["body"]["choices"][0]["message"]["content"]


def _error_codes(error_uri: str) -> set[str]:
    from tests.batchfiles import read_jsonl

    return {line["error"]["code"] for line in read_jsonl(error_uri)}

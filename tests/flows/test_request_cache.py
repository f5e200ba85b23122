"""The request cache across batches: shared deterministic requests never reach the engine again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.batchfiles import chat_line, read_jsonl
from tests.flows.test_process_batch import _engine_requests_served, _run

pytestmark = pytest.mark.usefixtures("ray_session", "prefect_api")


def _write(path, lines):
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def _content(out):
    return {o["custom_id"]: o["response"]["body"]["choices"][0]["message"]["content"] for o in out}


def test_second_batch_sends_only_its_new_requests_to_the_engine(tmp_path, engine_env):
    first = [chat_line(i) for i in range(50)]
    _write(tmp_path / "first.jsonl", first)
    one = _run(tmp_path / "first.jsonl")
    assert one.cache_hits == 0 and one.engine_requests == 50

    shared = [{**chat_line(i), "custom_id": f"again-{i:03d}"} for i in range(30)]  # same bodies, new ids
    new = [chat_line(i) for i in range(100, 120)]
    _write(tmp_path / "second.jsonl", shared + new)
    served = _engine_requests_served()
    two = _run(tmp_path / "second.jsonl")
    assert _engine_requests_served() - served == 20 == two.engine_requests
    assert two.cache_hits == 30 and two.request_counts.completed == 50

    before, after = _content(read_jsonl(one.output_uri)), _content(read_jsonl(two.output_uri))
    assert all(after[f"again-{i:03d}"] == before[f"req-{i:03d}"] for i in range(30))
    manifest = json.loads(Path(two.manifest_uri.removeprefix("file://")).read_text())
    assert manifest["cache"] == {"cacheable": 50, "hits": 30}


def test_sampled_requests_without_seed_are_never_cached(tmp_path, engine_env):
    lines = [chat_line(i, temperature=0.9) for i in range(6)] + [chat_line(6, temperature=0.9, seed=11)]
    _write(tmp_path / "hot.jsonl", lines)
    one = _run(tmp_path / "hot.jsonl")
    _write(tmp_path / "hot2.jsonl", [{**line, "custom_id": line["custom_id"] + "-b"} for line in lines])
    two = _run(tmp_path / "hot2.jsonl")
    assert (one.cache_hits, two.cache_hits) == (0, 1)  # only the seeded one
    assert two.engine_requests == 6

"""`nightshift run` as a new user meets it: quiet (one bar and a summary within 80 columns, the
engine's logs in a log file), and joined to the `nightshift up` already running on the machine
(no second Prefect server or Ray; the run shows in that server's API)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.batchfiles import write_batch


def test_run_is_quiet_and_joins_the_running_stack(stack, tmp_path):
    import httpx

    env = {k: v for k, v in stack["env"].items() if k not in ("PREFECT_API_URL", "NIGHTSHIFT_RAY_ADDRESS")}
    env["COLUMNS"] = "200"  # a wide terminal: the summary still keeps to 80 columns
    src = tmp_path / "quiet.jsonl"
    write_batch(src, 6, ["invalid_json"])
    run = subprocess.run(
        [sys.executable, "-m", "nightshift.cli", "run", str(src), "--batch-id", "quiet-run", "--tier", "premium"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) <= 15, run.stdout
    assert all(len(line) <= 80 for line in lines if not line.startswith(("output:", "errors:", "manifest:", "log:"))), run.stdout
    assert lines[0].startswith("log: ")
    log = lines[0].removeprefix("log: ").strip()
    joined = next(line for line in lines if line.startswith("Prefect API: ")).removeprefix("Prefect API: ")
    assert "requests 7 · completed 6 · failed 1" in run.stdout
    assert any(line.startswith("output:   file://") for line in lines)
    text = Path(log).read_text()
    # the engine's and Ray's output went to the log, not the terminal
    assert "non-default args" in text or "vLLM" in text, text[-2000:]
    assert "Started a local Ray instance" not in text  # joined the stack's Ray
    assert "starting a local Prefect server" not in run.stdout
    # the run is visible through the running server's API
    runs = httpx.post(f"{joined}/flow_runs/filter", json={"limit": 200}).json()
    assert any(r["parameters"].get("params", {}).get("batch_id") == "quiet-run" for r in runs), joined
    assert joined == stack["env"]["PREFECT_API_URL"]  # the stack's own server, found through its up.json

    listed = subprocess.run([sys.executable, "-m", "nightshift.cli", "ls"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    (row,) = [line.split() for line in listed.stdout.splitlines() if line.startswith("quiet-run")]
    assert row[1] == "premium" and "completed" in row and "7/7" in row, listed.stdout
    assert all(len(line) <= 80 for line in listed.stdout.splitlines()), listed.stdout

    # the answers joined to their custom_id, exported; the live status ends once published
    export = tmp_path / "answers.csv"
    done = subprocess.run([sys.executable, "-m", "nightshift.cli", "results", "quiet-run", "--out", str(export)], env=env)
    assert done.returncode == 0
    import pandas as pd

    answers = pd.read_csv(export)
    assert len(answers) == 7 and (answers.status == "ok").sum() == 6
    assert set(answers[answers.status == "ok"].custom_id) == {f"req-{i:03d}" for i in range(6)}
    assert answers[answers.status == "error"].error_code.tolist() == ["invalid_json"]
    watched = subprocess.run(
        [sys.executable, "-m", "nightshift.cli", "status", "quiet-run", "--watch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert watched.returncode == 0 and "published" in watched.stdout, watched.stdout + watched.stderr

"""Resubmission bench: nightshift never pays twice for the same requests.

In one process on one local Ray and a loopback Prefect server, the same N greedy chat requests go
through ``process_batch`` three times:
  first       a fresh batch (engine start included);
  identical   the same file again: the published version is reused, the engine is not called;
  same-reqs   the same requests under new ``custom_id`` s: a new version whose every request is
              answered by the request cache.
Target: the identical resubmission finishes at least 20x faster than the first run (N >= 1000).

    python bench/resubmit.py            # SmolLM2, N=1000
    python bench/resubmit.py --tiny --n 50
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import (  # noqa: E402 - a sibling script, not a package
    BENCH_HOME,
    REPO,
    RESULTS_DIR,
    add_common_args,
    child_env,
    entry,
    make_requests,
    resolve_model_path,
    run_logged,
    write_jsonl,
)

TARGET = 20.0


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Run the three submissions in this process and return their timings."""
    sys.path.insert(0, str(REPO))
    import ray

    from flows.batch import BatchRunParameters, process_batch
    from nightshift.engine.runner import ray_init_kwargs
    from nightshift.settings import Settings

    ray.init(**ray_init_kwargs(Settings().ray))
    runs = {}
    try:
        for label, key in (("first", "input"), ("identical", "input"), ("same_requests", "input_renamed")):
            t = time.perf_counter()
            result = process_batch(BatchRunParameters(input_uri=job[key], batch_id=f"resubmit-{job['stamp']}"))
            runs[label] = {
                "wall_s": time.perf_counter() - t,
                "version": result.version,
                "reused": result.reused,
                "engine_requests": result.engine_requests,
                "cache_hits": result.cache_hits,
                "completed": result.request_counts.completed,
            }
    finally:
        ray.shutdown()
    return runs


def main(args: argparse.Namespace) -> None:
    """Prepare the inputs, run the worker beside a Prefect server, report and save."""
    from rich.console import Console
    from rich.table import Table

    from nightshift.services import local_prefect_server

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = BENCH_HOME / f"resubmit-{stamp}"
    workdir.mkdir(parents=True)
    model = resolve_model_path(args)
    requests = make_requests(args.n, "a", model.name, args.max_tokens)
    write_jsonl(workdir / "batch.jsonl", requests)
    write_jsonl(workdir / "batch-renamed.jsonl", [{**r, "custom_id": r["custom_id"] + "-again"} for r in requests])
    job = {"stamp": stamp, "input": str(workdir / "batch.jsonl"), "input_renamed": str(workdir / "batch-renamed.jsonl")}
    job_path, out_path = workdir / "job.json", workdir / "result.json"
    job_path.write_text(json.dumps({**job, "result": str(out_path)}))
    env = {
        "NIGHTSHIFT_ENGINE_MODEL": str(model),
        "NIGHTSHIFT_ENGINE_MAX_MODEL_LEN": "2048",
        "NIGHTSHIFT_STORAGE_ROOT": str(workdir / "store"),
        "NIGHTSHIFT_RAY_TEMP_DIR": str(BENCH_HOME / "ray"),
    }
    with local_prefect_server(BENCH_HOME / "prefect", ui=False) as url:
        run_logged(
            [sys.executable, str(Path(__file__).resolve()), "--worker", "resubmit", "--job", str(job_path)],
            workdir / "worker.log",
            child_env({**env, "PREFECT_API_URL": url}),
        )
    runs = json.loads(out_path.read_text())
    first = runs["first"]["wall_s"]
    speedups = {label: first / r["wall_s"] for label, r in runs.items() if label != "first"}

    table = Table(title=f"resubmission — {model.name}, N={args.n}, max_tokens={args.max_tokens}")
    for col in ("run", "seconds", "speed-up", "version", "reused", "engine requests", "cache hits"):
        table.add_column(col)
    for label, r in runs.items():
        table.add_row(
            label,
            f"{r['wall_s']:.1f}",
            "-" if label == "first" else f"{speedups[label]:.1f}x",
            r["version"],
            str(r["reused"]),
            str(r["engine_requests"]),
            str(r["cache_hits"]),
        )
    Console().print(table)
    ok = speedups["identical"] >= TARGET
    print(f"identical resubmission: {speedups['identical']:.1f}x faster (target >= {TARGET:.0f}x): {'met' if ok else 'MISSED'}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"resubmit-{stamp}.json"
    out.write_text(json.dumps({"n": args.n, "model": model.name, "runs": runs, "speedups": speedups, "target": TARGET}, indent=2))
    print(f"figures written to {out.relative_to(REPO)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--worker", choices=["resubmit"], help=argparse.SUPPRESS)
    p.add_argument("--job", help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    entry(parse_args(), {"resubmit": worker}, main)

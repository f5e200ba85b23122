"""Cold CLI bench: ``nightshift run FILE`` as a user types it, nothing running, against raw vLLM.

Two paths on the same N chat requests, in subprocesses one after the other:
  raw        ``vllm.LLM(...).chat`` in one process (bench/throughput.py's raw worker): engine start + generation;
  nightshift ``python -m nightshift.cli run FILE`` with a fresh NIGHTSHIFT_HOME and no PREFECT_API_URL, so it
             starts its private Prefect server, a local Ray and the engine itself; wall time of the process.
Target (issue 17): nightshift ÷ raw (start + generation) ≥ 1.0.

    python bench/cli_cold.py            # SmolLM2-135M, N=1000, 32 new tokens (~6 min)
    python bench/cli_cold.py --tiny --n 50
Figures go to bench/results/cli-cold-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput as tp  # noqa: E402 - the shared bench helpers (and its raw worker, run in a subprocess)


def main(args: argparse.Namespace) -> None:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    workdir = tp.BENCH_HOME / f"cli-cold-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    model_path = tp.resolve_model_path(args)
    name = "tiny" if args.tiny else args.model
    batch = workdir / "batch.jsonl"
    tp.write_jsonl(batch, tp.make_requests(args.n, "a", name, args.max_tokens))
    # throughput.py's raw worker also runs a batch B on the same engine: give it one line.
    one = workdir / "one.jsonl"
    tp.write_jsonl(one, tp.make_requests(1, "b", name, args.max_tokens))
    job = {"model_path": str(model_path), "max_tokens": args.max_tokens, "input_a": str(batch), "input_b": str(one)}

    load = tp.ForeignLoad()
    try:
        quiet_raw = load.wait_quiet(args.wait_quiet)
        raw = tp.run_worker("raw", job, workdir, tp.child_env())
        raw_load = load.take()
        home = workdir / "home"
        env = tp.child_env(
            {
                "NIGHTSHIFT_HOME": str(home),
                "NIGHTSHIFT_ENGINE_MODEL": str(model_path),
                "NIGHTSHIFT_ENGINE_SERVED_MODEL_NAME": name,
                "NIGHTSHIFT_ENGINE_MAX_MODEL_LEN": "2048",
            }
        )
        env.pop("PREFECT_API_URL", None)  # nothing running: the command starts what it needs
        quiet_ns = load.wait_quiet(args.wait_quiet)
        cmd = [sys.executable, "-m", "nightshift.cli", "run", str(batch), "--batch-id", "cli-cold"]
        wall = tp.run_logged(cmd, workdir / "cli.log", env)
        ns_load = load.take()
    finally:
        load.close()
    manifest_path = next(home.glob("store/batches/cli-cold/*/manifest.json"))
    manifest = json.loads(manifest_path.read_text())
    outputs = tp.parse_outputs(Path(manifest["output_file"]["path"].removeprefix("file://")))
    raw_s = raw["start_s"] + raw["generation_s"]
    summary: dict[str, Any] = {
        "n": args.n,
        "raw_start_plus_generation_s": raw_s,
        "raw_req_per_s": args.n / raw_s,
        "cli_wall_s": wall,
        "cli_req_per_s": args.n / wall,
        "ratio_cli_cold / raw_start_plus_generation": raw_s / wall,
        "target": ">= 1.0",
        "cli_timings": manifest["timings"],
        "completion_tokens": {"raw": raw["completion_tokens"], "cli": outputs["completion_tokens"]},
        "greedy_equal_raw": f"{sum(raw['texts'].get(k) == v for k, v in outputs['texts'].items())}/{args.n}",
    }
    record = {
        "bench": "cli-cold",
        "stamp": stamp,
        "model": name,
        "max_tokens": args.max_tokens,
        "command": "nightshift run batch.jsonl --batch-id cli-cold (fresh NIGHTSHIFT_HOME, no PREFECT_API_URL)",
        "git": tp.git_state(),
        "summary": summary,
        "load": {"raw": {**quiet_raw, **raw_load}, "nightshift": {**quiet_ns, **ns_load}},
        "raw": {k: v for k, v in raw.items() if k not in ("texts", "b")},
        "cpu_count": os.cpu_count(),
    }
    tp.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = tp.RESULTS_DIR / f"cli-cold-{stamp}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(json.dumps(summary, indent=2, default=str))
    print(f"results: {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    tp.add_common_args(p)
    p.add_argument("--wait-quiet", type=float, default=120, help="seconds to wait for other jobs to calm down")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())

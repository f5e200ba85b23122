"""Memory bench: the driver streams, so a 10x bigger batch costs about the same memory.

Measures peak RSS (``VmHWM`` from /proc, sampled until the process exits) of
  driver     ``nightshift run`` on a 5,000-line and a 50,000-line batch (tiny model, max_tokens 1),
             against a Prefect server and a Ray head started here, so the driver is only the flow
             process: the engine, the tasks and the server are other processes;
  gateway    ``nightshift serve`` receiving a 200 MB upload through POST /v1/files.
Targets: driver(50k) / driver(5k) <= 1.3, gateway peak < 500 MB.

    python bench/memory.py                 # 5k / 50k lines, 200 MB upload
    python bench/memory.py --small 500 --large 5000 --upload-mb 20   # quick check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))

TARGET_RATIO = 1.3
TARGET_GATEWAY_MB = 500.0


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set so far (VmHWM), in MB; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


class PeakWatcher:
    """Samples a process's VmHWM every 100 ms until it exits (VmHWM only grows)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (value := peak_rss_mb(self.pid)) is not None:
            self.peak = max(self.peak, value)
            time.sleep(0.1)

    def stop(self) -> float:
        self._thread.join(5)
        return self.peak


def write_batch(path: Path, n: int) -> None:
    """``n`` distinct greedy chat requests of one output token (the engine is not what is measured)."""
    with path.open("w") as f:
        for i in range(n):
            body = {"model": "tiny", "messages": [{"role": "user", "content": f"Item {i}: say one word."}], "max_tokens": 1}
            body["temperature"] = 0
            f.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n")


def write_upload(path: Path, megabytes: int) -> int:
    """A valid batch file of about ``megabytes`` MB in at most 50,000 lines (long prompts)."""
    target = megabytes * 1_000_000
    lines = min(50_000, max(1, target // 2_000))
    filler = "x" * (target // lines - 150)
    with path.open("w") as f:
        for i in range(lines):
            body = {"model": "tiny", "messages": [{"role": "user", "content": f"{i} {filler}"}], "max_tokens": 1}
            f.write(json.dumps({"custom_id": f"u{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}) + "\n")
    return path.stat().st_size


def run_driver(file: Path, env: dict[str, str], log: Path) -> dict[str, float]:
    started = time.perf_counter()
    with log.open("ab") as out:
        args = [sys.executable, "-m", "nightshift.cli", "run", str(file), "--tier", "free"]
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        watcher = PeakWatcher(proc.pid)
        if proc.wait() != 0:
            raise RuntimeError(f"nightshift run failed; see {log}")
    return {"peak_rss_mb": round(watcher.stop(), 1), "wall_s": round(time.perf_counter() - started, 1)}


def run_gateway_upload(file: Path, env: dict[str, str], home: Path) -> dict[str, float]:
    import httpx

    from nightshift.services import free_port, start_process, stop_process_group

    key = subprocess.run(
        [sys.executable, "-m", "nightshift.cli", "keys", "create", "--org", "bench", "--tier", "premium"],
        env=env, capture_output=True, text=True, check=True, cwd=REPO,
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    port = free_port()
    proc = start_process([sys.executable, "-m", "nightshift.cli", "serve", "--port", str(port)], env, home / "gateway.log")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code in (200, 503):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("gateway did not start")
            time.sleep(0.3)
        idle = peak_rss_mb(proc.pid) or 0.0
        watcher = PeakWatcher(proc.pid)
        started = time.perf_counter()
        with file.open("rb") as f:
            response = httpx.post(
                f"http://127.0.0.1:{port}/v1/files",
                headers={"Authorization": f"Bearer {key}"},
                files={"file": (file.name, f, "application/jsonl")},
                data={"purpose": "batch"},
                timeout=600,
            )
        seconds = time.perf_counter() - started
        response.raise_for_status()
        time.sleep(0.5)
        peak = peak_rss_mb(proc.pid) or watcher.peak
        return {"idle_rss_mb": round(idle, 1), "peak_rss_mb": round(peak, 1), "upload_s": round(seconds, 1)}
    finally:
        stop_process_group(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=5_000)
    parser.add_argument("--large", type=int, default=50_000)
    parser.add_argument("--upload-mb", type=int, default=200)
    parser.add_argument("--shard-size", type=int, default=1_000)
    args = parser.parse_args()

    from nightshift.engine.models import build_tiny_model
    from nightshift.services import local_prefect_server, local_ray_head

    work = Path(tempfile.mkdtemp(prefix="ns-membench-"))
    model = build_tiny_model(work / "tiny-model")
    results: dict[str, object] = {"small_lines": args.small, "large_lines": args.large, "upload_mb": args.upload_mb}
    with (
        local_prefect_server(work / "prefect", ui=False) as api,
        local_ray_head(Path(f"/tmp/ns-membench-ray-{os.getpid()}"), num_cpus=2) as ray_address,
    ):
        env = {
            **os.environ,
            "PREFECT_API_URL": api,
            "NIGHTSHIFT_HOME": str(work / "home"),
            "NIGHTSHIFT_RAY_ADDRESS": ray_address,
            "NIGHTSHIFT_ENGINE_MODEL": str(model),
            "NIGHTSHIFT_ENGINE_SERVED_MODEL_NAME": "tiny",  # the name its lines use
            "NIGHTSHIFT_ENGINE_MAX_MODEL_LEN": "512",
            "NIGHTSHIFT_STORAGE_ROOT": str(work / "store"),
            "NIGHTSHIFT_STORAGE_SHARD_SIZE": str(args.shard_size),
            "NIGHTSHIFT_LIMITS_MAX_LINES": str(max(args.large, 50_000)),
            "NIGHTSHIFT_API_DATABASE_URL": f"sqlite+aiosqlite:///{work / 'gateway.db'}",
            "RAY_AUTH_MODE": "disabled",
        }
        for label, n in (("small", args.small), ("large", args.large)):
            file = work / f"batch-{n}.jsonl"
            write_batch(file, n)
            results[f"driver_{label}"] = run_driver(file, env, work / f"run-{n}.log")
            print(f"driver, {n:>6} lines: {results[f'driver_{label}']}", flush=True)
        upload = work / "upload.jsonl"
        results["upload_bytes"] = write_upload(upload, args.upload_mb)
        results["gateway"] = run_gateway_upload(upload, env, work)
        print(f"gateway, {results['upload_bytes'] / 1e6:.0f} MB upload: {results['gateway']}", flush=True)

    small, large = results["driver_small"]["peak_rss_mb"], results["driver_large"]["peak_rss_mb"]  # type: ignore[index]
    ratio = large / small
    gateway_peak = results["gateway"]["peak_rss_mb"]  # type: ignore[index]
    results.update(driver_ratio=round(ratio, 3), driver_target=TARGET_RATIO, gateway_target_mb=TARGET_GATEWAY_MB)
    print(f"driver peak RSS {args.large}/{args.small} lines: {large:.0f}/{small:.0f} MB = {ratio:.2f}x (<= {TARGET_RATIO})")
    print(f"gateway peak RSS during a {args.upload_mb} MB upload: {gateway_peak:.0f} MB (target < {TARGET_GATEWAY_MB:.0f})")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"memory-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()

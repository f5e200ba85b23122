"""Memory bench: peak RSS of every process of a batch stays flat from 50k to 1M input lines.

Runs ``nightshift run`` against a Prefect server and a Ray head started here (so the driver is
only the flow process), once per size, and samples every process involved every 0.25 s:
  driver          the ``nightshift run`` process (and anything it spawns);
  ray_worker      each Ray worker process that ran the flow's tasks (validate, shard, infer, publish);
  engine_actor    the engine actor: its RSS when the run starts is the warm model and engine
                  (``baseline``), and what it adds during the run (``batch``) is reported apart;
  ray_system      gcs_server, raylet and Ray's other helpers;
  prefect_server  the API server the flow reports to.
A warm-up batch starts the engine and the workers first, then before each measured run every
long-lived process's peak (``VmHWM``) is reset to its current RSS (``/proc/PID/clear_refs``), so
a peak belongs to one run. Processes are found by session: the head, the server and each driver
are started in their own, and Ray's processes stay in the head's.
Also measured: ``nightshift serve`` receiving a large upload through POST /v1/files.
Targets: peak(largest) / peak(smallest) <= 1.3 for the driver and for the largest Ray worker;
gateway peak < 500 MB.

    python bench/memory.py                                   # 50k and 1M lines, 200 MB upload
    python bench/memory.py --sizes 5000,20000 --upload-mb 0  # quick check (no upload)
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
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))

TARGET_RATIO = 1.3
TARGET_GATEWAY_MB = 500.0
SAMPLE_SECONDS = 0.25
#: Ray names a worker process after what it runs (``ray::IDLE``, ``ray::<task>``, ``ray::<actor>.<method>``).
ENGINE_TITLE = "ray::_EngineActor"
#: Ray's own helpers that also carry a ``ray::`` title: not workers.
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _status_mb(pid: int, field_name: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set so far (VmHWM), in MB; None once it is gone."""
    return _status_mb(pid, "VmHWM")


class PeakWatcher:
    """Samples one process's VmHWM until it exits (VmHWM only grows)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (value := peak_rss_mb(self.pid)) is not None:
            self.peak = max(self.peak, value)
            time.sleep(0.1)


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux: write 5 to clear_refs)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def session_of(*needles: str) -> int:
    """The session of the process whose command line holds every one of ``needles``."""
    for pid in _pids():
        title = _title(pid)
        if all(n in title for n in needles):
            sid = _sid(pid)
            if sid is not None:
                return sid
    raise RuntimeError(f"no process matching {needles}")


@dataclass
class Seen:
    """One process as sampled during a run."""

    pid: int
    group: str  # driver, ray, prefect: the session it belongs to
    titles: set[str] = field(default_factory=set)
    baseline_mb: float | None = None  # RSS when the run started (None: started during the run)
    peak_mb: float = 0.0

    @property
    def role(self) -> str:
        if self.group != "ray":
            return {"driver": "driver", "prefect": "prefect_server"}[self.group]
        if any(t.startswith(ENGINE_TITLE) for t in self.titles):
            return "engine_actor"
        if any(t.startswith(RAY_AGENTS) for t in self.titles):
            return "ray_system"
        worker = any(t.startswith("ray::") or "default_worker.py" in t for t in self.titles)
        return "ray_worker" if worker else "ray_system"


class Sampler:
    """Samples the VmHWM of every process of the watched sessions until stopped."""

    def __init__(self, sessions: dict[int, str]) -> None:
        self.sessions = sessions
        self.seen: dict[int, Seen] = {}
        self.reset_ok = True
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Reset the peaks of the processes alive now, and sample until ``stop``."""
        self.seen = {}
        for pid in _pids():
            group = self.sessions.get(_sid(pid) or -1)
            if group is not None:
                self.reset_ok &= reset_peak(pid)
                self.seen[pid] = Seen(pid, group, {_title(pid)}, baseline_mb=_status_mb(pid, "VmRSS"))
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def watch(self, sid: int, group: str) -> None:
        """Also sample session ``sid`` (a driver just started)."""
        with self._lock:
            self.sessions[sid] = group

    def sample(self) -> None:
        """One pass over every process."""
        with self._lock:
            sessions = dict(self.sessions)
        for pid in _pids():
            group = sessions.get(_sid(pid) or -1)
            if group is None:
                continue
            peak = peak_rss_mb(pid)
            if peak is None:
                continue
            seen = self.seen.setdefault(pid, Seen(pid, group))
            seen.titles.add(_title(pid))
            seen.peak_mb = max(seen.peak_mb, peak)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_SECONDS)

    def stop(self) -> list[Seen]:
        """Stop sampling (after a last pass); the processes seen."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self.sample()
        return list(self.seen.values())


def write_batch(path: Path, n: int, tag: str) -> None:
    """``n`` distinct greedy chat requests of one output token (the engine is not what is measured).

    ``tag`` makes every run's prompts its own: a request answered by an earlier run would come
    from the request cache and never reach the engine.
    """
    with path.open("w") as f:
        for i in range(n):
            body = {"model": "tiny", "messages": [{"role": "user", "content": f"{tag} item {i}: say one word."}], "max_tokens": 1}
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


def run_driver(file: Path, env: dict[str, str], log: Path, sampler: Sampler) -> float:
    """Run ``nightshift run`` on ``file`` while ``sampler`` watches; returns the wall time."""
    started = time.perf_counter()
    with log.open("ab") as out:
        args = [sys.executable, "-m", "nightshift.cli", "run", str(file), "--tier", "free"]
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        sampler.watch(proc.pid, "driver")
        if proc.wait() != 0:
            raise RuntimeError(f"nightshift run failed; see {log}")
    return round(time.perf_counter() - started, 1)


def summarize(lines: int, wall_s: float, seen: list[Seen]) -> dict[str, object]:
    """Peak RSS per role for one run (MB), with the processes behind each figure."""

    def peak(role: str) -> float:
        return round(max((s.peak_mb for s in seen if s.role == role), default=0.0), 1)

    def procs(role: str) -> list[dict[str, object]]:
        rows = [s for s in seen if s.role == role]
        return [
            {"pid": s.pid, "peak_rss_mb": round(s.peak_mb, 1), "titles": sorted(t[:80] for t in s.titles if t)}
            for s in sorted(rows, key=lambda s: -s.peak_mb)
        ]

    engines = [s for s in seen if s.role == "engine_actor"]
    engine = max(engines, key=lambda s: s.peak_mb, default=None)
    baseline = engine.baseline_mb if engine is not None else None
    return {
        "lines": lines,
        "wall_s": wall_s,
        "driver_peak_rss_mb": peak("driver"),
        "largest_ray_worker_peak_rss_mb": peak("ray_worker"),
        "engine_actor": {
            "peak_rss_mb": peak("engine_actor"),
            "baseline_rss_mb": round(baseline, 1) if baseline is not None else None,  # the warm model and engine
            "batch_rss_mb": round(engine.peak_mb - baseline, 1) if engine is not None and baseline is not None else None,
        },
        "ray_system_peak_rss_mb": peak("ray_system"),
        "prefect_server_peak_rss_mb": peak("prefect_server"),
        "processes": {role: procs(role) for role in ("driver", "ray_worker", "engine_actor", "ray_system", "prefect_server")},
    }


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
    parser.add_argument("--sizes", default="50000,1000000", help="Comma-separated input line counts, smallest first.")
    parser.add_argument("--warmup", type=int, default=200, help="Lines of the warm-up batch (starts the engine and workers).")
    parser.add_argument("--upload-mb", type=int, default=200, help="Size of the gateway upload (0: skip it).")
    parser.add_argument("--shard-size", type=int, default=1_000)
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.sizes.split(","))

    from nightshift.engine.models import build_tiny_model
    from nightshift.services import local_prefect_server, local_ray_head

    work = Path(tempfile.mkdtemp(prefix="ns-membench-"))
    model = build_tiny_model(work / "tiny-model")
    ray_dir = Path(f"/tmp/ns-membench-ray-{os.getpid()}")
    results: dict[str, object] = {"sizes": sizes, "shard_size": args.shard_size, "upload_mb": args.upload_mb}
    with (
        local_prefect_server(work / "prefect", ui=False) as api,
        local_ray_head(ray_dir, num_cpus=2) as ray_address,
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
            "NIGHTSHIFT_LIMITS_MAX_LINES": str(max(*sizes, 50_000)),
            "NIGHTSHIFT_LIMITS_MAX_BYTES": str(4 * 1024**3),
            "NIGHTSHIFT_API_DATABASE_URL": f"sqlite+aiosqlite:///{work / 'gateway.db'}",
            "RAY_AUTH_MODE": "disabled",
        }
        sessions = {
            session_of("ray", "start", "--head", f"--temp-dir={ray_dir.absolute()}"): "ray",
            session_of("prefect", "server", "start", f"--port {api.split(':')[-1].removesuffix('/api')}"): "prefect",
        }
        file = work / "warmup.jsonl"
        write_batch(file, args.warmup, "warm-up")
        warm = Sampler(dict(sessions))
        warm.start()
        run_driver(file, env, work / "warmup.log", warm)
        warm.stop()

        runs = []
        for n in sizes:
            file = work / f"batch-{n}.jsonl"
            write_batch(file, n, f"run {n}")
            sampler = Sampler(dict(sessions))
            sampler.start()
            wall = run_driver(file, env, work / f"run-{n}.log", sampler)
            run = summarize(n, wall, sampler.stop())
            run["peaks_reset"] = sampler.reset_ok
            runs.append(run)
            file.unlink()
            engine = run["engine_actor"]
            print(
                f"{n:>8} lines in {wall:>7.1f}s: driver {run['driver_peak_rss_mb']:.0f} MB, "
                f"largest Ray worker {run['largest_ray_worker_peak_rss_mb']:.0f} MB, "
                f"engine actor {engine['peak_rss_mb']:.0f} MB (model+engine {engine['baseline_rss_mb']} MB, "  # type: ignore[index]
                f"batch {engine['batch_rss_mb']} MB), Ray system {run['ray_system_peak_rss_mb']:.0f} MB, "  # type: ignore[index]
                f"Prefect server {run['prefect_server_peak_rss_mb']:.0f} MB",
                flush=True,
            )
        results["runs"] = runs
        if args.upload_mb:
            upload = work / "upload.jsonl"
            results["upload_bytes"] = upload_bytes = write_upload(upload, args.upload_mb)
            results["gateway"] = run_gateway_upload(upload, env, work)
            print(f"gateway, {upload_bytes / 1e6:.0f} MB upload: {results['gateway']}", flush=True)

    small, large = runs[0], runs[-1]
    ratios: dict[str, float | None] = {}
    for name, pick in (
        ("driver", lambda r: r["driver_peak_rss_mb"]),
        ("largest_ray_worker", lambda r: r["largest_ray_worker_peak_rss_mb"]),
        ("engine_actor", lambda r: r["engine_actor"]["peak_rss_mb"]),
        ("ray_system", lambda r: r["ray_system_peak_rss_mb"]),
        ("prefect_server", lambda r: r["prefect_server_peak_rss_mb"]),
    ):
        a, b = pick(small), pick(large)
        ratios[name] = round(b / a, 3) if a else None
    results["ratios"] = ratios
    results["target_ratio"] = TARGET_RATIO
    results["met"] = all((ratios[k] or 0) <= TARGET_RATIO for k in ("driver", "largest_ray_worker"))
    results["gateway_target_mb"] = TARGET_GATEWAY_MB
    print(f"peak RSS ratios {large['lines']} / {small['lines']} lines (target <= {TARGET_RATIO} for driver and largest worker):")
    for name, ratio in ratios.items():
        print(f"  {name:<20} {ratio}")
    if "gateway" in results:
        gateway_peak = results["gateway"]["peak_rss_mb"]  # type: ignore[index]
        print(f"gateway peak RSS during a {args.upload_mb} MB upload: {gateway_peak:.0f} MB (target < {TARGET_GATEWAY_MB:.0f})")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"memory-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()

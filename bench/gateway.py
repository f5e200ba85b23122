"""Gateway bench: 50 concurrent clients on loopback create, poll and list while 20 batches run.

The gateway runs as its own process (uvicorn, the real app, SQLite database, local store) on
127.0.0.1. Runs are emulated by the orchestrator passed to ``create_app`` (the app's seam for
Prefect): each started batch writes ``progress.json`` into the store every half second, as a flow
does, so every ``GET /v1/batches/{id}`` does the real work of the tracker step (store reads,
compare-and-set). What is measured is the gateway, not the engine; Prefect's own API latency
(one ``read_flow_run`` per poll in production) is not part of the figure.

Each client behaves like a batch client (the ``openai`` SDK's poll loop): it polls one of the
running batches every ``--interval`` seconds, lists every 20th turn and creates a batch now and
then; ``--interval 0`` makes the clients hammer the gateway back to back (a saturation test, where
latency is queueing: clients ÷ throughput). Reports p50/p99 of ``GET /v1/batches/{id}`` (target
p99 < 100 ms) and the count of 5xx (target 0).

    python bench/gateway.py                 # 50 clients, 20 running batches, 30 s, a poll every 0.5 s each
    python bench/gateway.py --interval 0    # saturation
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_P99_MS = 100.0


class EmulatedRuns:
    """An orchestrator whose runs write progress into the store like a flow's SLA watch does."""

    def __init__(self, store_root: str, total: int = 20) -> None:
        self.store_root, self.total, self.started = store_root, total, 0
        self.lock = threading.Lock()

    def submit(self, source_uri: str, **params: Any) -> Any:
        from nightshift.core.placement import Placement
        from nightshift.orchestration.submit import Submission

        with self.lock:
            self.started += 1
            n = self.started
        batch_id = params["batch_id"]
        threading.Thread(target=self._run, args=(batch_id,), daemon=True).start()
        placement = Placement(pool="gpu-spot", kind="spot", reason="bench", estimated_seconds=60, remaining_seconds=3600)
        return Submission(
            flow_run_id=f"run-{n}",
            flow_run_name=f"run-{n}",
            deployment="process-batch/spot",
            batch_id=batch_id,
            requests=self.total,
            deadline=params["deadline"],
            placement=placement,
        )

    def _run(self, batch_id: str) -> None:
        folder = Path(self.store_root) / "batches" / batch_id / "v1"
        folder.mkdir(parents=True, exist_ok=True)
        from nightshift.core.progress import assess_progress

        done, started = 0, datetime.now(UTC)
        while True:  # runs until the process ends: the bench measures while batches are running
            done = min(done + 1, self.total - 1)
            progress = assess_progress(
                batch_id=batch_id, version="v1", tier="basic", pool="gpu-spot", total=self.total, completed=done, failed=0,
                now=datetime.now(UTC), deadline=started + timedelta(hours=24), requests_per_second=2.0,
            )  # fmt: skip
            tmp = folder / ".progress.tmp"
            tmp.write_text(progress.model_dump_json())
            tmp.replace(folder / "progress.json")
            time.sleep(0.5)

    def pool_states(self, settings: Any) -> Any:
        from nightshift.core.placement import PoolState

        return (
            PoolState(name="gpu-spot", kind="spot", online_workers=1, requests_per_second=5.0),
            PoolState(name="gpu-dedicated", kind="dedicated", online_workers=1, requests_per_second=5.0),
        )

    def run_state(self, flow_run_id: str) -> Any:
        from nightshift.api.tracker import RunState

        return RunState(flow_run_id=flow_run_id, name="Running", pool="gpu-spot")

    def cancel(self, flow_run_id: str) -> None:
        pass


def serve(home: str, port: int) -> None:
    """The gateway process: the real app with emulated runs."""
    import uvicorn

    from nightshift.api.app import create_app
    from nightshift.settings import ApiConfig, Settings, StorageConfig

    settings = Settings(
        storage=StorageConfig(root=f"{home}/store"),
        api=ApiConfig(database_url=f"sqlite+aiosqlite:///{home}/gateway.db", enterprise_requests_per_hour=10**7),
    )
    app = create_app(settings, orchestrator=EmulatedRuns(settings.storage.root), track_every=10)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def make_key(home: str) -> str:
    """An enterprise key in the bench database."""
    from nightshift.api import db
    from nightshift.api.auth import create_api_key

    async def main() -> str:
        database = db.Database(f"sqlite+aiosqlite:///{home}/gateway.db")
        await database.migrate()
        try:
            async with database.session() as session:
                org = await db.create_org(session, "bench", "enterprise")
                _, secret = await create_api_key(session, org, "bench", tier="enterprise")
                return secret
        finally:
            await database.dispose()

    return asyncio.run(main())


def batch_file(lines: int) -> bytes:
    """A small chat batch."""
    rows = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "hi"}]},
        }
        for i in range(lines)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


async def drive(base: str, key: str, *, clients: int, batches: int, seconds: float, interval: float) -> dict[str, Any]:
    """Create ``batches`` batches, then ``clients`` clients poll, list and create for ``seconds``."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"}
    statuses: dict[int, int] = {}
    latencies: dict[str, list[float]] = {"retrieve": [], "list": [], "create": []}
    limits = httpx.Limits(max_connections=clients + 5, max_keepalive_connections=clients + 5)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30, limits=limits) as client:

        async def timed(kind: str, call: Any) -> httpx.Response:
            t = time.perf_counter()
            response = await call
            latencies[kind].append((time.perf_counter() - t) * 1000)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            return response

        async def create() -> str:
            files = {"file": ("b.jsonl", batch_file(20), "application/jsonl")}
            up = await client.post("/v1/files", data={"purpose": "batch"}, files=files)
            body = {"input_file_id": up.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
            created = await timed("create", client.post("/v1/batches", json=body))
            return str(created.json()["id"])

        ids = [await create() for _ in range(batches)]
        stop = time.monotonic() + seconds

        async def one(n: int) -> None:
            i = n
            await asyncio.sleep(interval * n / clients)  # spread the clients over one interval
            while time.monotonic() < stop:
                turn = time.monotonic()
                i += 1
                if i % 20 == 0:
                    await timed("list", client.get("/v1/batches", params={"limit": 20}))
                elif i % 97 == 0:
                    ids.append(await create())
                else:
                    await timed("retrieve", client.get(f"/v1/batches/{ids[i % len(ids)]}"))
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - turn)))

        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(clients)))
        wall = time.perf_counter() - started

    def pct(values: list[float], q: float) -> float | None:
        if not values:
            return None
        ordered = sorted(values)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    summary = {
        kind: {
            "n": len(v),
            "p50_ms": pct(v, 0.5),
            "p99_ms": pct(v, 0.99),
            "mean_ms": round(statistics.fmean(v), 2) if v else None,
        }
        for kind, v in latencies.items()
    }
    return {
        "latency": summary,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "responses_5xx": sum(v for k, v in statuses.items() if k >= 500),
        "requests_per_second": round(sum(len(v) for v in latencies.values()) / wall, 1),
        "batches": len(ids),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=0.5, help="Seconds between one client's requests (0: back to back).")
    parser.add_argument("--serve", nargs=2, metavar=("HOME", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return
    sys.path.insert(0, str(REPO))
    from nightshift.services import free_port

    home = tempfile.mkdtemp(prefix="nightshift-gateway-bench-")
    key = make_key(home)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    server = subprocess.Popen([sys.executable, __file__, "--serve", home, str(port)], env=env, cwd=REPO)
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/files", timeout=1).status_code == 401:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the gateway did not start")
            time.sleep(0.2)
        result = asyncio.run(
            drive(
                f"http://127.0.0.1:{port}",
                key,
                clients=args.clients,
                batches=args.batches,
                seconds=args.seconds,
                interval=args.interval,
            )
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    p99 = result["latency"]["retrieve"]["p99_ms"]
    report = {
        "bench": "gateway",
        "at": datetime.now().isoformat(timespec="seconds"),
        "clients": args.clients,
        "running_batches": args.batches,
        "seconds": args.seconds,
        "interval_s": args.interval,
        "offered_rps": round(args.clients / args.interval, 1) if args.interval else None,
        "cpus": os.cpu_count(),
        **result,
        "target": {"retrieve_p99_ms": TARGET_P99_MS, "responses_5xx": 0},
        "met": bool(p99 is not None and p99 < TARGET_P99_MS and result["responses_5xx"] == 0),
        "note": "runs emulated by the orchestrator seam (progress.json written every 0.5 s); Prefect API latency excluded",
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"gateway-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

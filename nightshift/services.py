"""Local services for one machine: a Prefect server on loopback, owned and stopped by its caller.

RayTaskRunner must never run against Prefect's ephemeral in-process server (every Ray worker
would start its own, fighting over one SQLite file), so ``nightshift run`` without a configured
``PREFECT_API_URL`` starts a real server here and stops it by its own process group.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from nightshift.runtime import PREFECT_ENV, RAY_ENV


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies, so a killed test run or CLI
    never leaves an orphaned server behind (Linux; elsewhere the context manager's stop is all)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Prefect server exited with {proc.returncode}; see {log}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"Prefect server at {url} not healthy after {timeout:.0f}s; see {log}")


def stop_process_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left after ``grace``."""
    stop_process_groups([proc], grace)


def stop_process_groups(procs: list[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    """Stop several process groups at once: all get SIGTERM first, so their graceful shutdowns
    overlap; whatever is left after ``grace`` gets SIGKILL."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def start_process(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a service in its own process group (so it can be stopped with everything it spawned),
    output appended to ``log``, dying with this process."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            args,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float, what: str, log: Path) -> None:
    """Wait until something listens on 127.0.0.1:``port`` (raises if ``proc`` exits or time runs out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not listening on 127.0.0.1:{port} after {timeout:.0f}s; see {log}")


@contextlib.contextmanager
def local_pushgateway(folder: Path, *, port: int | None = None, timeout: float = 30.0) -> Iterator[str]:
    """A Prometheus Pushgateway (Debian's ``prometheus-pushgateway``) on 127.0.0.1; yields its URL.

    Batch runs push their metrics there (see ``nightshift.telemetry.metrics``); Prometheus scrapes it.
    """
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        raise FileNotFoundError("no prometheus-pushgateway on PATH (apt-get install prometheus-pushgateway)")
    port = port or free_port()
    log = folder / "pushgateway.log"
    proc = start_process([binary, f"--web.listen-address=127.0.0.1:{port}"], dict(os.environ), log)
    try:
        wait_port(port, proc, timeout, "pushgateway", log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(proc)


@contextlib.contextmanager
def local_ray_head(
    temp_dir: Path, *, num_cpus: int | None = None, port: int | None = None, timeout: float = 90.0
) -> Iterator[str]:
    """A Ray head node on 127.0.0.1 only (no dashboard, no token auth between our own processes)
    that flow runs join by address, so warm engine actors outlive each run; yields the address.

    ``ray stop`` would stop every Ray on the machine, so this one is stopped by its process group.
    """
    port = port or free_port()
    temp_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **RAY_ENV}  # a loopback head of our own: these values whatever the caller's environment says
    ray_cli = str(Path(sys.executable).with_name("ray"))
    args = [ray_cli, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}"]
    args += ["--include-dashboard=false", f"--temp-dir={temp_dir.absolute()}", "--disable-usage-stats"]
    args.append(f"--ray-client-server-port={free_port()}")  # the default 10001 may be taken by another Ray
    if num_cpus is not None:
        args.append(f"--num-cpus={num_cpus}")
    log = temp_dir / "head.log"
    proc = start_process(args, env, log)
    try:
        wait_port(port, proc, timeout, "Ray head", log)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process_group(proc, grace=15)


def start_worker(pool: str, env: dict[str, str], log: Path, *, query_seconds: float = 2.0) -> subprocess.Popen[bytes]:
    """A Prefect process worker polling ``pool``; it runs each flow run as a subprocess from its cwd."""
    env = {**env, "PREFECT_WORKER_QUERY_SECONDS": str(query_seconds)}
    args = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process", "--name", f"{pool}-worker"]
    return start_process(args, env, log)


@contextlib.contextmanager
def local_prefect_server(
    home: Path,
    *,
    port: int | None = None,
    ui: bool = True,
    timeout: float = 120.0,
    database_url: str | None = None,
    while_starting: Callable[[], None] | None = None,
) -> Iterator[str]:
    """Run ``prefect server start`` on 127.0.0.1 with its own home; yield its API URL.

    The database is SQLite in ``home`` unless ``database_url`` names another (PostgreSQL:
    ``postgresql+asyncpg://user:pass@host/db``). ``while_starting`` runs in this thread while the
    server boots (services spawned from a thread that ends would die with it: see
    ``_die_with_parent``), so a cold command pays two start-ups side by side.
    """
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        **({"PREFECT_API_DATABASE_CONNECTION_URL": database_url} if database_url else {}),
        **PREFECT_ENV,
        "PREFECT_HOME": str(home.absolute()),
        "PREFECT_UI_ENABLED": "true" if ui else "false",
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
    }
    log = home / "server.log"
    args = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    proc = start_process(args, env, log)
    try:
        if while_starting is not None:
            while_starting()
        _wait_healthy(url, proc, timeout, log)
        yield url
    finally:
        stop_process_group(proc)


class AlertSink:
    """A webhook receiver on 127.0.0.1 for local runs: every POSTed alert is appended to a JSONL
    file (what ``nightshift alerts tail`` reads). Stands in for Slack or a pager on one machine;
    the automations post to it exactly as they would to a real webhook."""

    def __init__(self, path: Path, port: int | None = None) -> None:
        import http.server
        import json
        import threading

        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = threading.Lock()
        sink = self

        class _Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    alert = json.loads(raw)
                except ValueError:
                    alert = {"raw": raw.decode(errors="replace")}
                with lock, open(sink.path, "a") as f:
                    f.write(json.dumps({"received_at": time.time(), **alert}) + "\n")
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:  # quiet: the file is the log
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port or 0), _Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self._server.serve_forever, name="alert-sink", daemon=True)

    def __enter__(self) -> AlertSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def local_postgres(folder: Path, *, port: int | None = None, user: str = "nightshift", timeout: float = 60.0) -> Iterator[str]:
    """A throwaway PostgreSQL cluster in ``folder`` on 127.0.0.1 (trust auth, loopback only);
    yields ``host:port``. Needs ``initdb``/``postgres`` on PATH; as root (which PostgreSQL refuses)
    the server runs as ``nobody``, so ``folder`` must be reachable by it (not under a private dir)."""
    import shutil

    if not (shutil.which("initdb") and shutil.which("postgres")):
        raise FileNotFoundError("PostgreSQL server binaries (initdb, postgres) are not on PATH")
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    as_user: list[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "nobody", "--"]
        shutil.chown(folder, user="nobody")
    data = folder / "data"
    if not data.exists():
        subprocess.run(
            [*as_user, "initdb", "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
    log = folder / "postgres.log"
    if as_user:
        log.touch()
        shutil.chown(log, user="nobody")
    args = [*as_user, "postgres", "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(folder)]
    proc = start_process(args, dict(os.environ), log)
    try:
        wait_port(port, proc, timeout, "PostgreSQL", log)
        yield f"127.0.0.1:{port}"
    finally:
        stop_process_group(proc, grace=15)

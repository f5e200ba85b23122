"""Starting a live gateway (`nightshift serve`) and running CLI commands for gateway tests."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from nightshift.services import start_process


def cli(env: dict[str, str], *args: str) -> str:
    """``nightshift ARGS`` in a subprocess; its stdout (fails the test on a non-zero exit)."""
    run = subprocess.run([sys.executable, "-m", "nightshift.cli", *args], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def start_gateway(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    """``nightshift serve`` on 127.0.0.1:port, once /health answers 200."""
    proc = start_process([sys.executable, "-m", "nightshift.cli", "serve", "--port", str(port)], env, log)
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.3)

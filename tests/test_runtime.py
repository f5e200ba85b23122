"""The runtime environment is defined once (nightshift/runtime.py): the Makefile exports exactly
those defaults, read with the system Python before any venv exists, and an operator's value wins."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nightshift.runtime import RUNTIME_ENV, apply_defaults

REPO = Path(__file__).resolve().parents[1]


def _make_env(**environ: str) -> dict[str, str]:
    """The environment ``make`` gives its recipes, started from a bare environment (no venv on PATH)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    python = Path(sys.base_prefix) / "bin" / "python3"  # the interpreter the venv was made from
    bare = {"PATH": "/usr/bin:/bin", "PYTHON": str(python), **environ}
    out = subprocess.run(
        ["make", "-s", "--no-print-directory", "--eval", "show-env: ; @env", "show-env"],
        cwd=REPO,
        env=bare,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_the_makefile_exports_the_runtime_defaults_without_a_venv():
    env = _make_env()
    assert {k: env.get(k) for k in RUNTIME_ENV} == RUNTIME_ENV


def test_a_value_the_operator_set_wins_everywhere():
    assert _make_env(RAY_AUTH_MODE="token")["RAY_AUTH_MODE"] == "token"
    environ = {"HF_HUB_OFFLINE": "0"}
    apply_defaults(environ=environ)
    assert environ == RUNTIME_ENV | {"HF_HUB_OFFLINE": "0"}

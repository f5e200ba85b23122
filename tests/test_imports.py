"""The light rings must stay light: the gateway and core start without a GPU stack."""

import subprocess
import sys

import pytest

HEAVY = ("vllm", "torch", "ray", "transformers", "prefect")


@pytest.mark.parametrize(
    "module",
    [
        "nightshift.core",
        "nightshift.settings",
        "nightshift.storage",
        "nightshift.cli",
        "nightshift.api",
        "nightshift.api.app",
        "nightshift.core.runs",
        "nightshift.engine.base",
        "nightshift.runtime",
    ],
)
def test_light_modules_do_not_import_the_gpu_stack(module):
    code = (
        f"import sys, {module}, nightshift.core.validation, nightshift.core.artifacts; "
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing {module} pulled in: {out}"


def test_the_rings_hold():
    """import-linter's contracts in pyproject.toml: imports point inward (cli → flows → tasks →
    adapters → storage → settings → core), core and the gateway never reach the GPU stack."""
    from pathlib import Path

    linter = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(linter)], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout

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
    ],
)
def test_light_modules_do_not_import_the_gpu_stack(module):
    code = (
        f"import sys, {module}, nightshift.core.validation, nightshift.core.artifacts; "
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing {module} pulled in: {out}"

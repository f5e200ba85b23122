"""The environment of a `nightshift up` in tests (the session stack, and tests that start their own)."""

from __future__ import annotations

import os
from pathlib import Path


def up_env(home: Path, store: Path, tiny_model: Path, ray_address: str) -> dict[str, str]:
    """Environment of a `nightshift up` on the session's Ray serving the tiny model (shards of 5)."""
    return {
        **{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},
        "NIGHTSHIFT_HOME": str(home),
        "NIGHTSHIFT_RAY_ADDRESS": ray_address,
        "NIGHTSHIFT_ENGINE_MODEL": str(tiny_model),
        "NIGHTSHIFT_ENGINE_SERVED_MODEL_NAME": "tiny",  # the name tests/batchfiles.py writes in each line
        "NIGHTSHIFT_ENGINE_MAX_MODEL_LEN": "512",
        "NIGHTSHIFT_ENGINE_DEFAULT_MAX_TOKENS": "8",
        "NIGHTSHIFT_STORAGE_ROOT": str(store),
        "NIGHTSHIFT_STORAGE_SHARD_SIZE": "5",
    }

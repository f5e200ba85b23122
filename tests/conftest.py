"""Shared session fixtures: one tiny model, one local Ray, one real Prefect server on loopback.

Everything a test needs is started here, bound to 127.0.0.1, and stopped by its own handle.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from nightshift.runtime import RUNTIME_ENV

# Set before vllm/ray/prefect are imported anywhere in the session: the runtime environment
# (nightshift/runtime.py), whatever the shell running pytest had.
os.environ.update(
    {
        **RUNTIME_ENV,
        # Dummy credentials for the loopback S3 server; set before Ray starts so workers inherit them.
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
)

#: Context length the tests give the tiny model; a prompt over it is an error line.
TEST_MAX_MODEL_LEN = 512


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2-style model with a real BPE tokenizer, built once per session."""
    from nightshift.engine.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2")


@pytest.fixture(scope="session")
def head_dim_16_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's weights read as 4 heads of 16 (2 KV heads): the tensor shapes are the same,
    so transformers loads and runs it, but vLLM's CPU attention has no kernel for head size 16."""
    import json

    path = tmp_path_factory.mktemp("models") / "tiny-qwen2-hd16"
    shutil.copytree(tiny_model, path)
    config = json.loads((path / "config.json").read_text())
    config.update(num_attention_heads=4, num_key_value_heads=2)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One local Ray for the session (prefect-ray's runner reuses a connected Ray)."""
    import ray

    from nightshift.engine.runner import ray_init_kwargs
    from nightshift.settings import RayConfig

    temp = Path("/tmp") / f"ns-ray-{os.getpid()}"  # Ray's socket paths must stay short
    ray.init(**ray_init_kwargs(RayConfig(num_cpus=2, temp_dir=temp)))
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server on 127.0.0.1 for the session, with this process pointed at it.

    It serves the UI too (no measurable start-up cost): the browser test opens the runs it records.
    One server per session, because Prefect's events worker stays bound to the first API it sees.
    """
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from nightshift.services import local_prefect_server

    with (
        local_prefect_server(tmp_path_factory.mktemp("prefect"), ui=True) as url,
        temporary_settings(updates={PREFECT_API_URL: url}),
    ):
        yield url
        APILogHandler().flush()  # ship buffered run logs before the server stops


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-compatible server (moto's server mode) on 127.0.0.1, for the session.

    In its own process, stopped by its process group: moto's server is a Flask app, and Flask's
    request proxies in this process's modules make vLLM's in-process start-up fail ("Working outside
    of application context") when it walks the loaded modules.
    """
    import sys

    from nightshift.services import free_port, start_process, stop_process_group, wait_port

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = start_process([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], dict(os.environ), log)
    try:
        wait_port(port, proc, 60, "moto server", log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a throwaway PostgreSQL cluster, stopped by its own process group."""
    import shutil
    import tempfile

    from nightshift.services import local_postgres

    # Not under pytest's tmp folder: that is private to root, and as root the server runs as nobody.
    folder = Path(tempfile.mkdtemp(prefix="ns-pg-"))
    try:
        server = local_postgres(folder)
        address = server.__enter__()
    except FileNotFoundError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(str(exc))
    try:
        yield address
    finally:
        server.__exit__(None, None, None)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh bucket on the loopback S3 server; returns its s3:// URL."""
    import uuid

    import s3fs

    name = f"ns-{uuid.uuid4().hex[:16]}"
    # No region here: s3fs would send LocationConstraint=us-east-1, which S3 (and moto) refuse.
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    fs.mkdir(name)
    return f"s3://{name}"


@pytest.fixture
def store_root(tmp_path: Path) -> str:
    """An empty local artifact store for one test."""
    return str(tmp_path / "store")


@pytest.fixture
def engine_env(monkeypatch: pytest.MonkeyPatch, tiny_model: Path, store_root: str) -> dict[str, str]:
    """Settings for a flow run on the tiny model, as a deployment would set them (environment)."""
    env = {
        "NIGHTSHIFT_ENGINE_MODEL": str(tiny_model),
        # The name the test batch lines use (tests/batchfiles.py): a line naming another model is refused.
        "NIGHTSHIFT_ENGINE_SERVED_MODEL_NAME": "tiny",
        "NIGHTSHIFT_ENGINE_MAX_MODEL_LEN": str(TEST_MAX_MODEL_LEN),
        "NIGHTSHIFT_ENGINE_DEFAULT_MAX_TOKENS": "8",
        "NIGHTSHIFT_STORAGE_ROOT": store_root,
        "NIGHTSHIFT_STORAGE_SHARD_SIZE": "10",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env

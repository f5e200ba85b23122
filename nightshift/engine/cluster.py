"""What the nodes of a Ray cluster need from the driver: nightshift's code and its version.

A node of a real cluster has the dependencies (its image: Ray, vLLM, torch...) but not this
repository, and the orchestration packages (``flows``, ``tasks``, ``blocks``) are what Prefect's
Ray task runner pickles tasks by reference to. Ray's answer is the job's ``runtime_env``: with
``py_modules`` the driver zips each package once, uploads it to the cluster's object store (cached
by content hash), and every worker of the job imports it from there. In production Ray recommends
baking the code into the image instead; ``RayConfig.code = "installed"`` says it is, and nothing ships.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from nightshift.settings import RayConfig

#: The packages a Ray worker imports: the engine actor (nightshift), the Prefect tasks and flows it
#: unpickles (tasks, flows) and the storage block they read (blocks). ``deployments`` is driver-only.
CODE_PACKAGES = ("nightshift", "flows", "tasks", "blocks")

#: Never shipped (gitignore syntax, as Ray's ``excludes``): bytecode is per interpreter, and
#: editor/packaging leftovers only cost upload time. Tests, .venv, .git and .nightshift are outside
#: the packages, so they are never part of a ``py_modules`` upload in the first place.
EXCLUDES = ["__pycache__/", "*.pyc", "*.pyo", "*.egg-info/", ".DS_Store", "*.swp"]

#: Set on the workers of a job whose code was shipped: the version of that code (see ``code_version``).
VERSION_ENV = "NIGHTSHIFT_CODE_VERSION"

DISTRIBUTION = "nightshift"

log = logging.getLogger(__name__)


def package_dirs() -> list[Path]:
    """Folders of the code packages this process imports (the checkout, or site-packages)."""
    dirs = []
    for name in CODE_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"package {name!r} is not importable here, so it cannot be shipped to Ray", name=name)
        dirs.append(Path(next(iter(spec.submodule_search_locations))).resolve())
    return dirs


def _shipped(path: Path) -> bool:
    return "__pycache__" not in path.parts and path.suffix not in {".pyc", ".pyo", ".swp"} and path.name != ".DS_Store"


@functools.cache
def shipped_version() -> str:
    """``<installed version>+<hash of the shipped sources>``: two drivers with different code (an
    edited checkout, another release) never claim the same version on the workers."""
    digest = hashlib.sha256()
    for folder in package_dirs():
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and _shipped(p.relative_to(folder))):
            digest.update(f"{folder.name}/{path.relative_to(folder).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return f"{installed_version() or '0'}+{digest.hexdigest()[:12]}"


def installed_version() -> str | None:
    """The version of the installed nightshift distribution in this environment, if any."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def code_version() -> str | None:
    """The nightshift version of the code this process runs: the shipped one on the workers of a
    job whose driver shipped its code, else the installed distribution's."""
    return os.environ.get(VERSION_ENV) or installed_version()


def build_runtime_env(config: RayConfig) -> dict[str, Any] | None:
    """The job ``runtime_env`` that brings nightshift's code to a cluster joined by address.

    None for a local Ray (its workers are started from this environment and import the same code)
    and for ``code="installed"`` (the nodes' image has it).
    """
    if config.address is None or config.code == "installed":
        return None
    return {
        "py_modules": [str(d) for d in package_dirs()],
        "excludes": EXCLUDES,
        "env_vars": {VERSION_ENV: shipped_version()},
    }


def node_lost() -> bool:
    """True when the Ray node this driver is attached to is gone: its raylet no longer accepts
    connections on its socket (Ray must be initialized; a Ray Client driver has no node: False).

    Ray ends a driver whose GCS stays unreachable (``gcs_rpc_server_reconnect_timeout_s``), but when
    a new head comes up at the same address first, the driver reconnects to that new GCS, which
    knows neither its node nor its tasks, and waits on them forever. The probe is local on purpose:
    asking the GCS (``ray.nodes()``) while it restarts aborts the process inside Ray.
    """
    import socket

    import ray

    node = getattr(ray._private.worker.global_worker, "node", None)
    path = getattr(node, "raylet_socket_name", None)
    if not path or not hasattr(socket, "AF_UNIX"):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(5)
        try:
            probe.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return True
        except OSError:  # busy or slow: not proof that the node is gone
            return False
    return False


def watch_driver_node(interval: float = 10.0, misses: int = 2) -> threading.Thread:
    """Exit this process once its Ray node has been missing from the cluster ``misses`` checks in a
    row, as Ray exits a driver that lost its GCS: the flow run then ends Crashed (not hung), which
    the preemption automation resumes from the finished shards. One watch per process: a second
    call returns the running one."""
    global _watch
    if _watch is not None and _watch.is_alive():
        return _watch

    def watch() -> None:
        missing = 0
        while True:
            time.sleep(interval)
            missing = missing + 1 if node_lost() else 0
            if missing >= misses:
                log.error("this driver's Ray node left the cluster (head restarted?); exiting so the run can be resumed")
                logging.shutdown()
                os._exit(1)

    _watch = threading.Thread(target=watch, name="ray-node-watch", daemon=True)
    _watch.start()
    return _watch


_watch: threading.Thread | None = None

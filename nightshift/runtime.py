"""The process environment nightshift runs vLLM, Ray and Prefect in, defined once.

These are the variables the libraries read from the environment (at import, or when a process
starts), not settings of nightshift's own (those are ``nightshift.settings``). The engine, the
Ray runner, the services it starts, the tests, the benchmarks and the Makefile all take them
from here: the Makefile before the venv exists, so this module imports the standard library only
(``python3 -m nightshift.runtime --make`` prints the Makefile's defaults).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping

#: vLLM and Hugging Face in an engine process (set before ``import vllm``; see ``prepare_environment``).
ENGINE_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine core in this process: no extra process per actor
    "HF_HUB_OFFLINE": "1",  # weights come from local folders only
    "TOKENIZERS_PARALLELISM": "false",  # no tokenizer thread pool fighting the engine for 2 cores
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}

#: Ray on loopback without token auth between our own processes (Ray 2.60 turns it on by default,
#: and a client and a cluster that disagree fail to connect); no usage reporting.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    # With 127.0.0.1 as node address, keeps Ray from swapping in the host's address and listening on all interfaces.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}

#: A Prefect server of our own: no analytics, no "join the community" modal over the UI.
PREFECT_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
}

#: Everything a process started by ``make``, the tests or the benchmarks runs with. The KV cache
#: size (GiB) fits this 2-core, 24 GiB machine kind; an engine started without it sets it from
#: ``EngineConfig.kv_cache_space_gib``.
RUNTIME_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", **ENGINE_ENV, **RAY_ENV, **PREFECT_ENV}


def apply_defaults(names: Mapping[str, str] = RUNTIME_ENV, environ: MutableMapping[str, str] = os.environ) -> None:
    """Set each of ``names`` in ``environ`` unless already set: an operator's own value wins."""
    for key, value in names.items():
        environ.setdefault(key, value)


def make_defaults(names: Mapping[str, str] = RUNTIME_ENV) -> str:
    """``NAME=value`` pairs on one line, for the Makefile to export as ``?=`` defaults."""
    return " ".join(f"{key}={value}" for key, value in names.items())


if __name__ == "__main__":
    if sys.argv[1:] != ["--make"]:
        sys.exit("usage: python -m nightshift.runtime --make")
    print(make_defaults())

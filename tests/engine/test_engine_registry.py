"""Engines are found by kind in a registry they fill themselves; ``engine/base.py`` imports none of
them (nor vLLM or torch) until a kind is asked for."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_an_engine_module_is_imported_only_when_its_kind_is_asked_for():
    code = (
        "import sys; from nightshift.engine.base import engine_class; "
        "loaded = lambda: sorted(m for m in ('nightshift.engine.vllm_engine', 'nightshift.engine.hf_engine', 'vllm', 'torch') "
        "if m in sys.modules); print(loaded()); cls = engine_class('transformers'); print(cls.__name__, cls.kind, loaded())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["[]", "TransformersEngine transformers ['nightshift.engine.hf_engine']"]


def test_every_configurable_kind_is_registered_and_an_unknown_one_is_refused():
    from typing import get_args

    from nightshift.engine.base import engine_class
    from nightshift.settings import EngineConfig

    kinds = [k for k in get_args(EngineConfig.model_fields["kind"].annotation) if k != "auto"]
    assert {k: engine_class(k).kind for k in kinds} == {k: k for k in kinds}
    with pytest.raises(ValueError, match="unknown engine kind 'onnx'"):
        engine_class("onnx")

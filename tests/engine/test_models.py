"""Tests for nightshift.engine.models: the tiny model, SmolLM2 provisioning and name resolution.

The vLLM tests load real engines on CPU (~15 s each). The SmolLM2 conversion (~25 s plus a
~520 MB folder) is marked slow and runs only with ``-m slow`` or NIGHTSHIFT_RUN_SLOW=1.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nightshift.core.errors import ModelError
from nightshift.engine import models
from nightshift.engine.models import (
    EMBEDDED_MODELS,
    MARKER,
    build_tiny_model,
    provision_smollm2,
    resolve_model,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# vLLM on a 2-CPU box: small KV cache, engine in-process (no fork per LLM), never the hub.
VLLM_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "HF_HUB_OFFLINE": "1",
}


def _snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """Name -> (size, mtime_ns) of every file, to prove a second build touched nothing."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.iterdir())}


def _slow_selected(config: pytest.Config) -> bool:
    # There is no project-wide `-m "not slow"` default, so the slow test opts in by itself.
    markexpr = config.getoption("markexpr") or ""
    return os.environ.get("NIGHTSHIFT_RUN_SLOW") == "1" or "slow" in markexpr.replace("not slow", "")


class _VllmEngine:
    """Load one vLLM engine with VLLM_ENV set, and free it (and the process group) on close."""

    def __init__(self, model_path: Path) -> None:
        self._env = pytest.MonkeyPatch()
        for key, value in VLLM_ENV.items():
            self._env.setenv(key, value)
        from vllm import LLM

        self.llm = LLM(model=str(model_path), dtype="float32", enforce_eager=True, max_model_len=512, seed=0)

    def close(self) -> None:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        # A second LLM in the same process fails if the first one's process group survives.
        del self.llm
        gc.collect()
        cleanup_dist_env_and_memory()
        self._env.undo()


# `tiny_model` is the session fixture in tests/conftest.py (build_tiny_model, seed 0).
@pytest.fixture(scope="module")
def tiny_llm(tiny_model: Path):
    engine = _VllmEngine(tiny_model)
    yield engine.llm
    engine.close()


# --- tiny model -------------------------------------------------------------------------


def test_tiny_model_folder_layout(tiny_model: Path) -> None:
    names = {p.name for p in tiny_model.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", MARKER} <= names
    # No leftover temp sibling from the atomic build.
    assert not [p for p in tiny_model.parent.iterdir() if ".tmp-" in p.name]

    config = json.loads((tiny_model / "config.json").read_text())
    assert config["model_type"] == "qwen2"
    assert (config["hidden_size"], config["num_hidden_layers"]) == (64, 2)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (2, 1)
    assert config["hidden_size"] // config["num_attention_heads"] >= 32
    assert config["max_position_embeddings"] == 2048
    assert config["dtype"] == "float32"
    assert 500 <= config["vocab_size"] <= 1000


def test_tiny_model_tokenizer_and_chat_template(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = json.loads((tiny_model / "config.json").read_text())
    assert len(tokenizer) == config["vocab_size"]
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert config["eos_token_id"] == tokenizer.eos_token_id
    # Byte-level BPE: text far from the training sentences still round-trips.
    text = "Ünïcode, tabs\tand 日本語 survive"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi there"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    # Special tokens are single ids, so the engine can stop on <|im_end|>.
    assert len(tokenizer("<|im_start|><|im_end|>", add_special_tokens=False)["input_ids"]) == 2


def test_tiny_model_build_is_idempotent(tiny_model: Path) -> None:
    before = _snapshot(tiny_model)
    started = time.perf_counter()
    assert build_tiny_model(tiny_model) == tiny_model
    assert time.perf_counter() - started < 0.5
    assert _snapshot(tiny_model) == before


def test_tiny_model_weights_depend_only_on_seed(tmp_path: Path, tiny_model: Path) -> None:
    import torch
    from safetensors.torch import load_file

    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    reference = load_file(tiny_model / "model.safetensors")
    same, different = load_file(again / "model.safetensors"), load_file(other / "model.safetensors")
    assert reference.keys() == same.keys() == different.keys()
    assert all(reference[k].equal(same[k]) for k in reference)
    assert not all(reference[k].equal(different[k]) for k in reference)
    assert {t.dtype for t in reference.values()} == {torch.float32}


def test_tiny_model_rejects_other_seed_on_existing_folder(tiny_model: Path) -> None:
    with pytest.raises(ModelError, match="seed 0, not 7"):
        build_tiny_model(tiny_model, seed=7)


def test_build_refuses_to_overwrite_an_unfinished_folder(tmp_path: Path) -> None:
    target = tmp_path / "half"
    target.mkdir()
    (target / "config.json").write_text("{}")  # looks like a model, but has no marker
    with pytest.raises(ModelError, match="not a complete model folder"):
        build_tiny_model(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half"]


def test_build_replaces_an_empty_folder(tmp_path: Path) -> None:
    target = tmp_path / "empty"
    target.mkdir()
    assert (build_tiny_model(target) / MARKER).is_file()


def test_tiny_model_greedy_output_is_deterministic_in_vllm(tiny_llm) -> None:
    from vllm import SamplingParams

    # ignore_eos: a random model may pick <|im_end|> first; we want a fixed number of tokens.
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    prompts = ["The capital of France is", "Hello, how are you?"]
    first = tiny_llm.generate(prompts, params, use_tqdm=False)
    second = tiny_llm.generate(prompts, params, use_tqdm=False)
    for a, b in zip(first, second, strict=True):
        ids = list(a.outputs[0].token_ids)
        assert len(ids) == 8
        assert ids == list(b.outputs[0].token_ids)
        assert a.outputs[0].text == b.outputs[0].text


def test_tiny_model_chat_in_vllm_uses_the_chatml_template(tiny_llm) -> None:
    from vllm import SamplingParams

    out = tiny_llm.chat([{"role": "user", "content": "Hi"}], SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)
    tokenizer = tiny_llm.get_tokenizer()
    expected = tokenizer("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    assert list(out[0].prompt_token_ids) == expected["input_ids"]
    assert 1 <= len(out[0].outputs[0].token_ids) <= 4


# --- resolve_model ----------------------------------------------------------------------


def test_resolve_model_rejects_unknown_names() -> None:
    with pytest.raises(ModelError) as err:
        resolve_model("Qwen/Qwen2.5-0.5B-Instruct", Path("/nonexistent-cache"))
    message = str(err.value)
    assert "hub" in message
    assert "smollm2-135m-instruct" in message
    assert "local" in message


def test_resolve_model_returns_a_local_folder_as_is(tiny_model: Path, tmp_path: Path) -> None:
    assert resolve_model(str(tiny_model), tmp_path / "cache") == tiny_model
    assert not (tmp_path / "cache").exists()


def test_resolve_model_rejects_a_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="config.json"):
        resolve_model(str(tmp_path), tmp_path / "cache")


def test_resolve_model_provisions_embedded_names_into_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[Path] = []

    def fake_provision(cache: Path) -> Path:
        calls.append(cache)
        return cache / "x"

    monkeypatch.setitem(EMBEDDED_MODELS, "smollm2-135m-instruct", fake_provision)
    assert resolve_model("smollm2-135m-instruct", tmp_path) == tmp_path / "x"
    assert calls == [tmp_path]


def test_provision_smollm2_without_the_package_raises_model_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(models, "SMOLLM2_PACKAGE", "nightshift_no_such_package")
    monkeypatch.setattr(models, "SMOLLM2_DISTRIBUTION", "nightshift-no-such-package")
    with pytest.raises(ModelError, match="pip install"):
        provision_smollm2(tmp_path)
    assert not any(tmp_path.iterdir())


def test_importing_models_does_not_import_torch() -> None:
    code = "import sys, nightshift.engine.models; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --- SmolLM2 (slow) ---------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_converts_once_and_answers_in_vllm(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not _slow_selected(request.config):
        pytest.skip("slow: run with -m slow or NIGHTSHIFT_RUN_SLOW=1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from vllm import SamplingParams

    path = resolve_model("smollm2-135m-instruct", tmp_path)
    assert path == tmp_path / "smollm2-135m-instruct"
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "float32"

    before = _snapshot(path)
    started = time.perf_counter()
    assert provision_smollm2(tmp_path) == path
    assert time.perf_counter() - started < 0.5
    assert _snapshot(path) == before

    engine = _VllmEngine(path)
    try:
        out = engine.llm.chat(
            [{"role": "user", "content": "What is the capital of France?"}],
            SamplingParams(temperature=0.0, max_tokens=32),
            use_tqdm=False,
        )
    finally:
        engine.close()
    assert "paris" in out[0].outputs[0].text.lower()
    assert out[0].outputs[0].finish_reason == "stop"  # stops on <|im_end|>, not max_tokens


def test_the_model_hash_is_remembered_until_a_file_changes(tmp_path):
    import fsspec

    from nightshift.core.hashing import sha256_tree
    from nightshift.engine.models import TREE_MEMO, model_sha256

    folder = tmp_path / "m"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "sub" / "weights.bin").write_bytes(b"\x00" * 1000)
    first = model_sha256(folder)
    assert first == sha256_tree(fsspec.filesystem("file"), str(folder))  # the same hash, not a new kind
    memo = json.loads((folder / TREE_MEMO).read_text())
    # The memo is what answers while nothing changed (a doctored one shows it is read, not recomputed).
    (folder / TREE_MEMO).write_text(json.dumps({**memo, "sha256": "remembered"}))
    assert model_sha256(folder) == "remembered"
    (folder / "sub" / "weights.bin").write_bytes(b"\x01" * 1001)
    changed = model_sha256(folder)
    assert changed not in (first, "remembered")
    assert changed == sha256_tree(fsspec.filesystem("file"), str(folder))

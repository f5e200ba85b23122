"""Tiny LoRA adapters of the tiny test model, made with ``peft``, and vLLM's own LoRA path as the
reference their answers through nightshift must equal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

#: The modules of the tiny Qwen2 an adapter changes: every projection vLLM's LoRA layers cover.
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_tiny_lora(base: Path, path: Path, *, seed: int, rank: int = 8) -> Path:
    """A PEFT LoRA adapter of ``base`` at ``path`` whose ``lora_B`` weights are random and non-zero
    (a fresh adapter's are zero, which would answer exactly as the base model does)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if (path / "adapter_config.json").is_file():
        return path
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGET_MODULES, lora_dropout=0.0, bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, config)
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.data.normal_(0.0, 0.3)
    peft_model.save_pretrained(path)
    return path


#: vLLM alone (no nightshift code) in a clean process: greedy chat answers with each LoRA adapter.
REFERENCE = """
import json, sys
from vllm import LLM, SamplingParams
from vllm.lora.request import LoRARequest
model, adapters, prompts, max_tokens = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=512, seed=0, enable_lora=True, max_lora_rank=8)
params = SamplingParams(temperature=0, max_tokens=max_tokens)
conversations = [[{"role": "user", "content": p}] for p in prompts]
answers = {}
for i, (name, path) in enumerate(sorted(adapters.items()), start=1):
    outs = llm.chat(conversations, params, use_tqdm=False, lora_request=LoRARequest(name, i, path))
    answers[name] = [o.outputs[0].text for o in outs]
print(json.dumps(answers))
"""


def vllm_lora_answers(model: Path, adapters: dict[str, Path], prompts: list[str], max_tokens: int) -> dict[str, list[str]]:
    """vLLM's own greedy answers to ``prompts`` with each adapter, by adapter name."""
    args = [str(model), json.dumps({k: str(v) for k, v in adapters.items()}), json.dumps(prompts), str(max_tokens)]
    out = subprocess.run([sys.executable, "-c", REFERENCE, *args], capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])

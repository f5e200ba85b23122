"""Scheduling bench: what knowing the whole batch buys over raw vLLM (issue 17's figures).

Three figures, each against raw vLLM measured in the same run on the same prompts:
  (1) shared prefix  a shuffled document-QA batch (D documents × Q questions, each prompt ≥ 500 tokens):
      nightshift on a warm stack (prefix order on) ÷ raw ``LLM.chat`` in file order (generation only,
      and engine start + generation). Target ≥ 1.5.
  (2) small batch    a 10-line batch on a warm stack, flow call to published output file. Target ≤ 5 s.
  (3) deadlines      an enterprise batch sent while a 1,000-line free batch runs on the same engine:
      its completion time ÷ its time alone on the idle engine. Target ≤ 1.5.

Paths run in their own subprocesses one after another (they never share the 2 CPUs): raw first, then
nightshift against a Prefect server on loopback and a local Ray (one engine actor serves all runs).

Usage (from the repo root, in the venv):
    python bench/scheduling.py                  # SmolLM2-135M (~10-15 min)
    python bench/scheduling.py --tiny --docs 4 --questions 5 --free 100   # smoke run
Figures go to bench/results/scheduling-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput as tp  # noqa: E402 - the shared bench helpers (paths, workers, foreign-load accounting)

REPO, BENCH_HOME, RESULTS_DIR = tp.REPO, tp.BENCH_HOME, tp.RESULTS_DIR

# fmt: off
SUBJECTS = ["river", "harbour", "orchard", "railway", "observatory", "bakery", "glacier", "library", "vineyard", "lighthouse",
            "market", "forest", "mine", "bridge", "monastery", "canal", "desert", "island", "factory", "theatre",
            "airport", "castle", "farm", "garden", "hospital", "museum", "port", "school", "stadium", "village",
            "volcano", "workshop"]
FACTS = ["was founded {n} years ago by a guild of {who}", "employs {n} people who mostly work {when}",
         "is known for a festival held every {when}", "keeps records written by {who} over {n} winters",
         "was rebuilt after a flood that reached {n} metres", "sells {n} kinds of goods made by {who}",
         "is visited by {n} travellers each {when}", "was mapped by {who} using {n} survey stakes"]
WHO = ["weavers", "monks", "sailors", "engineers", "farmers", "clockmakers", "merchants", "miners"]
WHEN = ["spring", "at night", "in the dry season", "on market days", "after harvest", "in winter"]
QUESTIONS = ["How old is it?", "Who founded it?", "How many people work there?", "When is the festival?",
             "What happened in the flood?", "Who visits it?", "What does it sell?", "Who mapped it?",
             "What is it known for?", "Summarise it in five words.", "Is it busy in winter?", "What records exist?",
             "Name one trade there.", "What season matters most?", "Give one number from the text.",
             "Who keeps the records?", "What was rebuilt?", "How many kinds of goods?", "Who are the travellers?",
             "What is unusual about it?", "Would you visit it?", "What is its oldest fact?"]
# fmt: on


def document(d: int, sentences: int) -> str:
    """A deterministic made-up document about subject ``d`` (≈ 12 tokens per sentence)."""
    rng = random.Random(d)
    name = f"The {SUBJECTS[d % len(SUBJECTS)]} of site {d}"
    parts = [
        f"{name} " + rng.choice(FACTS).format(n=rng.randint(2, 900), who=rng.choice(WHO), when=rng.choice(WHEN)) + "."
        for _ in range(sentences)
    ]
    return " ".join(parts)


def doc_qa_batch(docs: int, questions: int, sentences: int, model_name: str, max_tokens: int) -> list[dict[str, Any]]:
    """docs × questions chat requests (document first, then the question), shuffled as a real batch file arrives."""
    pairs = [(d, q) for d in range(docs) for q in range(questions)]
    random.Random(17).shuffle(pairs)
    rows = []
    for i, (d, q) in enumerate(pairs):
        question = QUESTIONS[q % len(QUESTIONS)]
        content = f"Read the document and answer briefly.\n\nDocument:\n{document(d, sentences)}\n\nQuestion: {question}"
        rows.append(
            {
                "custom_id": f"doc{d:02d}-q{q:02d}-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model_name,
                    "messages": [{"role": "user", "content": content}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                },
            }
        )
    return rows


# --------------------------------------------------------------------------- workers (subprocesses)


def worker_raw(job: dict[str, Any]) -> dict[str, Any]:
    """Raw ``LLM.chat`` on the document-QA batch in file order: engine start and generation timed apart."""
    from vllm import LLM, SamplingParams

    rows = tp.read_jsonl(Path(job["prefix_input"]))
    t = time.perf_counter()
    llm = LLM(model=job["model_path"], dtype="float32", enforce_eager=True, max_model_len=2048, max_num_seqs=256, seed=0)
    start_s = time.perf_counter() - t
    t = time.perf_counter()
    outs = llm.chat(
        [r["body"]["messages"] for r in rows], SamplingParams(temperature=0, max_tokens=job["max_tokens"]), use_tqdm=False
    )
    generation_s = time.perf_counter() - t
    return {
        "start_s": start_s,
        "generation_s": generation_s,
        "outputs": len(outs),
        "prompt_tokens": sum(len(o.prompt_token_ids or []) for o in outs),
        "min_prompt_tokens": min(len(o.prompt_token_ids or []) for o in outs),
        "cached_prompt_tokens": sum(o.num_cached_tokens or 0 for o in outs),
        "texts": {r["custom_id"]: o.outputs[0].text for r, o in zip(rows, outs, strict=True)},
    }


def worker_nightshift(job: dict[str, Any]) -> dict[str, Any]:
    """The three nightshift figures on one warm stack (one Ray, one engine actor, one Prefect server)."""
    import ray

    from flows.batch import BatchRunParameters, process_batch
    from nightshift.core.runs import BatchRunContext
    from nightshift.engine.runner import ray_init_kwargs
    from nightshift.settings import Settings

    ray.init(**ray_init_kwargs(Settings().ray))
    stamp = job["stamp"]

    def run(key: str, batch_id: str, tier: str = "basic", context: BatchRunContext | None = None) -> dict[str, Any]:
        t = time.perf_counter()
        # No request cache: runs of the same file must reach the engine every time.
        params = BatchRunParameters(input_uri=job[key], batch_id=f"{batch_id}-{stamp}", tier=tier, use_cache=False)
        result = process_batch(params, context)
        wall = time.perf_counter() - t
        manifest = json.loads(Path(result.manifest_uri.removeprefix("file://")).read_text())
        finished = time.perf_counter()
        return {
            "wall_s": wall,
            "finished_at": finished,
            "timings": manifest["timings"],
            "prefix_cache": manifest.get("prefix_cache"),
            "request_counts": result.request_counts.model_dump(),
            "sla_met": result.sla.met,
            "output_uri": result.output_uri,
        }

    try:
        out: dict[str, Any] = {"warmup": run("small_input", "warmup")}  # starts the engine actor
        out["small"] = [run("small_input", f"small{i}") for i in range(3)]  # a new batch id each time: no reuse
        prefix = run("prefix_input", "prefix")
        prefix["texts"] = {
            o["custom_id"]: o["response"]["body"]["choices"][0]["message"]["content"]
            for o in tp.read_jsonl(Path(prefix.pop("output_uri").removeprefix("file://")))
        }
        out["prefix"] = prefix
        out["enterprise_alone"] = run("ent_input", "ent-alone", tier="enterprise")
        # The free batch runs in a thread; the enterprise batch is sent once the free one is on the engine.
        free: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: free.update(run("free_input", "free", tier="free")))
        started = time.perf_counter()
        thread.start()
        store = Path(Settings().storage.root)
        while not list(store.glob(f"batches/free-{stamp}/*/shards/*.results.jsonl")) and thread.is_alive():
            time.sleep(0.2)
        sent = time.perf_counter()
        out["enterprise_behind_free"] = run("ent_input", "ent-behind", tier="enterprise")
        thread.join()
        out["free"] = free
        out["enterprise_sent_after_free_s"] = sent - started
        out["enterprise_finished_before_free"] = out["enterprise_behind_free"]["finished_at"] < free["finished_at"]
    finally:
        ray.shutdown()
    return out


WORKERS = {"raw": worker_raw, "nightshift": worker_nightshift}


# --------------------------------------------------------------------------- parent


def main(args: argparse.Namespace) -> None:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    workdir = BENCH_HOME / f"scheduling-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    model_path = tp.resolve_model_path(args)
    name = "tiny" if args.tiny else args.model
    sentences = 45 if not args.tiny else 10
    files = {
        "prefix_input": doc_qa_batch(args.docs, args.questions, sentences, name, args.max_tokens),
        "small_input": tp.make_requests(10, "a", name, args.max_tokens),
        "ent_input": tp.make_requests(args.enterprise, "b", name, args.max_tokens),
        "free_input": tp.make_requests(args.free, "a", name, args.max_tokens),
    }
    job: dict[str, Any] = {"stamp": stamp, "model_path": str(model_path), "model_name": name, "max_tokens": args.max_tokens}
    for key, rows in files.items():
        path = workdir / f"{key}.jsonl"
        tp.write_jsonl(path, rows)
        job[key] = str(path)

    load = tp.ForeignLoad()
    try:
        quiet_raw = load.wait_quiet(args.wait_quiet)
        raw = tp.run_worker("raw", job, workdir, tp.child_env(), Path(__file__).resolve())
        raw_load = load.take()
        from nightshift.services import local_prefect_server

        env = {
            "NIGHTSHIFT_ENGINE_MODEL": str(model_path),
            "NIGHTSHIFT_ENGINE_SERVED_MODEL_NAME": name,
            "NIGHTSHIFT_ENGINE_MAX_MODEL_LEN": "2048",
            "NIGHTSHIFT_STORAGE_ROOT": str(workdir / "store"),
            "NIGHTSHIFT_HOME": str(REPO / ".nightshift"),
            "NIGHTSHIFT_RAY_TEMP_DIR": str(BENCH_HOME / "ray"),
            "PREFECT_HOME": str(BENCH_HOME / "prefect"),
        }
        quiet_ns = load.wait_quiet(args.wait_quiet)
        with local_prefect_server(BENCH_HOME / "prefect", ui=False) as url:
            ns_env = tp.child_env({**env, "PREFECT_API_URL": url})
            ns = tp.run_worker("nightshift", job, workdir, ns_env, Path(__file__).resolve())
        ns_load = load.take()
    finally:
        load.close()

    n_prefix = len(files["prefix_input"])
    prefix = ns["prefix"]
    same = sum(raw["texts"].get(k) == v for k, v in prefix["texts"].items())
    raw_gen_rps = n_prefix / raw["generation_s"]
    raw_cold_rps = n_prefix / (raw["start_s"] + raw["generation_s"])
    ns_rps = n_prefix / prefix["wall_s"]
    summary = {
        "shared_prefix": {
            "requests": n_prefix,
            "documents": args.docs,
            "questions_per_document": args.questions,
            "min_prompt_tokens": raw["min_prompt_tokens"],
            "raw_file_order_req_per_s_generation": raw_gen_rps,
            "raw_file_order_req_per_s_start_plus_generation": raw_cold_rps,
            "raw_prefix_cache_hit_rate": raw["cached_prompt_tokens"] / raw["prompt_tokens"],
            "nightshift_warm_req_per_s": ns_rps,
            "nightshift_prefix_cache": prefix["prefix_cache"],
            "ratio_nightshift_warm / raw_generation": ns_rps / raw_gen_rps,
            "ratio_nightshift_warm / raw_start_plus_generation": ns_rps / raw_cold_rps,
            "greedy_equal_raw": f"{same}/{n_prefix}",
            "target": ">= 1.5",
        },
        "small_batch_10_lines_warm_s": [round(r["wall_s"], 2) for r in ns["small"]],
        "small_batch_target": "<= 5 s",
        "deadlines": {
            "enterprise_requests": args.enterprise,
            "free_requests": args.free,
            "enterprise_alone_s": ns["enterprise_alone"]["wall_s"],
            "enterprise_behind_free_s": ns["enterprise_behind_free"]["wall_s"],
            "ratio_behind / alone": ns["enterprise_behind_free"]["wall_s"] / ns["enterprise_alone"]["wall_s"],
            "enterprise_finished_before_free": ns["enterprise_finished_before_free"],
            "free_wall_s": ns["free"]["wall_s"],
            "free_sla_met": ns["free"]["sla_met"],
            "target": "<= 1.5",
        },
    }
    record = {
        "bench": "scheduling",
        "stamp": stamp,
        "model": name,
        "max_tokens": args.max_tokens,
        "git": tp.git_state(),
        "summary": summary,
        "load": {"raw": {**quiet_raw, **raw_load}, "nightshift": {**quiet_ns, **ns_load}},
        "raw": {k: v for k, v in raw.items() if k != "texts"},
        "nightshift": {k: (tp.strip_texts(v) if isinstance(v, dict) else v) for k, v in ns.items()},
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"scheduling-{stamp}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(json.dumps(summary, indent=2, default=str))
    print(f"results: {path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (a ``--worker`` run is a subprocess of the bench itself)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="embedded model name or HF model folder")
    p.add_argument("--tiny", action="store_true", help="use the tiny random model (smoke run)")
    p.add_argument("--max-tokens", type=int, default=16, help="completion tokens per request (default 16)")
    p.add_argument("--docs", type=int, default=30, help="documents in the shared-prefix batch (default 30)")
    p.add_argument("--questions", type=int, default=20, help="questions per document (default 20)")
    p.add_argument("--free", type=int, default=1000, help="lines of the free batch (default 1000)")
    p.add_argument("--enterprise", type=int, default=50, help="lines of the enterprise batch (default 50)")
    p.add_argument("--wait-quiet", type=float, default=120, help="seconds to wait for other jobs to calm down")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--job", help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    tp.entry(parse_args(), WORKERS, main)

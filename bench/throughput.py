"""Throughput bench: the same N greedy chat requests through raw vLLM, vLLM's run_batch and nightshift.

Paths, each in its own subprocess, one after another (they never share the 2 CPUs):
  (a) raw   ``vllm.LLM(...).chat(all N requests)`` in one process; engine start and generation timed apart;
      then batch B on the same engine, the like-for-like baseline of the warm run below.
  (b) run_batch  ``python -m vllm.entrypoints.openai.run_batch`` on the same JSONL; wall time of the process.
  (c) nightshift  ``flows.batch.process_batch`` against a real Prefect server on loopback and a local Ray,
      run twice in one process on two different files of N requests: "cold" (engine actor start
      included) then "warm" (the named engine actor is reused).

Target: nightshift ≥ 0.9× raw vLLM throughput for N ≥ 1000, i.e. warm flow req/s ≥ 0.9× raw generation
req/s on the same batch B, and cold flow req/s ≥ 0.9× raw (engine start + generation) req/s.

Usage (from the repo root, in the venv):
    python bench/throughput.py                 # SmolLM2-135M, N=1000, 32 new tokens (~10-15 min)
    python bench/throughput.py --tiny --n 50   # tiny random model: a smoke run in ~2 min
Figures go to bench/results/throughput-<timestamp>.json; temp files to .nightshift/bench/.
The machine may be shared: before each path the bench waits (``--wait-quiet``) for other jobs to calm
down, and it books the CPU time that processes outside its own tree used during each path
(``foreign_load``); figures taken with more than 0.1 foreign cores are flagged as skewed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nightshift.runtime import RUNTIME_ENV

REPO = Path(__file__).resolve().parent.parent
BENCH_HOME = REPO / ".nightshift" / "bench"
RESULTS_DIR = REPO / "bench" / "results"

# --------------------------------------------------------------------------- requests

# fmt: off
ROLES = ["data engineer", "nurse", "site reliability engineer", "teacher", "product designer", "accountant", "chef",
         "electrician", "lawyer", "pilot", "plumber"]
SKILLS = ["Python and SQL", "patient care", "Kubernetes on call", "classroom planning", "user research", "tax filing",
          "menu costing", "wiring", "contract review", "night flying", "pipe fitting", "Excel"]
TRAITS = ["calm under pressure", "a fast learner", "detail-oriented", "a strong communicator", "new to the field",
          "a team lead", "self-taught", "bilingual"]
# fmt: on
TEMPLATES = {
    "a": "Rate from 0 to 10 how well candidate #{i}, who has {years} years of {skill} and is {trait}, "
    "fits a {role} job. Answer with the number and one reason.",
    "b": "Candidate {i} is {trait} and brings {years} years of {skill}. On a scale of 0 to 10, "
    "score their fit for a {role} position and give one short reason.",
}


def make_requests(n: int, variant: str, model_name: str, max_tokens: int) -> list[dict[str, Any]]:
    """N varied, deterministic greedy chat requests (candidate scoring); the variant changes the wording."""
    out = []
    for i in range(n):
        content = TEMPLATES[variant].format(
            i=i,
            years=1 + (i * 7) % 25,
            skill=SKILLS[i % len(SKILLS)],
            trait=TRAITS[(i // 3) % len(TRAITS)],
            role=ROLES[(i * 5) % len(ROLES)],
        )
        out.append(
            {
                "custom_id": f"req-{variant}-{i:05d}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model_name,
                    "messages": [
                        {"role": "system", "content": "You are a concise hiring assistant."},
                        {"role": "user", "content": content},
                    ],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                },
            }
        )
    return out


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as JSONL."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def parse_outputs(path: Path) -> dict[str, Any]:
    """Count ok lines, completion tokens and texts of an OpenAI batch output file."""
    texts: dict[str, str] = {}
    tokens = 0
    for line in read_jsonl(path):
        response = line.get("response") or {}
        body = response.get("body") or {}
        if line.get("error") or response.get("status_code") != 200 or not body.get("choices"):
            continue
        texts[line["custom_id"]] = body["choices"][0]["message"]["content"]
        tokens += body["usage"]["completion_tokens"]
    return {"outputs": len(texts), "completion_tokens": tokens, "texts": texts}


# --------------------------------------------------------------------------- workers (subprocesses)


def worker_raw(job: dict[str, Any]) -> dict[str, Any]:
    """(a) vllm.LLM.chat on all requests at once; import, engine start and generation timed apart."""
    t = time.perf_counter()
    from vllm import LLM, SamplingParams

    import_s = time.perf_counter() - t
    requests = read_jsonl(Path(job["input_a"]))
    t = time.perf_counter()
    llm = LLM(model=job["model_path"], dtype="float32", enforce_eager=True, max_model_len=2048, max_num_seqs=256, seed=0)
    start_s = time.perf_counter() - t
    params = SamplingParams(temperature=0, max_tokens=job["max_tokens"])

    def generate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        t = time.perf_counter()
        outs = llm.chat([r["body"]["messages"] for r in rows], params, use_tqdm=False)
        return {
            "generation_s": time.perf_counter() - t,
            "outputs": len(outs),
            "completion_tokens": sum(len(o.outputs[0].token_ids) for o in outs),
            "prompt_tokens": sum(len(o.prompt_token_ids or []) for o in outs),
            "texts": {r["custom_id"]: o.outputs[0].text for r, o in zip(rows, outs, strict=True)},
        }

    # Batch B on the same engine: the like-for-like baseline of nightshift's warm run (other prompts,
    # other output lengths).
    return {"import_s": import_s, "start_s": start_s, **generate(requests), "b": generate(read_jsonl(Path(job["input_b"])))}


def worker_nightshift(job: dict[str, Any]) -> dict[str, Any]:
    """(c) process_batch twice in one process on one local Ray: cold (actor start) then warm (actor reused)."""
    sys.path.insert(0, str(REPO))
    t = time.perf_counter()
    import ray

    from flows.batch import BatchRunParameters, process_batch
    from nightshift.engine.runner import NAMESPACE, ray_init_kwargs
    from nightshift.settings import Settings

    import_s = time.perf_counter() - t
    t = time.perf_counter()
    # Our own Ray: prefect-ray reuses a connected one and does not shut it down after a run.
    ray.init(**ray_init_kwargs(Settings().ray))
    ray_init_s = time.perf_counter() - t
    runs = {}
    try:
        for label, key in (("cold", "input_a"), ("warm", "input_b")):
            params = BatchRunParameters(input_uri=job[key], batch_id=f"bench-{label}-{job['stamp']}")
            t = time.perf_counter()
            result = process_batch(params)
            wall = time.perf_counter() - t
            manifest = json.loads(Path(result.manifest_uri.removeprefix("file://")).read_text())
            parsed = parse_outputs(Path(result.output_uri.removeprefix("file://")))
            runs[label] = {
                "wall_s": wall,
                "infer_s": manifest["timings"].get("infer_s"),
                "timings": manifest["timings"],
                "shard_seconds": [s["seconds"] for s in manifest["shards"]],
                "completion_tokens": result.usage.completion_tokens,
                "prompt_tokens": result.usage.prompt_tokens,
                "request_counts": result.request_counts.model_dump(),
                "engine_requests": result.engine_requests,
                "reused": result.reused,
                "outputs": parsed["outputs"],
                "output_tokens_in_file": parsed["completion_tokens"],
                "texts": parsed["texts"],
            }
        engines = [
            ray.get(ray.get_actor(a["name"], namespace=NAMESPACE).info.remote())
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == NAMESPACE and a["name"].startswith("engine-")
        ]
    finally:
        ray.shutdown()
    return {"import_s": import_s, "ray_init_s": ray_init_s, "runs": runs, "engines": engines}


WORKERS = {"raw": worker_raw, "nightshift": worker_nightshift}


# --------------------------------------------------------------------------- orchestration (parent)


class ForeignLoad:
    """Samples the CPU time of processes outside this bench's process tree (other jobs on the 2 CPUs)."""

    def __init__(self, interval: float = 1.0) -> None:
        import psutil

        self.psutil, self.interval = psutil, interval
        self.me = psutil.Process()
        self.ours: set[int] = {self.me.pid}
        self.last: dict[int, float] = {}
        self.top: dict[str, float] = {}
        self.total_s = self.phase_s = 0.0
        self.phase_started = time.monotonic()
        self.lock, self.stop = threading.Lock(), threading.Event()
        self._sample(first=True)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _sample(self, first: bool = False) -> None:
        """Add the CPU seconds that foreign processes used since the last sample."""
        with self.lock:
            self.ours |= {c.pid for c in self.me.children(recursive=True)}  # sticky: orphans stay ours
            for p in self.psutil.process_iter(["pid", "name", "cpu_times"]):
                times = p.info["cpu_times"]
                if times is None:
                    continue
                total = times.user + times.system
                prev = self.last.get(p.info["pid"])
                self.last[p.info["pid"]] = total
                if first or p.info["pid"] in self.ours:
                    continue
                delta = total - prev if prev is not None else total
                if delta > 0:
                    self.total_s += delta
                    self.phase_s += delta
                    self.top[p.info["name"]] = self.top.get(p.info["name"], 0.0) + delta

    def _loop(self) -> None:
        while not self.stop.wait(self.interval):
            self._sample()

    def wait_quiet(self, max_wait: float, threshold: float = 0.1, window: float = 10.0) -> dict[str, float]:
        """Wait (up to ``max_wait`` s) until other jobs use < ``threshold`` cores over ``window`` s; reset the phase."""
        started = time.monotonic()
        load = 0.0
        while max_wait > 0:
            before = self.total_s
            time.sleep(window)
            self._sample()
            load = (self.total_s - before) / window
            if load < threshold or time.monotonic() - started >= max_wait:
                break
        self.take()
        return {"waited_s": round(time.monotonic() - started, 1), "foreign_cores_before": round(load, 3)}

    def take(self) -> dict[str, Any]:
        """Foreign CPU seconds and mean cores since the last take; resets the phase counters."""
        self._sample()
        with self.lock:
            now = time.monotonic()
            wall = now - self.phase_started
            top = sorted(self.top.items(), key=lambda kv: -kv[1])[:5]
            out = {
                "foreign_cpu_s": round(self.phase_s, 1),
                "foreign_cores": round(self.phase_s / wall, 3) if wall else 0.0,
                "top": {k: round(v, 1) for k, v in top},
            }
            self.phase_s, self.top, self.phase_started = 0.0, {}, now
        return out

    def close(self) -> None:
        """Stop sampling."""
        self.stop.set()
        self.thread.join()


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a path's subprocess: ours plus the runtime environment (nightshift/runtime.py:
    vLLM on CPU in-process, offline, Ray on loopback, quiet), without OMP_NUM_THREADS."""
    env = {**os.environ, **RUNTIME_ENV, **(extra or {})}
    env.pop("OMP_NUM_THREADS", None)  # vLLM binds its OpenMP threads itself only when it is unset
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def run_logged(cmd: list[str], log: Path, env: dict[str, str]) -> float:
    """Run ``cmd`` from the repo root with output to ``log``; return its wall time, raise on failure."""
    t = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{cmd[:4]} exited with {proc.returncode}; see {log}\n{tail}")
    return wall


def run_worker(name: str, job: dict[str, Any], workdir: Path, env: dict[str, str], script: Path | None = None) -> dict[str, Any]:
    """Run one in-Python path (``script --worker NAME``, this bench by default) in its own
    interpreter and return the figures it wrote."""
    job_path, out_path = workdir / f"{name}.job.json", workdir / f"{name}.result.json"
    job_path.write_text(json.dumps({**job, "result": str(out_path)}))
    script = script or Path(__file__).resolve()
    wall = run_logged([sys.executable, str(script), "--worker", name, "--job", str(job_path)], workdir / f"{name}.log", env)
    return {**json.loads(out_path.read_text()), "process_wall_s": wall}


def run_raw(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Path (a)."""
    return run_worker("raw", job, workdir, child_env())


def run_batch(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Path (b): vLLM's own batch runner, timed as a whole process (start included)."""
    out = workdir / "run_batch.output.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.run_batch",
        "-i",
        job["input_a"],
        "-o",
        str(out),
        "--model",
        job["model_path"],
        "--served-model-name",
        job["model_name"],
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "2048",
        "--max-num-seqs",
        "256",
        "--seed",
        "0",
    ]
    wall = run_logged(cmd, workdir / "run_batch.log", child_env())
    return {"wall_s": wall, **parse_outputs(out)}


def run_nightshift(job: dict[str, Any], workdir: Path, shard_size: int) -> dict[str, Any]:
    """Path (c): a Prefect server on loopback for the duration, the flow in its own process."""
    from nightshift.services import local_prefect_server

    env = {
        "NIGHTSHIFT_ENGINE_MODEL": job["model_path"],
        "NIGHTSHIFT_ENGINE_MAX_MODEL_LEN": "2048",
        "NIGHTSHIFT_STORAGE_ROOT": str(workdir / "store"),
        "NIGHTSHIFT_STORAGE_SHARD_SIZE": str(shard_size),
        "NIGHTSHIFT_HOME": str(REPO / ".nightshift"),
        "NIGHTSHIFT_RAY_TEMP_DIR": str(BENCH_HOME / "ray"),  # short: Ray's socket paths must fit 107 bytes
        "PREFECT_HOME": str(BENCH_HOME / "prefect"),
    }
    t = time.perf_counter()
    with local_prefect_server(BENCH_HOME / "prefect", ui=False) as url:
        server_s = time.perf_counter() - t
        figures = run_worker("nightshift", job, workdir, child_env({**env, "PREFECT_API_URL": url}))
    return {**figures, "prefect_server_start_s": server_s, "shard_size": shard_size}


# --------------------------------------------------------------------------- report


def rate(count: float, seconds: float | None) -> float | None:
    """count / seconds, or None without a time."""
    return count / seconds if seconds else None


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing."""
    return a / b if a is not None and b else None


def summarize(n: int, raw: dict, rb: dict, ns: dict) -> dict[str, Any]:
    """Rows (req/s, tok/s per path), ratios, output checks and greedy agreement."""
    cold, warm, raw_b = ns["runs"]["cold"], ns["runs"]["warm"], raw["b"]
    rows = {
        "raw_generation": (raw["generation_s"], raw["completion_tokens"], raw["outputs"], "A"),
        "raw_start_plus_generation": (raw["start_s"] + raw["generation_s"], raw["completion_tokens"], raw["outputs"], "A"),
        "raw_generation_b": (raw_b["generation_s"], raw_b["completion_tokens"], raw_b["outputs"], "B"),
        "run_batch_process": (rb["wall_s"], rb["completion_tokens"], rb["outputs"], "A"),
        "nightshift_cold": (cold["wall_s"], cold["completion_tokens"], cold["outputs"], "A"),
        "nightshift_cold_infer_only": (cold["infer_s"], cold["completion_tokens"], cold["outputs"], "A"),
        "nightshift_warm": (warm["wall_s"], warm["completion_tokens"], warm["outputs"], "B"),
        "nightshift_warm_infer_only": (warm["infer_s"], warm["completion_tokens"], warm["outputs"], "B"),
    }
    table = {
        k: {"batch": b, "seconds": s, "requests": c, "completion_tokens": tok, "req_per_s": rate(c, s), "tok_per_s": rate(tok, s)}
        for k, (s, tok, c, b) in rows.items()
    }
    rps = {k: v["req_per_s"] for k, v in table.items()}
    ratios = {
        # Same prompts on both sides of every ratio: the warm run serves batch B.
        "nightshift_warm / raw_generation (batch B)": ratio(rps["nightshift_warm"], rps["raw_generation_b"]),
        "nightshift_cold / (raw start + generation)": ratio(rps["nightshift_cold"], rps["raw_start_plus_generation"]),
        "nightshift_cold / run_batch": ratio(rps["nightshift_cold"], rps["run_batch_process"]),
        "nightshift_warm_infer_only / raw_generation (batch B)": ratio(
            rps["nightshift_warm_infer_only"], rps["raw_generation_b"]
        ),
        "nightshift_cold_infer_only / raw_generation": ratio(rps["nightshift_cold_infer_only"], rps["raw_generation"]),
    }

    def same(got: dict[str, str], want: dict[str, str]) -> int:
        return sum(want.get(k) == v for k, v in got.items())

    checks = {
        "outputs": {
            "raw": raw["outputs"],
            "raw_b": raw_b["outputs"],
            "run_batch": rb["outputs"],
            "nightshift_cold": cold["outputs"],
            "nightshift_warm": warm["outputs"],
        },
        "nightshift_request_counts": {"cold": cold["request_counts"], "warm": warm["request_counts"]},
        "greedy_equal_raw": {
            "nightshift_cold": same(cold["texts"], raw["texts"]),
            "nightshift_warm": same(warm["texts"], raw_b["texts"]),
            "run_batch": same(rb["texts"], raw["texts"]),
        },
        "completion_tokens_equal_raw": {
            "run_batch": rb["completion_tokens"] == raw["completion_tokens"],
            "nightshift_cold": cold["completion_tokens"] == raw["completion_tokens"],
            "nightshift_warm": warm["completion_tokens"] == raw_b["completion_tokens"],
        },
    }
    checks["all_paths_have_n_outputs"] = all(v == n for v in checks["outputs"].values())
    return {"table": table, "ratios": ratios, "checks": checks}


def print_report(summary: dict[str, Any], meta: dict[str, Any], load: dict[str, Any]) -> None:
    """Render the table, ratios, checks and foreign load with rich."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    t = Table(title=f"throughput — {meta['model_name']}, N={meta['n']}, max_tokens={meta['max_tokens']}")
    for col in ("path", "batch", "seconds", "requests", "completion tokens", "req/s", "tok/s"):
        t.add_column(col, justify="left" if col == "path" else "right")
    for name, row in summary["table"].items():
        t.add_row(
            name,
            row["batch"],
            f"{row['seconds']:.1f}",
            str(row["requests"]),
            str(row["completion_tokens"]),
            f"{row['req_per_s']:.2f}",
            f"{row['tok_per_s']:.1f}",
        )
    console.print(t)
    r = Table(title="ratios of req/s (target ≥ 0.90)")
    r.add_column("ratio")
    r.add_column("value", justify="right")
    for name, value in summary["ratios"].items():
        style = "green" if value is not None and value >= 0.9 else "red"
        r.add_row(name, f"[{style}]{value:.3f}[/{style}]" if value is not None else "-")
    console.print(r)
    c, n = summary["checks"], meta["n"]
    outs = ", ".join(f"{k} {v}" for k, v in c["outputs"].items())
    same = ", ".join(f"{k} {v}/{n}" for k, v in c["greedy_equal_raw"].items())
    console.print(f"outputs: {outs} (all N: {c['all_paths_have_n_outputs']})\ngreedy outputs equal to raw: {same}")
    busy = {k: v["foreign_cores"] for k, v in load.items()}
    flag = "[red]figures skewed by other jobs[/]" if max(busy.values()) > 0.1 else "quiet"
    console.print(f"foreign CPU load (cores) per phase: {busy} → {flag}")


def git_state() -> dict[str, Any]:
    """Commit and dirty files of the repo, for provenance of the figures."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": git("status", "--porcelain").splitlines()}


def resolve_model_path(args: argparse.Namespace) -> Path:
    """The model folder: the tiny model, or an embedded name / folder resolved (and cached) once."""
    from nightshift.engine.models import build_tiny_model, resolve_model

    if args.tiny:
        return build_tiny_model(BENCH_HOME / "tiny").absolute()
    return resolve_model(args.model, REPO / ".nightshift" / "models").absolute()


def strip_texts(d: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``d`` without the (large) per-request output texts."""
    return {k: (strip_texts(v) if isinstance(v, dict) else v) for k, v in d.items() if k != "texts"}


def main(args: argparse.Namespace) -> None:
    """Prepare inputs, run the three paths one after another, report and save the figures."""
    from rich.console import Console

    console = Console(width=120)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    workdir = BENCH_HOME / f"throughput-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    model_path = resolve_model_path(args)
    model_name = model_path.name
    job = {"model_path": str(model_path), "model_name": model_name, "max_tokens": args.max_tokens, "stamp": stamp}
    for variant in ("a", "b"):
        path = workdir / f"batch-{variant}.jsonl"
        write_jsonl(path, make_requests(args.n, variant, model_name, args.max_tokens))
        job[f"input_{variant}"] = str(path)

    console.print(f"[bold]model[/] {model_path}  [bold]N[/] {args.n}  [bold]work dir[/] {workdir}")
    monitor, load = ForeignLoad(), {}

    def phase(name: str, title: str, run: Any) -> Any:
        """Wait for the other jobs to calm down, run one path, and book the foreign load it saw."""
        waited = monitor.wait_quiet(args.wait_quiet)
        console.print(f"{title} … (waited {waited['waited_s']:.0f}s for quiet)")
        result = run()
        load[name] = {**monitor.take(), **waited}
        return result

    try:
        raw = phase("raw", "(a) raw vLLM LLM.chat on batch A, then batch B", lambda: run_raw(job, workdir))
        gen_a, gen_b = raw["generation_s"], raw["b"]["generation_s"]
        console.print(f"    start {raw['start_s']:.1f}s, generation A {gen_a:.1f}s, B {gen_b:.1f}s")
        rb = phase("run_batch", "(b) vllm run_batch on batch A", lambda: run_batch(job, workdir))
        console.print(f"    wall {rb['wall_s']:.1f}s")
        ns = phase(
            "nightshift",
            "(c) nightshift process_batch: batch A cold, then batch B warm",
            lambda: run_nightshift(job, workdir, args.shard_size),
        )
        console.print(f"    cold {ns['runs']['cold']['wall_s']:.1f}s, warm {ns['runs']['warm']['wall_s']:.1f}s")
    finally:
        monitor.close()

    meta = {
        "n": args.n,
        "max_tokens": args.max_tokens,
        "model_name": model_name,
        "model_path": str(model_path),
        "tiny": args.tiny,
        "shard_size": args.shard_size,
        "wait_quiet": args.wait_quiet,
        "stamp": stamp,
        "workdir": str(workdir),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "git": git_state(),
    }
    summary = summarize(args.n, raw, rb, ns)
    print_report(summary, meta, load)

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"throughput-{stamp}.json"
    payload = {
        "meta": meta,
        **summary,
        "foreign_load": load,
        "raw": strip_texts(raw),
        "run_batch": strip_texts(rb),
        "nightshift": strip_texts(ns),
    }
    out.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"figures written to {out.relative_to(REPO)}")


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Options every bench script takes: batch size, output length, model."""
    p.add_argument("--n", type=int, default=1000, help="requests per batch (default 1000)")
    p.add_argument("--max-tokens", type=int, default=32, help="completion tokens per request (default 32)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="embedded model name or HF model folder")
    p.add_argument("--tiny", action="store_true", help="use the tiny random model (smoke run)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--shard-size", type=int, default=256, help="nightshift requests per shard (default 256)")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=300.0,
        help="before each path, wait up to this many seconds for other jobs to use < 0.1 CPU (default 300; 0: don't)",
    )
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--job", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def entry(cli: argparse.Namespace, workers: dict[str, Any], run: Any) -> None:
    """A bench's entry point: as ``--worker NAME --job FILE`` (a subprocess the bench started) run
    that path on the job and write its figures where the job says; otherwise run the bench."""
    if cli.worker:
        spec = json.loads(Path(cli.job).read_text())
        Path(spec["result"]).write_text(json.dumps(workers[cli.worker](spec), default=str))
    else:
        run(cli)


if __name__ == "__main__":
    entry(parse_args(), WORKERS, main)

"""Scoring-job tasks: prepare the rows to score, then publish the scored table.

Thin wrappers over ``nightshift.core.scoring`` with the store's I/O; the flow runs the requests
through ``process-batch`` in between, so a scoring job takes the same inference path as a batch.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from pydantic import BaseModel, Field

from nightshift.core.hashing import sha256_bytes, sha256_json
from nightshift.core.scoring import RowError, ScoringJob, parse_answer, plan_increment, render_request, row_hash, validate_table
from nightshift.settings import StorageConfig
from nightshift.storage import ArtifactStore
from nightshift.storage.io import read_uri

#: Columns nightshift adds to every scored row.
META = ["_row_hash", "_scored_in", "_model", "_version"]


class ScoringManifest(BaseModel):
    """One published version of a scoring job's results."""

    job: str
    version: str
    parent_version: str | None
    created_at: datetime
    table: str
    table_sha256: str
    fingerprint: str
    model: str
    rows: int = Field(description="Valid rows in the table (each once in the results).")
    scored: int = Field(description="Rows sent to the model in this run.")
    carried: int = Field(description="Rows whose result was carried over from the parent version.")
    errors: int = Field(description="Invalid rows plus rows whose answer did not fit the schema.")
    results: str
    errors_file: str
    batch_manifest: str | None = Field(default=None, description="The process-batch manifest of the scored rows.")


class PreparedScoring(BaseModel):
    """The rows to score this run, as a batch file, and what is carried over."""

    version: str
    parent_version: str | None
    table_sha256: str
    fingerprint: str
    requests_uri: str | None
    to_score: int
    carried: int
    invalid: list[RowError]
    published: bool = Field(description="This version exists already: nothing to do.")


def _root(store: ArtifactStore, job: ScoringJob) -> str:
    return store.scoring(job.name)


def latest_manifest(store: ArtifactStore, job: ScoringJob) -> ScoringManifest | None:
    """The newest published version of the job, if any."""
    paths = store.fs.glob(f"{_root(store, job)}/*/manifest.json")
    manifests = [ScoringManifest.model_validate_json(store.read_bytes(p)) for p in paths]
    return max(manifests, key=lambda m: m.created_at) if manifests else None


def _read_table(uri: str, storage: StorageConfig) -> tuple[pd.DataFrame, bytes]:
    data = read_uri(uri, **storage.storage_options(uri))
    reader = pd.read_parquet if uri.endswith((".parquet", ".pq")) else pd.read_csv
    return reader(io.BytesIO(data), dtype=object) if reader is pd.read_csv else reader(io.BytesIO(data)), data


@task(name="prepare-scoring", retries=1)
def prepare_scoring(storage: StorageConfig, job: ScoringJob, model_sha256: str) -> PreparedScoring:
    """Validate the table, hash each valid row, and write a batch file of the rows whose hash the
    latest version has not scored yet."""
    log = get_run_logger()
    store = ArtifactStore.from_config(storage)
    df, raw = _read_table(job.table, storage)
    valid, invalid = validate_table(df, job)
    fingerprint = job.fingerprint(model_sha256)
    hashes = {str(r[job.id_column]): row_hash(r, job, fingerprint) for _, r in valid.iterrows()}
    version = sha256_json({"rows": sorted(hashes.items()), "table": sha256_bytes(raw), "job": fingerprint})[:16]
    parent = latest_manifest(store, job)
    if store.exists(f"{_root(store, job)}/{version}/manifest.json"):
        return PreparedScoring(
            version=version,
            parent_version=parent.version if parent else None,
            table_sha256=sha256_bytes(raw),
            fingerprint=fingerprint,
            requests_uri=None,
            to_score=0,
            carried=len(hashes),
            invalid=invalid,
            published=True,
        )
    previous: dict[str, str] = {}
    if parent is not None:
        prev = pd.read_parquet(io.BytesIO(store.read_bytes(parent.results)), columns=[job.id_column, "_row_hash"])
        previous = dict(zip(prev[job.id_column].astype(str), prev["_row_hash"], strict=True))
    to_score, carried = plan_increment(hashes, previous)
    requests_uri = None
    if to_score:
        wanted = set(to_score)
        lines = [json.dumps(render_request(r, job)) for _, r in valid.iterrows() if str(r[job.id_column]) in wanted]
        path = f"{_root(store, job)}/{version}/requests.jsonl"
        store.write_bytes(path, ("\n".join(lines) + "\n").encode())
        requests_uri = store.uri(path)
    log.info("%s: %d rows to score, %d carried over, %d invalid", job.name, len(to_score), len(carried), len(invalid))
    return PreparedScoring(
        version=version,
        parent_version=parent.version if parent else None,
        table_sha256=sha256_bytes(raw),
        fingerprint=fingerprint,
        requests_uri=requests_uri,
        to_score=len(to_score),
        carried=len(carried),
        invalid=invalid,
        published=False,
    )


@task(name="publish-scores", retries=1)
def publish_scores(
    storage: StorageConfig,
    job: ScoringJob,
    prep: PreparedScoring,
    model_name: str,
    output_uri: str | None,
    error_uri: str | None,
    batch_manifest: str | None,
) -> ScoringManifest:
    """Parse the answers, add the carried rows, and write results.parquet, errors.jsonl and the
    manifest (last) of this version."""
    store = ArtifactStore.from_config(storage)
    df, _ = _read_table(job.table, storage)
    valid, _ = validate_table(df, job)
    valid = valid.set_index(valid[job.id_column].astype(str), drop=False)
    root = f"{_root(store, job)}/{prep.version}"
    answers: dict[str, tuple[dict[str, Any] | None, str | None, str | None]] = {}
    for uri in (output_uri, error_uri):
        if not uri:
            continue
        for line in read_uri(uri, **storage.storage_options(uri)).decode().splitlines():
            if not line.strip():
                continue
            out = json.loads(line)
            if out.get("response"):
                text = out["response"]["body"]["choices"][0]["message"]["content"]
                fields, why = parse_answer(text, job.response_schema)
                answers[out["custom_id"]] = (fields, why, text)
            else:
                answers[out.get("custom_id")] = (None, out["error"]["message"], None)
    fields_cols = list(job.response_schema.get("properties", {}))
    records, errors = [], list(prep.invalid)
    for row_id, (fields, why, text) in answers.items():
        if fields is None:
            i = int(valid.index.get_loc(row_id)) if row_id in valid.index else -1
            errors.append(RowError(row_id=row_id, index=i, code="invalid_answer", message=why or "no answer", raw=text))
            continue
        row = valid.loc[row_id].to_dict()
        records.append({**row, **{c: fields.get(c) for c in fields_cols}, "_scored_in": prep.version})
    fingerprint = prep.fingerprint
    scored = pd.DataFrame(records)
    if prep.parent_version is not None:
        parent = ScoringManifest.model_validate_json(store.read_bytes(f"{_root(store, job)}/{prep.parent_version}/manifest.json"))
        prev = pd.read_parquet(io.BytesIO(store.read_bytes(parent.results)))
        prev = prev[prev[job.id_column].astype(str).isin(set(valid.index) - set(answers))]
        scored = pd.concat([prev.drop(columns=["_row_hash", "_model", "_version"], errors="ignore"), scored], ignore_index=True)
    if not scored.empty:
        scored["_row_hash"] = [row_hash(valid.loc[str(i)], job, fingerprint) for i in scored[job.id_column]]
        scored["_model"] = model_name
        scored["_version"] = prep.version
        order = {k: n for n, k in enumerate(valid.index)}
        scored = scored.sort_values(job.id_column, key=lambda s: s.astype(str).map(order)).reset_index(drop=True)
    buf = io.BytesIO()
    scored.to_parquet(buf, index=False)
    store.write_bytes(f"{root}/results.parquet", buf.getvalue())
    store.write_bytes(f"{root}/errors.jsonl", "".join(e.model_dump_json() + "\n" for e in errors).encode())
    manifest = ScoringManifest(
        job=job.name,
        version=prep.version,
        parent_version=prep.parent_version,
        created_at=datetime.now(UTC),
        table=job.table,
        table_sha256=prep.table_sha256,
        fingerprint=fingerprint,
        model=model_name,
        rows=len(scored),
        scored=sum(1 for f, _, _ in answers.values() if f is not None),
        carried=len(scored) - sum(1 for f, _, _ in answers.values() if f is not None),
        errors=len(errors),
        results=f"{root}/results.parquet",
        errors_file=f"{root}/errors.jsonl",
        batch_manifest=batch_manifest,
    )
    store.write_bytes(f"{root}/manifest.json", manifest.model_dump_json(indent=2).encode())
    get_run_logger().info(
        "%s %s: %d scored, %d carried, %d errors", job.name, prep.version, manifest.scored, manifest.carried, manifest.errors
    )
    return manifest

"""The same pipeline with input and results on a real S3-compatible server on loopback."""

from __future__ import annotations

import hashlib
import json
import re

import httpx
import pytest
import s3fs

from nightshift.core.protocol import BatchRequestOutput
from nightshift.settings import StorageConfig
from nightshift.storage import ArtifactStore
from tests.batchfiles import write_batch
from tests.flows.test_process_batch import _artifacts

pytestmark = pytest.mark.usefixtures("ray_session", "prefect_api")


def test_mixed_batch_on_s3_and_hashes_match_what_is_read_back(tmp_path, engine_env, monkeypatch, s3_endpoint, s3_bucket):
    from blocks.storage import NightshiftStorage

    # The store comes from a saved block (root, endpoint, keys); NIGHTSHIFT_STORAGE_ROOT is ignored.
    block = NightshiftStorage(
        root=f"{s3_bucket}/store", endpoint_url=s3_endpoint, access_key_id="testing", secret_access_key="testing"
    )
    block.save("s3-test-store", overwrite=True)
    monkeypatch.setenv("NIGHTSHIFT_STORAGE_BLOCK", "s3-test-store")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    local = tmp_path / "mixed.jsonl"
    write_batch(local, 47, ["invalid_json", "unknown_url", "bad_body"])
    fs.put_file(str(local), f"{s3_bucket}/inputs/mixed.jsonl")

    from flows.batch import BatchRunParameters, process_batch

    result = process_batch(BatchRunParameters(input_uri=f"{s3_bucket}/inputs/mixed.jsonl"))
    assert result.output_uri.startswith(f"{s3_bucket}/store/batches/mixed/")
    out = [json.loads(line) for line in fs.cat_file(result.output_uri).splitlines()]
    err = [json.loads(line) for line in fs.cat_file(result.error_uri).splitlines()]
    assert (len(out), len(err)) == (47, 3)
    ids = [BatchRequestOutput.model_validate(o).custom_id for o in out + err]
    assert len([i for i in ids if i]) == len({i for i in ids if i}) == 49

    manifest = json.loads(fs.cat_file(result.manifest_uri))
    records = [manifest["input"], manifest["output_file"], manifest["error_file"]]
    records += [s["input"] for s in manifest["shards"]] + [s["results"] for s in manifest["shards"]]
    for record in records:
        assert record["path"].startswith("s3://")
        data = fs.cat_file(record["path"])
        assert hashlib.sha256(data).hexdigest() == record["sha256"] and len(data) == record["bytes"]

    # a presigned link downloads the output over plain HTTP
    store = ArtifactStore.from_config(block.to_config(StorageConfig()))
    url = store.sign(result.output_uri, expires_in=60)
    assert "Signature" in url or "X-Amz-Signature" in url
    assert httpx.get(url).content == fs.cat_file(result.output_uri)

    # The run's summary artifact links both files presigned: a user downloads them from the UI.
    summary = _artifacts(result.flow_run_id)["batch-mixed-summary"].data
    links = re.findall(r"\[download\]\((http[^)]+)\)", summary)
    assert len(links) == 2 and all("Signature" in link for link in links)
    assert [httpx.get(link).content for link in links] == [fs.cat_file(result.output_uri), fs.cat_file(result.error_uri)]
    assert "Download links are valid until" in summary and "**Cost** $" in summary

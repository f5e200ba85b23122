"""``/v1/models`` in-process: the catalogue in OpenAI's shape, adapters with their base as ``parent``,
behind the same auth as every gateway route; a bad catalogue stops the gateway at start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai.types import Model

from nightshift.api.app import GatewayConfigError, create_app
from tests.api.gateway_app import Gateway, ScriptedOrchestrator, run_gateway, settings_for

CATALOGUE = {
    "default": "base-a",
    "models": {
        "base-a": {"source": "/srv/weights/a", "adapters": {"a-sql": {"source": "/srv/loras/sql"}}},
        "org/base-b": {"source": "s3://weights/b", "engine": {"max_model_len": 1024}},
    },
}


def _settings(tmp_path: Path, catalogue: object):
    path = tmp_path / "models.yaml"
    path.write_text(catalogue if isinstance(catalogue, str) else json.dumps(catalogue))
    settings = settings_for(tmp_path)
    settings.engine = settings.engine.model_copy(update={"catalogue": str(path)})
    return settings


def test_models_are_listed_in_openais_shape_with_adapters_under_their_base(tmp_path):
    async def body(gw: Gateway) -> None:
        assert (await gw.client.get("/v1/models")).status_code == 401  # auth, as on every route
        listed = await gw.client.get("/v1/models", headers=gw.auth())
        assert listed.status_code == 200
        page = listed.json()
        assert page["object"] == "list"
        models = [Model.model_validate(m) for m in page["data"]]
        assert [m.id for m in models] == ["base-a", "org/base-b", "a-sql"]
        assert {m.object for m in models} == {"model"} and {m.owned_by for m in models} == {"nightshift"}
        by_id = {m["id"]: m for m in page["data"]}
        assert (by_id["a-sql"]["parent"], by_id["a-sql"]["root"]) == ("base-a", "base-a")
        assert (by_id["base-a"]["parent"], by_id["base-a"]["root"]) == (None, "base-a")
        assert "/srv" not in listed.text and "s3://" not in listed.text  # ids only, never where weights are

        one = await gw.client.get("/v1/models/org/base-b", headers=gw.auth("globex"))
        assert one.status_code == 200 and one.json() == by_id["org/base-b"]
        missing = await gw.client.get("/v1/models/gpt-4o", headers=gw.auth())
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"

    run_gateway(_settings(tmp_path, CATALOGUE), body)


def test_without_a_catalogue_the_configured_model_is_the_one_listed(tmp_path):
    async def body(gw: Gateway) -> None:
        page = (await gw.client.get("/v1/models", headers=gw.auth())).json()
        assert [m["id"] for m in page["data"]] == ["smollm2-135m-instruct"]

    run_gateway(settings_for(tmp_path), body)


@pytest.mark.parametrize(
    ("catalogue", "names"),
    [
        ("default: [unclosed\n", "not valid YAML"),
        ({**CATALOGUE, "default": "nope"}, "default model 'nope'"),
        ({"default": "m", "models": {"m": {"source": "/x", "engine": {"max_model_len": 1}}}}, "models.m.engine.max_model_len"),
    ],
)
def test_a_bad_catalogue_stops_the_gateway_at_start_naming_file_and_field(tmp_path, catalogue, names):
    settings = _settings(tmp_path, catalogue)
    with pytest.raises(GatewayConfigError, match="models.yaml") as err:
        create_app(settings, orchestrator=ScriptedOrchestrator())
    assert names in str(err.value)

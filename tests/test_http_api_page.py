"""docs/http-api.md is generated from the gateway's OpenAPI: this fails when the page is stale, and
checks on the in-process gateway that the error statuses the page adds are the ones it answers."""

from __future__ import annotations

import re
from pathlib import Path

from nightshift.api.reference import build_reference_app, gateway_openapi, http_api_reference
from nightshift.api.schemas import ErrorBody
from nightshift.settings import LimitsConfig
from tests.api.gateway_app import Gateway, run_gateway, settings_for

PAGE = Path(__file__).resolve().parents[1] / "docs" / "http-api.md"


def test_http_api_page_is_current():
    assert PAGE.read_text() == http_api_reference(), "run `nightshift api-docs` and commit docs/http-api.md"


def test_every_route_is_on_the_page_with_a_description():
    spec = gateway_openapi(build_reference_app())
    page = PAGE.read_text()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert f"### {method.upper()} {path} " in page
            assert op.get("description"), f"{method.upper()} {path} has no docstring"
    # Bodies the routes validate themselves are declared, so a reader sees their fields.
    assert spec["paths"]["/v1/batches"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/BatchCreate"
    )
    assert "### JobCreate" in page and "422" not in spec["paths"]["/v1/jobs"]["post"]["responses"]


def test_added_error_statuses_are_what_the_gateway_answers(tmp_path):
    spec = gateway_openapi(build_reference_app())
    limit = 2048
    settings = settings_for(tmp_path, limits=LimitsConfig(max_bytes=limit), max_json_body_bytes=limit)
    checked: dict[str, int] = {}

    async def body(gw: Gateway) -> None:
        for path, item in spec["paths"].items():
            url = re.sub(r"\{[^}]+\}", "no-such-id", path)
            for method, op in item.items():
                statuses = op["responses"]
                if "401" not in statuses:
                    continue  # /health: no credential, and its 503 depends on Prefect
                answers = {"401": await gw.client.request(method, url, headers={"Authorization": "Bearer ns-wrong"})}
                if "404" in statuses:
                    answers["404"] = await gw.client.request(method, url, headers=gw.auth())
                if "413" in statuses:
                    # Over every body limit (an upload may carry multipart framing on top of the file limit).
                    big = b"x" * (limit + 128 * 1024)
                    answers["413"] = await gw.client.request(method, url, headers=gw.auth(), content=big)
                if "requestBody" in op:
                    answers["400"] = await gw.client.request(method, url, headers=gw.auth(), json={"unknown_field": 1})
                for status, response in answers.items():
                    assert str(response.status_code) == status, (method, path, response.text)
                    ErrorBody.model_validate(response.json())
                    checked[status] = checked.get(status, 0) + 1

    run_gateway(settings, body)
    assert checked.keys() == {"400", "401", "404", "413"} and checked["401"] >= 12, checked

"""The HTTP API reference page (``docs/http-api.md``), generated from the gateway's own OpenAPI.

The gateway is built with ``create_app`` exactly as ``nightshift serve`` builds it (on an in-memory
database and store: nothing starts, nothing is written), and the page is rendered from
``app.openapi()``, so routes, summaries, parameters and schemas cannot drift from the code.
Two facts FastAPI cannot see are added from the app itself: bodies that routes validate through
``deps.json_body`` (read after authentication, so FastAPI does not declare them), and the
statuses the gateway's outer layers answer (``errors.py`` turns FastAPI's 422 into OpenAI's 400;
the credential check, the body limit and lookups by id add 401/429, 413 and 404).
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel

from nightshift.api.deps import json_body
from nightshift.api.schemas import ErrorBody

_REF = "#/components/schemas/"
_METHODS = ("get", "post", "put", "patch", "delete")

#: What each status the gateway adds to a route means (codes as in ``errors.py`` and ``middleware.py``).
_ERRORS = {
    "400": "invalid request: `param` names the field, `message` the rule",
    "401": "missing, unknown, expired or revoked credential (`invalid_api_key`)",
    "404": "no such object in the caller's org; another org's id is not found either (`not_found`)",
    "413": "body over the limit, refused from `Content-Length` before it is read (`request_too_large`)",
    "429": "over the org's hourly call budget (`rate_limit_exceeded`); `Retry-After` says when to retry",
}


def build_reference_app() -> FastAPI:
    """The gateway app as ``nightshift serve`` assembles it, on an in-memory database and store."""
    from nightshift.api.app import create_app
    from nightshift.settings import ApiConfig, Settings, StorageConfig

    # Explicit groups so the environment (a short JWT secret, a Postgres URL) cannot change the page.
    settings = Settings(
        storage=StorageConfig(root="memory://nightshift-api-reference"),
        api=ApiConfig(database_url="sqlite+aiosqlite://", jwt_secret=None),
    )
    return create_app(settings)


def gateway_openapi(app: FastAPI) -> dict[str, Any]:
    """``app.openapi()`` with the JSON bodies routes validate themselves and the statuses the
    gateway really answers (400 for validation, 401/429, 413, 404), each error as ``ErrorBody``."""
    spec = copy.deepcopy(app.openapi())
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    validation_is_400 = app.exception_handlers.get(RequestValidationError) is not request_validation_exception_handler
    for route in app.routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        for method in sorted(route.methods or ()):
            op = spec["paths"].get(route.path_format, {}).get(method.lower())
            if op is None:
                continue
            body = _json_body_model(route)
            if body is not None and "requestBody" not in op:
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _register(schemas, body)}}}
            responses = op.setdefault("responses", {})
            statuses = []
            if validation_is_400 and responses.pop("422", None) is not None:
                statuses.append("400")
            params = op.get("parameters", [])
            if any(p["in"] == "header" and p["name"].lower() == "authorization" for p in params):
                statuses += ["401", "429"]
            if any(p["in"] == "path" for p in params):
                statuses.append("404")
            if method in ("POST", "PUT", "PATCH"):
                statuses += ["400", "413"]
            for status in statuses:
                responses.setdefault(
                    status,
                    {"description": _ERRORS[status], "content": {"application/json": {"schema": _register(schemas, ErrorBody)}}},
                )
    _drop_unused(spec)
    return spec


def http_api_reference(app: FastAPI | None = None) -> str:
    """The HTTP API page (``docs/http-api.md``), written by ``nightshift api-docs``; a test compares
    the committed page with this, so it never drifts from the routes."""
    app = app or build_reference_app()
    spec = gateway_openapi(app)
    schemas = spec["components"]["schemas"]
    out = [
        f"# HTTP API: {spec['info']['title']} {spec['info']['version']}",
        "",
        "Generated from the gateway's OpenAPI (`nightshift/api/reference.py`) by `nightshift api-docs`; "
        "a test fails when this page is stale.",
        "",
        "`nightshift serve` answers OpenAI's Files and Batches API under `/v1` (point the official `openai` "
        "client's `base_url` at it) and nightshift's job API beside it. A running gateway also serves "
        "FastAPI's raw schema at `/openapi.json` and a browsable view at `/docs`; this page adds the JSON "
        "bodies routes read after authentication and the error statuses the gateway actually sends.",
        "",
        "## Authentication",
        "",
        "Every route that takes an `Authorization` header needs `Authorization: Bearer <key or token>`: an API key "
        "from `nightshift keys create` or a JWT (`nightshift keys token`). The credential is checked, and the call "
        "counted against the org's hourly budget, before the body is read; each answer carries OpenAI's "
        "`x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests` and `x-ratelimit-reset-requests`. "
        "Every answer carries `x-request-id` (yours when it is plain, else a new one).",
        "",
        "## Errors",
        "",
        "Errors use OpenAI's envelope, so the `openai` client raises its typed errors "
        "(`BadRequestError`, `AuthenticationError`, `NotFoundError`, `RateLimitError`...):",
        "",
        _schema_table(schemas["ErrorBody"], schemas),
        "",
        "| status | meaning |",
        "|---|---|",
        *(f"| {status} | {text} |" for status, text in _ERRORS.items()),
        "| 500 | unexpected: the message names only the request id; the detail goes to the gateway's log |",
        "",
        "## Routes",
        "",
        "| method | path | summary |",
        "|---|---|---|",
    ]
    operations = list(_operations(spec))
    for path, method, op in operations:
        out.append(f"| {method.upper()} | [`{path}`](#{_anchor(method, path)}) | {op.get('summary', '')} |")
    hidden = [r for r in app.routes if isinstance(r, APIRoute) and not r.include_in_schema]
    for route in sorted(hidden, key=lambda r: r.path):
        doc = _first_line(inspect.getdoc(route.endpoint))
        out.append(f"| {', '.join(sorted(route.methods or ()))} | `{route.path}` | {doc} (not in the schema) |")
    tags: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, method, op in operations:
        tags.setdefault((op.get("tags") or ["other"])[0], []).append((path, method, op))
    for tag, ops in tags.items():
        out += ["", f"## {tag}"]
        for path, method, op in ops:
            out += _operation(path, method, op, schemas)
    out += ["", "## Schemas"]
    for name in sorted(schemas):
        out += ["", f"### {name}", ""]
        if schemas[name].get("description"):
            out += [_inline(schemas[name]["description"]), ""]
        out.append(_schema_table(schemas[name], schemas))
    return "\n".join(out) + "\n"


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method in _METHODS:
            if method in item:
                yield path, method, item[method]


def _operation(path: str, method: str, op: dict[str, Any], schemas: dict[str, Any]) -> list[str]:
    out = ["", f'### {method.upper()} {path} <a id="{_anchor(method, path)}"></a>', ""]
    out += [f"**{op.get('summary', '')}.** {_inline(op.get('description', ''))}".rstrip(), ""]
    params = [p for p in op.get("parameters", []) if not (p["in"] == "header" and p["name"].lower() == "authorization")]
    if any(p["in"] == "header" and p["name"].lower() == "authorization" for p in op.get("parameters", [])):
        out += ["Auth: `Authorization: Bearer …`.", ""]
    if params:
        out += ["| parameter | in | type | required | default |", "|---|---|---|---|---|"]
        for p in params:
            schema = p.get("schema", {})
            default = f"`{json.dumps(schema['default'])}`" if "default" in schema else ""
            required = "yes" if p.get("required") else "no"
            out.append(f"| `{p['name']}` | {p['in']} | {_type(schema, schemas)} | {required} | {default} |")
        out.append("")
    for media, content in op.get("requestBody", {}).get("content", {}).items():
        out += [f"Request body (`{media}`): {_type(content.get('schema', {}), schemas)}", ""]
    out += ["| status | meaning | body |", "|---|---|---|"]
    for status in sorted(op.get("responses", {})):
        response = op["responses"][status]
        bodies = [_type(c.get("schema", {}), schemas) for c in response.get("content", {}).values() if c.get("schema")]
        out.append(f"| {status} | {_inline(response.get('description', ''))} | {', '.join(bodies) or '—'} |")
    return out


def _schema_table(schema: dict[str, Any], schemas: dict[str, Any]) -> str:
    if "enum" in schema:
        return "One of " + _type(schema, schemas) + "."
    required = set(schema.get("required", []))
    rows = ["| field | type | required | description |", "|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        default = f" Default `{json.dumps(prop['default'])}`." if prop.get("default") is not None else ""
        text = _inline(prop.get("description", "")) + default
        rows.append(f"| `{name}` | {_type(prop, schemas)} | {'yes' if name in required else 'no'} | {text.strip()} |")
    return "\n".join(rows)


def _type(schema: dict[str, Any], schemas: dict[str, Any]) -> str:
    """A JSON schema as a short Markdown type: ``[BatchObject](#batchobject)``, ``string or null``…"""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(_REF)
        return f"[{name}](#{name.lower()})"
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(_type(s, schemas) for s in schema[key])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}), schemas)}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"map of string to {_type(schema['additionalProperties'], schemas)}"
    bounds = [f"{sign} {schema[k]}" for k, sign in _BOUNDS if k in schema]
    return str(kind) + (f" ({', '.join(bounds)})" if bounds else "")


_BOUNDS = (
    ("minimum", "≥"),
    ("exclusiveMinimum", ">"),
    ("maximum", "≤"),
    ("exclusiveMaximum", "<"),
    ("minLength", "length ≥"),
    ("maxLength", "length ≤"),
)


def _json_body_model(route: APIRoute) -> type[BaseModel] | None:
    """The model a route's ``json_body(Model)`` dependency validates the body with, if any."""
    # Every parser json_body makes shares one code object; its closure holds the model.
    parser_code = json_body(BaseModel).__code__
    for call in _calls(route.dependant):
        if getattr(call, "__code__", None) is parser_code:
            model = inspect.getclosurevars(call).nonlocals.get("model")
            if isinstance(model, type) and issubclass(model, BaseModel):
                return model
    return None


def _calls(dependant: Any) -> Iterator[Callable[..., Any]]:
    for dep in dependant.dependencies:
        if dep.call is not None:
            yield dep.call
        yield from _calls(dep)


def _register(schemas: dict[str, Any], model: type[BaseModel]) -> dict[str, str]:
    """Add ``model`` (and the models it uses) to the components; a ``$ref`` to it."""
    schema = model.model_json_schema(ref_template=_REF + "{model}")
    for name, sub in schema.pop("$defs", {}).items():
        schemas.setdefault(name, sub)
    schemas.setdefault(model.__name__, schema)
    return {"$ref": _REF + model.__name__}


def _drop_unused(spec: dict[str, Any]) -> None:
    """Keep only the schemas a route reaches (FastAPI's 422 bodies go once 422 is replaced)."""
    schemas = spec["components"]["schemas"]
    seen: set[str] = set()
    todo = list(_refs(spec["paths"]))
    while todo:
        name = todo.pop()
        if name not in seen and name in schemas:
            seen.add(name)
            todo += _refs(schemas[name])
    spec["components"]["schemas"] = {k: v for k, v in schemas.items() if k in seen}


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value.removeprefix(_REF)
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _anchor(method: str, path: str) -> str:
    return f"{method}-" + "".join(c if c.isalnum() else "-" for c in path.strip("/")).strip("-")


def _first_line(text: str | None) -> str:
    return _inline((text or "").split("\n\n")[0])


def _inline(text: str) -> str:
    """One Markdown table-safe line (reST double backticks become Markdown code)."""
    return " ".join(text.replace("``", "`").replace("|", "\\|").split())

"""The OpenAPI document (api/openapi.json) against the code: the same routes, statuses and record
fields, served at /openapi.json, and a schemathesis run on a real Redis (no worker: spawns stay
queued) that finds no server error and no answer outside the document."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import fields
from typing import Any

import pytest
import redis
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from jsonschema_rs import Draft202012Validator
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api import create_app
from api.models import SPAWN_FIELDS
from api.openapi import DOCUMENT, build, document
from shared.record import Notebook
from shared.settings import Settings
from shared.status import Status
from shared.validation import validate_image
from testkit.stack import base_env
from testkit.support import RedisServer, unique_instance
from tests.test_validation import INVALID_IMAGES, SHA, VALID_IMAGES

#: Routes that are not part of the JSON API: the HTML page and its forms, static files, the document itself.
UNDOCUMENTED = re.compile(r"^/(manage|static|openapi\.json)(/|$)")
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local ``$ref`` (``#/components/...``) to what it names."""
    while "$ref" in node:
        target: Any = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def documented_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    out = set()
    for path, item in doc["paths"].items():
        for method in resolve(doc, item):
            if method in HTTP_METHODS:
                out.add((method.upper(), path))
    return out


def app_operations(app: Flask) -> set[tuple[str, str]]:
    out = set()
    for rule in app.url_map.iter_rules():
        if UNDOCUMENTED.match(rule.rule):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        out.update((method, path) for method in rule.methods or () if method not in ("HEAD", "OPTIONS"))
    return out


#: Fields the API adds to a record for its owner and the admin (api/routes.py public_record).
SECRET_FIELDS = ["token", "notebook_url", "public_url"]
ADMIN_TOKEN = "openapi-admin-" + secrets.token_hex(16)
AS_ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def app(redis_server: RedisServer) -> Iterator[Flask]:
    """The real app on the real Redis and the real Celery sender, with no worker anywhere, with
    authentication on as it is outside the tests."""
    # START_TIMEOUT 1: tmpnb's spawn waits that long for a notebook no worker will start (504).
    env = base_env(redis_server.url, unique_instance("openapi"), AUTH="on", ADMIN_TOKEN=ADMIN_TOKEN, START_TIMEOUT=1)
    settings_ = Settings.from_env(env)
    # Event streams end at once here: the run calls them like any route.
    made = create_app(settings_, EVENTS_LIFETIME=0.2, CONTAINER_EVENTS_LIFETIME=0.2, EVENTS_HEARTBEAT=0.1)
    yield made
    client = redis.Redis.from_url(settings_.redis_url)
    try:
        for key in client.scan_iter(match=f"{settings_.key_prefix}*", count=1000):
            client.delete(key)
        assert not list(client.scan_iter(match=f"{settings_.key_prefix}*"))
    finally:
        client.close()
        made.extensions["store"].redis.close()


# -- the document against the code -----------------------------------------------------------
def test_every_route_is_documented_and_nothing_else(app: Flask) -> None:
    doc = document()
    in_code, in_doc = app_operations(app), documented_operations(doc)
    assert sorted(in_code - in_doc) == [], "routes missing from api/openapi.json"
    assert sorted(in_doc - in_code) == [], "api/openapi.json describes routes the app does not have"


def test_status_enum_and_record_fields_match_the_code() -> None:
    doc = document()
    schemas = doc["components"]["schemas"]
    statuses = [s.value for s in Status]
    assert schemas["Status"]["enum"] == statuses
    record = schemas["Notebook"]
    names = [f.name for f in fields(Notebook)]
    assert list(record["properties"]) == names + SECRET_FIELDS  # in the order the API writes them
    assert record["required"] == names
    assert record["additionalProperties"] is False
    assert list(schemas["SpawnRequest"]["properties"]) == list(SPAWN_FIELDS)
    item = resolve(doc, doc["paths"]["/containers"])
    (status_param,) = [p for p in item["get"]["parameters"] if p["name"] == "status"]
    assert status_param["schema"]["enum"] == ["", *statuses]
    from api.events import STAGES

    assert schemas["Event"]["properties"]["stage"]["enum"] == list(STAGES)


def test_the_documented_ttl_cap_and_no_store_are_the_codes() -> None:
    from api import SECRET_BEARING
    from api.models import MAX_LIFETIME

    doc = document()
    ttl = doc["components"]["schemas"]["SpawnRequest"]["properties"]["ttl"]
    assert f"by ten years: {MAX_LIFETIME})" in ttl["description"]
    # Every success answer is JSON or an event stream, and each is documented with its no-store header
    # (required: the schemathesis run below fails an answer without it).
    for item in doc["components"]["pathItems"].values():
        for operation in item.values():
            for code, response in operation["responses"].items():
                if code.startswith("2"):
                    assert set(response["content"]) <= SECRET_BEARING, response
                    assert response["headers"]["Cache-Control"] == {"$ref": "#/components/headers/NoStore"}


def test_every_reference_resolves_and_every_operation_answers_errors_as_documented() -> None:
    doc = document()

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                yield node["$ref"]
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    for ref in walk(doc):
        assert ref.startswith("#/"), ref
        resolve(doc, {"$ref": ref})  # raises KeyError if it names nothing
    for path, item in doc["paths"].items():
        for method, operation in resolve(doc, item).items():
            codes = set(operation["responses"])
            assert "503" in codes, (method, path)  # everything reads Redis
            if "{hostname}" in path:
                assert "404" in codes, (method, path)
            public = operation.get("security") == []
            assert public == path.endswith("/healthz"), (method, path)
            assert public or "401" in codes, (method, path)


def test_a_record_as_served_has_the_documented_fields_in_order(app: Flask) -> None:
    http = app.test_client()
    response = http.post("/spawn", json={"image": "busybox", "user": "openapi", "ttl": 3600.0}, headers=AS_ADMIN)
    assert response.status_code == 202, response.get_data(as_text=True)
    served = list(json.loads(response.get_data()))  # the server's own key order
    assert served == list(document()["components"]["schemas"]["Notebook"]["properties"])
    # Found by the schemathesis run: 3600.0 is a whole number (JSON has one number type).
    assert response.get_json()["expires_at"]
    assert (
        http.post("/spawn", json={"image": "busybox", "user": "openapi", "ttl": 60.5}, headers=AS_ADMIN).status_code
        == 400
    )


def test_the_document_is_what_the_code_makes() -> None:
    assert DOCUMENT.read_text() == build(), "api/openapi.json is stale: run `make docs`"


#: Spellings the API accepts that an earlier, hand-written document refused (a registry with a
#: port, a digest, a double underscore), and every image reference tests/test_validation.py holds valid.
ACCEPTED_IMAGES = ["registry.example:5000/x:1", f"python@{SHA}", "a__b", *VALID_IMAGES]


def spawn_schemas(doc: dict[str, Any]) -> dict[str, Any]:
    """The document's request body schemas of POST /spawn, by content type, references resolved."""
    content = resolve(doc, doc["paths"]["/spawn"])["post"]["requestBody"]["content"]
    return {mimetype: resolve(doc, body["schema"]) for mimetype, body in content.items()}


@pytest.mark.parametrize("image", ACCEPTED_IMAGES)
def test_the_document_accepts_every_image_the_api_accepts(image: str) -> None:
    assert validate_image(image) == image
    for mimetype, schema in spawn_schemas(document()).items():
        errors = list(Draft202012Validator(schema).iter_errors({"image": image, "user": "alice"}))
        assert errors == [], (mimetype, [e.message for e in errors])


#: What the document cannot say with a pattern, so only the API refuses it (a 400): the engine's
#: limit on the name part alone.
NOT_IN_THE_PATTERN = {"name over 255", "name over 255 with path"}
REFUSED_BY_THE_PATTERN = [(why, image) for why, image in INVALID_IMAGES if why not in NOT_IN_THE_PATTERN]


@pytest.mark.parametrize(("why", "image"), REFUSED_BY_THE_PATTERN, ids=[w for w, _ in REFUSED_BY_THE_PATTERN])
def test_the_document_refuses_images_the_api_refuses(why: str, image: str) -> None:
    for mimetype, schema in spawn_schemas(document()).items():
        assert not Draft202012Validator(schema).is_valid({"image": image, "user": "alice"}), mimetype


@pytest.mark.parametrize("image", ACCEPTED_IMAGES[:3])
def test_images_the_document_allows_are_spawned(app: Flask, image: str) -> None:
    response = app.test_client().post("/spawn", json={"image": image, "user": "openapi"}, headers=AS_ADMIN)
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.get_json()["image"] == image


def test_the_document_is_served_as_it_is_kept(app: Flask) -> None:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_data() == DOCUMENT.read_bytes()
    assert json.loads(response.get_data())["openapi"].startswith("3.")


# -- schemathesis -----------------------------------------------------------------------------
# Parametrized from the document itself (schemathesis's own pytest loader for fixtures needs
# pytest internals that pytest 9 no longer has); each operation in both generation modes:
# positive (valid by the document) and negative (invalid by it: must be a documented 4xx).
def _runs() -> list[Any]:
    doc = document()
    runs = []
    for path, item in doc["paths"].items():
        for method, operation in resolve(doc, item).items():
            modes = [GenerationMode.POSITIVE]
            if operation.get("parameters") or operation.get("requestBody"):
                modes.append(GenerationMode.NEGATIVE)
            runs.extend(
                pytest.param(method.upper(), path, mode, id=f"{method.upper()} {path} {mode.value}") for mode in modes
            )
    return runs


@pytest.fixture(scope="module")
def api_schema(app: Flask) -> Any:
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


def conforms(operation: Any, mode: GenerationMode, examples: int, headers: dict[str, str]) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples, deadline=5000, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    def check(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    check()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("method", "path", "mode"), _runs())
def test_api_conforms_to_its_document(api_schema: Any, method: str, path: str, mode: GenerationMode) -> None:
    conforms(api_schema[path][method], mode, 15, AS_ADMIN)


@pytest.mark.timeout(120)
def test_answers_without_credentials_are_documented_too(api_schema: Any) -> None:
    # Every operation but /healthz answers 401 (with its challenge header) to a caller with no token.
    for result in api_schema.get_all_operations():
        conforms(result.ok(), GenerationMode.POSITIVE, 3, {})


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

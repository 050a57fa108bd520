"""GET /openapi.json: the OpenAPI 3.1 document of the JSON API, kept beside the code.

``api/openapi.json`` is written by hand and served as it is. ``tests/test_openapi.py`` keeps it
honest: every route of the app is in it and nothing else, its status enum and record fields
are those of ``shared.status``/``shared.record``, and a schemathesis run finds no answer that
breaks it.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app

DOCUMENT = Path(__file__).with_name("openapi.json")

bp = Blueprint("openapi", __name__)


@cache
def document_bytes() -> bytes:
    return DOCUMENT.read_bytes()


def document() -> dict[str, Any]:
    return dict(json.loads(document_bytes()))


@bp.get("/openapi.json")
def openapi() -> Response:
    return current_app.response_class(document_bytes(), mimetype="application/json")

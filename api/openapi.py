"""GET /openapi.json: the OpenAPI 3.1 document of the JSON API, made from the code.

``api/openapi.json`` is generated: the request and response schemas from the models that
validate them (``api/models.py``), the routes, responses and prose from ``api/apidoc.py``.
``python -m api.openapi`` (``make docs``) rewrites it; the app serves the committed file as it is.
``tests/test_openapi.py`` checks that it is what the code makes, that every route of the app is
in it and nothing else, and runs schemathesis against the app with it.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app

from api.auth import PUBLIC, policy

DOCUMENT = Path(__file__).with_name("openapi.json")

bp = Blueprint("openapi", __name__)


def build() -> str:
    """The document as the code makes it: the text ``api/openapi.json`` must hold."""
    from api.apidoc import DOCUMENT as TABLE

    return json.dumps(TABLE, indent=2, ensure_ascii=False) + "\n"


@cache
def document_bytes() -> bytes:
    return DOCUMENT.read_bytes()


def document() -> dict[str, Any]:
    return dict(json.loads(document_bytes()))


@bp.get("/openapi.json")
@policy(PUBLIC)
def openapi() -> Response:
    return current_app.response_class(document_bytes(), mimetype="application/json")


def main(argv: list[str] | None = None) -> int:
    """Write api/openapi.json; with ``--check``, only say whether it is current (exit 1 if not)."""
    args = sys.argv[1:] if argv is None else argv
    made = build()
    if "--check" in args:
        current = DOCUMENT.read_text() == made
        print(f"{DOCUMENT} is {'current' if current else 'stale: run `make docs`'}")
        return 0 if current else 1
    DOCUMENT.write_text(made)
    print(f"wrote {DOCUMENT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Flask's JSON through orjson.

A large ``GET /containers`` spent much of its time in the standard library's ``json.dumps``;
orjson writes the same document several times faster, and parses request bodies faster too
(docs/benchmarks.md has the figures).
Output differences that clients never see as different JSON: non-ASCII characters are written
as UTF-8 rather than ``\\uXXXX`` escapes, and the separators are compact, as Flask's default
provider already made them outside debug mode.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable
from typing import Any

import orjson
from flask import Response
from flask.json.provider import JSONProvider


def _fallback(value: Any) -> Any:
    """Types orjson does not know natively (it does dataclasses, datetimes and UUIDs): as Flask would."""
    html = getattr(value, "__html__", None)
    if html is not None:
        return str(html())
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


class OrjsonProvider(JSONProvider):
    """``app.json``: what ``jsonify``, a view returning a dict or list, ``request.get_json`` and the
    templates' ``tojson`` filter use. Keys keep their insertion order (the first API's field order)."""

    mimetype = "application/json"

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return self.dumps_bytes(obj, **kwargs).decode()

    def dumps_bytes(self, obj: Any, **kwargs: Any) -> bytes:
        option = orjson.OPT_NON_STR_KEYS
        if kwargs.get("sort_keys"):  # the tojson filter asks for sorted keys
            option |= orjson.OPT_SORT_KEYS
        if kwargs.get("indent"):
            option |= orjson.OPT_INDENT_2
        return orjson.dumps(obj, default=_fallback, option=option)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        indent = self._app.debug
        # Bytes straight into the response: no str round trip for a body of megabytes.
        body = self.dumps_bytes(obj, indent=indent) + b"\n"
        return Response(body, mimetype=self.mimetype)


def json_array_response(chunks: Iterable[list[Any]]) -> Response:
    """A response holding one JSON array made of ``chunks``, each encoded as it comes.

    For a listing read in chunks (``Store.iter_public``): each chunk is encoded while Redis
    reads the next one, instead of the whole list after the last. The body stays a list of
    the encoded pieces (megabytes for 10,000 records), written out one by one, never joined.
    """
    body: list[bytes] = [b"["]
    for chunk in chunks:
        if chunk:
            if len(body) > 1:
                body.append(b",")
            body.append(orjson.dumps(chunk, default=_fallback)[1:-1])
    body.append(b"]\n")
    return Response(body, mimetype="application/json")

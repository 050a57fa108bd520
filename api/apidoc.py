"""The OpenAPI document's routes, their responses and the prose: the part of ``api/openapi.json``
that is not a model's schema. ``python -m api.openapi`` (``make docs``) writes the document from
this table and the models (``api/models.py``): change them, not the JSON.

Every path of the app is here and nothing else (tests/test_openapi.py); the ``/api/`` aliases
share one path item each (``components/pathItems``).
"""

from __future__ import annotations

from typing import Any

from api.events import STAGES
from api.models import (
    OPTIONAL_TIME,
    TIME,
    ContainersQuery,
    NotebookRecord,
    SpawnRequest,
    TokenRequest,
    component,
    query_parameters,
    request_content,
    status_schema,
)
from shared.validation import HOSTNAME_RE, IMAGE_MAX_LENGTH, USER_RE


def ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def schema(name: str) -> dict[str, str]:
    return ref("schemas", name)


def response(name: str) -> dict[str, str]:
    return ref("responses", name)


def parameter(name: str) -> dict[str, str]:
    return ref("parameters", name)


def path_item(name: str) -> dict[str, str]:
    return ref("pathItems", name)


def as_json(body: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": body}}


#: The answers every route shares, by status (components/responses).
SHARED_ANSWERS = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 429: "QuotaExceeded", 503: "Unavailable"}


def errors(*codes: int) -> dict[str, dict[str, str]]:
    """The shared answers for ``codes``, in that order (e.g. 401, 403, 503)."""
    return {str(code): response(SHARED_ANSWERS[code]) for code in codes}


#: A JSON answer's Cache-Control header.
NO_STORE = {"Cache-Control": ref("headers", "NoStore")}


def answer(description: str, body: dict[str, Any], *, no_store: bool = False) -> dict[str, Any]:
    """A JSON answer: ``description``, with ``body`` (a schema), and Cache-Control: no-store if asked."""
    headers = {"headers": NO_STORE} if no_store else {}
    return {"description": description, **headers, "content": as_json(body)}


#: The three kills (DELETE /container/{hostname}, GET and POST /container/{hostname}/kill).
KILL: dict[str, Any] = {
    "summary": "Kill a notebook",
    "description": (
        "Marks it DELETING and enqueues the kill; a no-op (200) for a notebook "
        "already deleting, removed or failed. The same for `DELETE "
        "/container/{hostname}`, `GET` and `POST /container/{hostname}/kill`."
    ),
    "tags": ["notebooks"],
    "parameters": [parameter("Hostname")],
    "responses": {
        "200": answer(
            "Nothing to do: the record, already DELETING, REMOVED or FAILED.", schema("Notebook"), no_store=True
        ),
        "202": answer("A kill was started: the record, now DELETING.", schema("Notebook"), no_store=True),
        **errors(401, 403, 404, 503),
    },
    "security": [{"bearer": []}, {"capability": []}],
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "swarm-manager",
        "version": "0.1.0",
        "description": (
            "Hand people their own Jupyter notebook server. Every route is also "
            "served under `/api/` (with or without a trailing slash) for tmpnb-style "
            "clients; `POST /api/spawn` is tmpnb's own spawn, which answers once the "
            "notebook is ACTIVE. `GET /build/{provider}/{spec}` is BinderHub's launch "
            'API, for thebe, Jupyter Book and MyST pages. Errors are `{"error", '
            '"code"}` JSON; 503 answers carry `Retry-After`. Every JSON answer and '
            "event stream carries `Cache-Control: no-store`. A method a path does not "
            "list is answered 405 (an Error, with `Allow`), an unknown path 404."
        ),
    },
    "tags": [
        {"name": "notebooks"},
        {"name": "events"},
        {"name": "operations"},
        {"name": "tokens"},
        {
            "name": "binder",
            "description": (
                "Thebe, Binder and tmpnb clients: launches anonymous clients may make "
                "(ANONYMOUS_IMAGES), within limits per client address."
            ),
        },
    ],
    "paths": {
        "/spawn": path_item("Spawn"),
        "/container/{hostname}": path_item("Container"),
        "/container/{hostname}/kill": path_item("Kill"),
        "/container/{hostname}/events": path_item("ContainerEvents"),
        "/containers": path_item("Containers"),
        "/events": path_item("Events"),
        "/healthz": path_item("Healthz"),
        "/api/spawn": path_item("TmpnbSpawn"),
        "/api/container/{hostname}": path_item("Container"),
        "/api/container/{hostname}/kill": path_item("Kill"),
        "/api/container/{hostname}/events": path_item("ContainerEvents"),
        "/api/containers": path_item("Containers"),
        "/api/events": path_item("Events"),
        "/api/healthz": path_item("Healthz"),
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "description": (
                    "Prometheus text format, read from Redis at scrape time: "
                    "`swarm_manager_spawns_total{outcome}`, "
                    "`swarm_manager_spawn_duration_seconds` (histogram), "
                    "`swarm_manager_notebooks{status}`, `swarm_manager_queue_depth`, "
                    "`swarm_manager_engine_errors_total{kind}`. Admin only."
                ),
                "tags": ["operations"],
                "responses": {
                    "200": {"description": "The metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    **errors(401, 403, 503),
                },
            }
        },
        "/nodes": {
            "get": {
                "summary": "Nodes and their pre-pulled images",
                "description": (
                    "Each engine node (one in containers mode, every Swarm node in services "
                    "mode) as the workers last saw it on a reconcile pass, and the state of "
                    "each image listed for pre-pulling (the warm pool's and those of profiles "
                    "with `prepull: true`) on it. Admin only."
                ),
                "tags": ["operations"],
                "responses": {
                    "200": answer("The listed images and the nodes.", schema("Nodes")),
                    **errors(401, 403, 503),
                },
            }
        },
        "/tokens": path_item("Tokens"),
        "/tokens/{token_id}": path_item("Token"),
        "/build/{provider}/{spec}": path_item("Build"),
    },
    "components": {
        "schemas": {
            "Status": status_schema(),
            "Time": TIME,
            "OptionalTime": OPTIONAL_TIME,
            "Notebook": component(NotebookRecord),
            "SpawnRequest": component(SpawnRequest),
            "TokenRequest": component(TokenRequest),
            "Error": {
                "type": "object",
                "properties": {
                    "error": {"type": "string", "description": "What went wrong, for people."},
                    "code": {"type": "string", "pattern": "^[a-z_]+$", "description": "A machine-readable slug."},
                },
                "required": ["error", "code"],
            },
            "Health": {
                "type": "object",
                "properties": {"status": {"const": "ok"}, "redis": {"const": "ok"}},
                "required": ["status", "redis"],
            },
            "Unhealthy": {
                "type": "object",
                "properties": {
                    "status": {"const": "unavailable"},
                    "redis": {"type": "string"},
                    "error": {"type": "string"},
                    "code": {"type": "string"},
                },
                "required": ["status", "redis", "error", "code"],
            },
            "Event": {
                "type": "object",
                "description": "The data of one Server-Sent Event.",
                "properties": {
                    "hostname": {"type": "string"},
                    "status": {
                        "oneOf": [schema("Status"), {"type": "null"}],
                        "description": "The record's status; null for progress within a stage.",
                    },
                    "stage": {"type": "string", "enum": list(STAGES)},
                    "message": {"type": "string", "description": "The stage in words."},
                    "progress": {
                        "type": "object",
                        "description": (
                            "`pulling` events: how far the pull of the notebook's image is (`image`, "
                            "`bytes_done`, `bytes_total`, `layers_done`, `layers_total`; totals count "
                            "what the registry has announced so far)."
                        ),
                        "properties": {
                            "image": {"type": "string"},
                            "bytes_done": {"type": "integer"},
                            "bytes_total": {"type": "integer"},
                            "layers_done": {"type": "integer"},
                            "layers_total": {"type": "integer"},
                        },
                    },
                    "public_url": {
                        "type": "string",
                        "description": "Record events: the notebook's address (PUBLIC_URL), without its token.",
                    },
                    "notebook_url": {
                        "type": "string",
                        "description": (
                            "`ready` events, for the notebook's owner and the admin: its address with "
                            "`?token=<token>`, ready to open."
                        ),
                    },
                    "record": {"oneOf": [schema("Notebook"), {"type": "null"}]},
                },
                "required": ["hostname", "status", "stage", "message", "record"],
            },
            "Token": {
                "type": "object",
                "description": "A user token, without its secret.",
                "properties": {
                    "id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                    "user": {"type": "string"},
                    "created": schema("Time"),
                },
                "required": ["id", "user", "created"],
            },
            "NewToken": {
                "type": "object",
                "description": "A new user token: the secret is shown only here.",
                "properties": {
                    "id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                    "user": {"type": "string"},
                    "created": schema("Time"),
                    "token": {"type": "string"},
                },
                "required": ["id", "user", "created", "token"],
            },
            "RevokedToken": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                    "user": {"type": "string"},
                    "created": schema("Time"),
                    "revoked": schema("Time"),
                },
                "required": ["id", "user", "created", "revoked"],
            },
            "TmpnbSpawnRequest": {
                "type": "object",
                "description": (
                    "tmpnb's request. Sent as JSON whatever the Content-Type (the 2015 Thebe "
                    "sends `text/plain`, which needs no CORS preflight), or as a form."
                ),
                "properties": {
                    "image_name": {
                        "type": "string",
                        "maxLength": IMAGE_MAX_LENGTH,
                        "description": (
                            "The image, as tmpnb calls it (or `image`). Without a token: one that "
                            "ANONYMOUS_IMAGES names."
                        ),
                    },
                    "image": {
                        "type": "string",
                        "maxLength": IMAGE_MAX_LENGTH,
                        "description": "The image (or `image_name`).",
                    },
                    "user": {
                        "type": "string",
                        "pattern": USER_RE.pattern,
                        "description": (
                            "As on `POST /spawn`: the admin names whom it is for; a user token spawns "
                            "for its own user. Left out without a token (an anonymous launch), and by "
                            "the admin for one."
                        ),
                    },
                    "ttl": {
                        "type": ["string", "integer"],
                        "description": (
                            "Seconds it may live (capped by MAX_AGE, and by ANONYMOUS_MAX_AGE for an anonymous launch)."
                        ),
                    },
                    "profile": {"type": "string", "description": "As on `POST /spawn`; not for an anonymous launch."},
                    "mem_limit": {"type": "string", "description": "As on `POST /spawn`; not for an anonymous launch."},
                    "cpu_limit": {"type": "string", "description": "As on `POST /spawn`; not for an anonymous launch."},
                    "wait": {
                        "type": ["boolean", "string"],
                        "description": (
                            "false: answer at once (202) and follow "
                            "`/container/{hostname}/events?token=...`; default true: answer once the "
                            "notebook is ACTIVE (at once from the warm pool; at most START_TIMEOUT)."
                        ),
                    },
                },
            },
            "Full": {
                "type": "object",
                "description": "tmpnb's answer over a limit, with this API's error fields.",
                "properties": {"status": {"const": "full"}, "error": {"type": "string"}, "code": {"type": "string"}},
                "required": ["status", "error", "code"],
                "additionalProperties": False,
            },
            "BinderEvent": {
                "type": "object",
                "description": "One of BinderHub's launch events (the `data` of an unnamed SSE message).",
                "properties": {
                    "phase": {"enum": ["built", "launching", "ready", "failed"]},
                    "message": {
                        "type": "string",
                        "description": "For people; each ends in a newline, as BinderHub's do.",
                    },
                    "imageName": {"type": "string", "description": "`built`: the image the spec maps to."},
                    "url": {
                        "type": "string",
                        "description": "`ready`: the notebook server's full address, ending in `/`.",
                    },
                    "token": {"type": "string", "description": "`ready`: the notebook's token (its capability too)."},
                    "image": {"type": "string"},
                    "hostname": {
                        "type": "string",
                        "description": "`ready`: the notebook's hostname, for `/container/{hostname}?token=...`.",
                    },
                    "status_code": {
                        "type": "integer",
                        "description": "`failed`: the HTTP status that says it best (404, 403, 429, 504, ...).",
                    },
                },
                "required": ["phase", "message"],
                "additionalProperties": False,
            },
            "Nodes": {
                "type": "object",
                "required": ["images", "nodes"],
                "properties": {
                    "images": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "The images pulled onto every node ahead of demand (canonical references).",
                    },
                    "nodes": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "hostname": {"type": "string"},
                                "state": {"type": "string"},
                                "availability": {"type": "string"},
                                "role": {"type": "string"},
                                "address": {"type": "string"},
                                "seen_at": {"type": "string"},
                                "images": {
                                    "type": "object",
                                    "additionalProperties": {
                                        "type": "object",
                                        "properties": {
                                            "state": {
                                                "type": "string",
                                                "enum": ["present", "pulling", "failed", "missing"],
                                            },
                                            "reason": {"type": "string"},
                                            "at": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
        "parameters": {
            "Hostname": {
                "name": "hostname",
                "in": "path",
                "required": True,
                "description": (
                    "The notebook's hostname (12 characters of [0-9a-z]); anything else is "
                    "answered 404 like an unknown one."
                ),
                "schema": {"type": "string", "pattern": HOSTNAME_RE.pattern},
            },
            "TokenId": {
                "name": "token_id",
                "in": "path",
                "required": True,
                "description": "A token's id (16 hex digits); anything else is answered 404.",
                "schema": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
            },
        },
        "responses": {
            "NotFound": {
                "description": "No notebook with that hostname.",
                "content": as_json(schema("Error")),
            },
            "Unavailable": {
                "description": "Redis or the task queue is unavailable.",
                "headers": {
                    "Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "string"}}
                },
                "content": as_json(schema("Error")),
            },
            "Unauthorized": {
                "description": "No valid credentials: a missing, malformed, unknown or revoked token.",
                "headers": {
                    "WWW-Authenticate": {"description": '`Bearer realm="swarm-manager"`', "schema": {"type": "string"}}
                },
                "content": as_json(schema("Error")),
            },
            "Forbidden": {
                "description": (
                    "Credentials that do not allow this: a user token on an admin route or "
                    "acting for another user, an image not in ALLOWED_IMAGES, a session "
                    "without its CSRF token."
                ),
                "content": as_json(schema("Error")),
            },
            "QuotaExceeded": {
                "description": "Over MAX_NOTEBOOKS, MAX_NOTEBOOKS_PER_USER or SPAWN_RATE.",
                "headers": {
                    "Retry-After": {"description": "Seconds until a retry may succeed.", "schema": {"type": "string"}}
                },
                "content": as_json(schema("Error")),
            },
        },
        "headers": {
            "NoStore": {
                "description": (
                    "`no-store`: on every JSON answer and event stream (a record carries its "
                    "notebook's token for its owner, `POST /tokens` a user's token, a ready "
                    "event a notebook's token), so that no cache keeps a secret."
                ),
                "required": True,
                "schema": {"type": "string", "const": "no-store"},
            }
        },
        "pathItems": {
            "Spawn": {
                "post": {
                    "summary": "Spawn a notebook",
                    "description": (
                        "Validates the request, writes a PENDING record and enqueues the spawn. "
                        "Answers at once; follow the record (or its events) until it is ACTIVE or "
                        "FAILED. With a warm pool for the image the answer may already be ACTIVE."
                    ),
                    "tags": ["notebooks"],
                    "requestBody": {"required": True, "content": request_content(SpawnRequest)},
                    "responses": {
                        "202": {
                            "description": "Accepted: the new record.",
                            "headers": {
                                "Cache-Control": {"$ref": "#/components/headers/NoStore"},
                                "Location": {"description": "`/container/<hostname>`", "schema": {"type": "string"}},
                            },
                            "content": as_json(schema("Notebook")),
                        },
                        "400": answer(
                            (
                                "Invalid input (a missing or malformed field, a field given twice, a body "
                                "that is not a JSON object)."
                            ),
                            schema("Error"),
                        ),
                        **errors(401, 403),
                        "413": answer("The body is larger than MAX_BODY.", schema("Error")),
                        "415": answer("The body is neither a form nor JSON.", schema("Error")),
                        **errors(429, 503),
                    },
                }
            },
            "Container": {
                "get": {
                    "summary": "A notebook's record",
                    "tags": ["notebooks"],
                    "parameters": [parameter("Hostname")],
                    "responses": {
                        "200": answer("The record.", schema("Notebook"), no_store=True),
                        **errors(401, 404, 503),
                    },
                    "security": [{"bearer": []}, {"capability": []}],
                },
                "delete": KILL,
            },
            "Kill": {"get": KILL, "post": KILL},
            "Containers": {
                "get": {
                    "summary": "List notebooks, newest first",
                    "tags": ["notebooks"],
                    "parameters": query_parameters(ContainersQuery),
                    "responses": {
                        "200": {
                            "description": "The records.",
                            "headers": NO_STORE,
                            "content": {"application/json": {"schema": {"type": "array", "items": schema("Notebook")}}},
                        },
                        "400": answer("A bad filter or paging value.", schema("Error")),
                        **errors(401, 403, 503),
                    },
                }
            },
            "Healthz": {
                "get": {
                    "summary": "Health",
                    "tags": ["operations"],
                    "responses": {
                        "200": answer("Redis answers.", schema("Health"), no_store=True),
                        "503": {
                            "description": "Redis does not answer.",
                            "headers": {
                                "Retry-After": {
                                    "description": "Seconds to wait before trying again.",
                                    "schema": {"type": "string"},
                                }
                            },
                            "content": as_json(schema("Unhealthy")),
                        },
                    },
                    "security": [],
                }
            },
            "ContainerEvents": {
                "get": {
                    "summary": "A notebook's progress, as Server-Sent Events",
                    "description": (
                        "Starts with the notebook's current state, then every change and the "
                        "workers' progress within a stage; ends once it settles (ACTIVE, FAILED "
                        "or REMOVED) or after a time limit. Each message is `event: <stage>` and "
                        "`data: <JSON Event>`; `: keep-alive` comments every 15 s."
                    ),
                    "tags": ["events"],
                    "parameters": [parameter("Hostname")],
                    "responses": {
                        "200": {
                            "description": "The stream.",
                            "headers": NO_STORE,
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        **errors(401, 404, 503),
                    },
                    "security": [{"bearer": []}, {"capability": []}],
                }
            },
            "Events": {
                "get": {
                    "summary": "Every notebook's changes, as Server-Sent Events",
                    "description": (
                        "Every change and progress message of every notebook (the /manage page "
                        "uses it), for at most 10 minutes per connection; `data` is an Event as "
                        "in `/container/{hostname}/events`."
                    ),
                    "tags": ["events"],
                    "responses": {
                        "200": {
                            "description": "The stream.",
                            "headers": NO_STORE,
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        **errors(401, 503),
                    },
                }
            },
            "Tokens": {
                "post": {
                    "summary": "Create a user token (admin)",
                    "tags": ["tokens"],
                    "requestBody": {
                        "required": True,
                        "content": request_content(TokenRequest),
                    },
                    "responses": {
                        "201": answer(
                            "The token, with its secret (shown this once).", schema("NewToken"), no_store=True
                        ),
                        "400": answer("A missing or invalid user.", schema("Error")),
                        **errors(401, 403),
                        "413": answer("The body is larger than MAX_BODY.", schema("Error")),
                        "415": answer("The body is neither a form nor JSON.", schema("Error")),
                        "503": response("Unavailable"),
                    },
                },
                "get": {
                    "summary": "List live user tokens (admin)",
                    "tags": ["tokens"],
                    "parameters": [
                        {
                            "name": "user",
                            "in": "query",
                            "required": False,
                            "description": "Only this user's.",
                            "schema": {"type": "string", "pattern": f"^$|{USER_RE.pattern}"},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The tokens, newest first.",
                            "headers": NO_STORE,
                            "content": {"application/json": {"schema": {"type": "array", "items": schema("Token")}}},
                        },
                        "400": answer("An invalid user.", schema("Error")),
                        **errors(401, 403, 503),
                    },
                },
            },
            "Token": {
                "delete": {
                    "summary": "Revoke a user token (admin)",
                    "tags": ["tokens"],
                    "description": "It stops working at once, also for a /manage session signed in with it.",
                    "parameters": [parameter("TokenId")],
                    "responses": {
                        "200": answer("The revoked token.", schema("RevokedToken"), no_store=True),
                        **errors(401, 403),
                        "404": answer("No live token with that id.", schema("Error")),
                        "503": response("Unavailable"),
                    },
                }
            },
            "TmpnbSpawn": {
                "post": {
                    "summary": "tmpnb's spawn: a notebook, answered once it is ACTIVE",
                    "description": (
                        "tmpnb's `POST /api/spawn/`. A request that names a `user` and no "
                        "`image_name` is no tmpnb client's: it is the first API's spawn, answered as "
                        "`POST /spawn` answers it (202 at once, the first API's record). Without a "
                        "token it is an anonymous launch: an image ANONYMOUS_IMAGES names, for "
                        "nobody in particular (the record's user is `_anonymous`), living at most "
                        "ANONYMOUS_MAX_AGE, within ANONYMOUS_PER_ADDRESS, ANONYMOUS_SPAWN_RATE "
                        "and ANONYMOUS_MAX_NOTEBOOKS. The answer is the record with `url` the "
                        "notebook's full PUBLIC_URL address (tmpnb's `url`) and, for whoever "
                        "launched it, its `token`: the notebook's capability for its record, "
                        "events and kill (`?token=`). An anonymous launch that is not ready "
                        "within START_TIMEOUT, or whose client leaves before, is killed."
                    ),
                    "tags": ["binder"],
                    "security": [{}, {"bearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": schema("TmpnbSpawnRequest")},
                            "text/plain": {
                                "schema": {"type": "string", "description": "A JSON object, as for application/json."}
                            },
                            "application/x-www-form-urlencoded": {"schema": schema("TmpnbSpawnRequest")},
                        },
                    },
                    "responses": {
                        "200": {
                            "description": (
                                "The notebook is ACTIVE: its record, `url` its full address, and its token."
                            ),
                            "headers": {
                                "Cache-Control": {"$ref": "#/components/headers/NoStore"},
                                "Location": {"description": "`/container/<hostname>`", "schema": {"type": "string"}},
                            },
                            "content": as_json(schema("Notebook")),
                        },
                        "202": {
                            "description": (
                                "`wait` false, or the first API's spawn (a `user` named, no `image_name`): the "
                                "record as it is now (PENDING, or ACTIVE from the pool); its token for "
                                "whoever launched it."
                            ),
                            "headers": {
                                "Cache-Control": {"$ref": "#/components/headers/NoStore"},
                                "Location": {"description": "`/container/<hostname>`", "schema": {"type": "string"}},
                            },
                            "content": as_json(schema("Notebook")),
                        },
                        "400": answer(
                            (
                                "Invalid input (no image, two different images, a body that is not a JSON "
                                "object or a form, a profile or limits asked for by an anonymous launch)."
                            ),
                            schema("Error"),
                        ),
                        **errors(401, 403),
                        "413": answer("The body is larger than MAX_BODY.", schema("Error")),
                        "415": answer("The body is neither JSON nor a form.", schema("Error")),
                        "429": {
                            "description": (
                                "Over a limit (the anonymous ones, MAX_NOTEBOOKS, MAX_NOTEBOOKS_PER_USER, "
                                'SPAWN_RATE): tmpnb\'s `{"status": "full"}`.'
                            ),
                            "headers": {
                                "Retry-After": {
                                    "description": "Seconds until a retry may succeed.",
                                    "schema": {"type": "string"},
                                }
                            },
                            "content": as_json(schema("Full")),
                        },
                        "502": answer("The notebook failed to start (the reason in `error`).", schema("Error")),
                        "503": response("Unavailable"),
                        "504": answer(
                            ("The notebook was not ACTIVE within START_TIMEOUT (an anonymous one is killed)."),
                            schema("Error"),
                        ),
                    },
                }
            },
            "Build": {
                "get": {
                    "summary": "BinderHub's launch: a notebook for a repository spec, as an event stream",
                    "description": (
                        "BinderHub's `GET /build/<provider>/<spec>` (thebe's Binder mode, Jupyter "
                        "Book, MyST). PROFILES_FILE's `binder` list maps `<provider>/<spec>` to "
                        "an image (and optionally a profile); a pooled image is ready at once. "
                        "Without a token it is an anonymous launch, as on `POST /api/spawn`. "
                        "Every answer but a refused token is an event stream, errors too, in "
                        "BinderHub's format: unnamed `data:` messages, each a JSON object with "
                        "`phase` and `message`: `built` (with `imageName`), `launching` (each "
                        "stage), then `ready` with `url` (the notebook's full PUBLIC_URL address, "
                        "ending in `/`), `token` (its capability too) and `hostname`, or `failed` "
                        "with the reason (and `status_code`: 404 for a spec nobody mapped, 403 "
                        "for an image not allowed, 429 over a limit, 504 not ready in time). The "
                        "stream ends after `ready` or `failed`; `: keepalive` comments every 15 s "
                        "meanwhile. An anonymous launch whose client leaves before `ready` is "
                        "killed."
                    ),
                    "tags": ["binder"],
                    "security": [{}, {"bearer": []}],
                    "parameters": [
                        {
                            "name": "provider",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[a-z0-9-]+$", "maxLength": 20},
                            "description": "BinderHub's provider prefix: `gh`, `gl`, `git`, `gist`, ...",
                        },
                        {
                            "name": "spec",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 500},
                            "description": "The provider's spec, `/` included: for `gh`, `<org>/<repo>/<ref>`.",
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The launch's events.",
                            "headers": NO_STORE,
                            "content": {
                                "text/event-stream": {
                                    "schema": {
                                        "type": "object",
                                        "description": "An unnamed event whose data is a BinderEvent.",
                                        "properties": {
                                            "data": {
                                                "type": "string",
                                                "contentMediaType": "application/json",
                                                "contentSchema": schema("BinderEvent"),
                                            },
                                            "event": {"const": "message"},
                                        },
                                        "required": ["data"],
                                    }
                                }
                            },
                        },
                        **errors(401, 404, 503),
                    },
                }
            },
        },
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": (
                    "With AUTH on (the default): the admin token (ADMIN_TOKEN) or a user "
                    "token from POST /tokens. With AUTH=off no credentials are needed (every "
                    "caller is the admin). The /manage page signs in with a session cookie "
                    "instead."
                ),
            },
            "capability": {
                "type": "apiKey",
                "in": "query",
                "name": "token",
                "description": (
                    "A notebook's own token (its `token` field, as its launch answered it): "
                    "opens that notebook's record, events and kills (not the GET kill), and "
                    "nothing else. A wrong token is the 404 of an unknown notebook. For a "
                    "browser's EventSource, which cannot send headers."
                ),
            },
        },
    },
    "security": [{"bearer": []}],
}

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

#: The three kills (DELETE /container/{hostname}, GET and POST /container/{hostname}/kill).
KILL: dict[str, Any] = {
    "summary": "Kill a notebook",
    "description": (
        "Marks it DELETING and enqueues the kill; a no-op (200) for a notebook "
        "already deleting, removed or failed. The same for `DELETE "
        "/container/{hostname}`, `GET` and `POST /container/{hostname}/kill`."
    ),
    "tags": ["notebooks"],
    "parameters": [{"$ref": "#/components/parameters/Hostname"}],
    "responses": {
        "200": {
            "description": "Nothing to do: the record, already DELETING, REMOVED or FAILED.",
            "headers": {"Cache-Control": {"$ref": "#/components/headers/NoStore"}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Notebook"}}},
        },
        "202": {
            "description": "A kill was started: the record, now DELETING.",
            "headers": {"Cache-Control": {"$ref": "#/components/headers/NoStore"}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Notebook"}}},
        },
        "401": {"$ref": "#/components/responses/Unauthorized"},
        "403": {"$ref": "#/components/responses/Forbidden"},
        "404": {"$ref": "#/components/responses/NotFound"},
        "503": {"$ref": "#/components/responses/Unavailable"},
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
        "/spawn": {"$ref": "#/components/pathItems/Spawn"},
        "/container/{hostname}": {"$ref": "#/components/pathItems/Container"},
        "/container/{hostname}/kill": {"$ref": "#/components/pathItems/Kill"},
        "/container/{hostname}/events": {"$ref": "#/components/pathItems/ContainerEvents"},
        "/containers": {"$ref": "#/components/pathItems/Containers"},
        "/events": {"$ref": "#/components/pathItems/Events"},
        "/healthz": {"$ref": "#/components/pathItems/Healthz"},
        "/api/spawn": {"$ref": "#/components/pathItems/TmpnbSpawn"},
        "/api/container/{hostname}": {"$ref": "#/components/pathItems/Container"},
        "/api/container/{hostname}/kill": {"$ref": "#/components/pathItems/Kill"},
        "/api/container/{hostname}/events": {"$ref": "#/components/pathItems/ContainerEvents"},
        "/api/containers": {"$ref": "#/components/pathItems/Containers"},
        "/api/events": {"$ref": "#/components/pathItems/Events"},
        "/api/healthz": {"$ref": "#/components/pathItems/Healthz"},
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
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "403": {"$ref": "#/components/responses/Forbidden"},
                    "503": {"$ref": "#/components/responses/Unavailable"},
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
                    "200": {
                        "description": "The listed images and the nodes.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Nodes"}}},
                    },
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "403": {"$ref": "#/components/responses/Forbidden"},
                    "503": {"$ref": "#/components/responses/Unavailable"},
                },
            }
        },
        "/tokens": {"$ref": "#/components/pathItems/Tokens"},
        "/tokens/{token_id}": {"$ref": "#/components/pathItems/Token"},
        "/build/{provider}/{spec}": {"$ref": "#/components/pathItems/Build"},
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
                        "oneOf": [{"$ref": "#/components/schemas/Status"}, {"type": "null"}],
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
                    "record": {"oneOf": [{"$ref": "#/components/schemas/Notebook"}, {"type": "null"}]},
                },
                "required": ["hostname", "status", "stage", "message", "record"],
            },
            "Token": {
                "type": "object",
                "description": "A user token, without its secret.",
                "properties": {
                    "id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                    "user": {"type": "string"},
                    "created": {"$ref": "#/components/schemas/Time"},
                },
                "required": ["id", "user", "created"],
            },
            "NewToken": {
                "type": "object",
                "description": "A new user token: the secret is shown only here.",
                "properties": {
                    "id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                    "user": {"type": "string"},
                    "created": {"$ref": "#/components/schemas/Time"},
                    "token": {"type": "string"},
                },
                "required": ["id", "user", "created", "token"],
            },
            "RevokedToken": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                    "user": {"type": "string"},
                    "created": {"$ref": "#/components/schemas/Time"},
                    "revoked": {"$ref": "#/components/schemas/Time"},
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
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
            "Unavailable": {
                "description": "Redis or the task queue is unavailable.",
                "headers": {
                    "Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "string"}}
                },
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
            "Unauthorized": {
                "description": "No valid credentials: a missing, malformed, unknown or revoked token.",
                "headers": {
                    "WWW-Authenticate": {"description": '`Bearer realm="swarm-manager"`', "schema": {"type": "string"}}
                },
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
            "Forbidden": {
                "description": (
                    "Credentials that do not allow this: a user token on an admin route or "
                    "acting for another user, an image not in ALLOWED_IMAGES, a session "
                    "without its CSRF token."
                ),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
            "QuotaExceeded": {
                "description": "Over MAX_NOTEBOOKS, MAX_NOTEBOOKS_PER_USER or SPAWN_RATE.",
                "headers": {
                    "Retry-After": {"description": "Seconds until a retry may succeed.", "schema": {"type": "string"}}
                },
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
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
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Notebook"}}},
                        },
                        "400": {
                            "description": (
                                "Invalid input (a missing or malformed field, a field given twice, a body "
                                "that is not a JSON object)."
                            ),
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                        },
                        "401": {"$ref": "#/components/responses/Unauthorized"},
                        "403": {"$ref": "#/components/responses/Forbidden"},
                        "413": {
                            "description": "The body is larger than MAX_BODY.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                        },
                        "415": {
                            "description": "The body is neither a form nor JSON.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                        },
                        "429": {"$ref": "#/components/responses/QuotaExceeded"},
                        "503": {"$ref": "#/components/responses/Unavailable"},
                    },
                }
            },
            "Container": {
                "get": {
                    "summary": "A notebook's record",
                    "tags": ["notebooks"],
                    "parameters": [{"$ref": "#/components/parameters/Hostname"}],
                    "responses": {
                        "200": {
                            "description": "The record.",
                            "headers": {"Cache-Control": {"$ref": "#/components/headers/NoStore"}},
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Notebook"}}},
                        },
                        "401": {"$ref": "#/components/responses/Unauthorized"},
                        "404": {"$ref": "#/components/responses/NotFound"},
                        "503": {"$ref": "#/components/responses/Unavailable"},
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
                            "headers": {"Cache-Control": {"$ref": "#/components/headers/NoStore"}},
                            "content": {
                                "application/json": {
                                    "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Notebook"}}
                                }
                            },
                        },
                        "400": {
                            "description": "A bad filter or paging value.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                        },
                        "401": {"$ref": "#/components/responses/Unauthorized"},
                        "403": {"$ref": "#/components/responses/Forbidden"},
                        "503": {"$ref": "#/components/responses/Unavailable"},
                    },
                }
            },
            "Healthz": {
                "get": {
                    "summary": "Health",
                    "tags": ["operations"],
                    "responses": {
                        "200": {
                            "description": "Redis answers.",
                            "headers": {"Cache-Control": {"$ref": "#/components/headers/NoStore"}},
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                        },
                        "503": {
                            "description": "Redis does not answer.",
                            "headers": {
                                "Retry-After": {
                                    "description": "Seconds to wait before trying again.",
                                    "schema": {"type": "string"},
                                }
                            },
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Unhealthy"}}},
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
                    "parameters": [{"$ref": "#/components/parameters/Hostname"}],
                    "responses": {
                        "200": {
                            "description": "The stream.",
                            "headers": {"Cache-Control": {"$ref": "#/components/headers/NoStore"}},
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "401": {"$ref": "#/components/responses/Unauthorized"},
                        "404": {"$ref": "#/components/responses/NotFound"},
                        "503": {"$ref": "#/components/responses/Unavailable"},
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
                            "headers": {"Cache-Control": {"$ref": "#/components/headers/NoStore"}},
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "401": {"$ref": "#/components/responses/Unauthorized"},
                        "503": {"$ref": "#/components/responses/Unavailable"},
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
                        "201": {
                            "description": "The token, with its secret (shown this once).",
                            "headers": {"Cache-Control": {"$ref": "#/components/headers/NoStore"}},
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewToken"}}},
                        },
                        "400": {
                            "description": "A missing or invalid user.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                        },
                        "401": {"$ref": "#/components/responses/Unauthorized"},
                        "403": {"$ref": "#/components/responses/Forbidden"},
                        "413": {
                            "description": "The body is larger than MAX_BODY.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                        },
                        "415": {
                            "description": "The body is neither a form nor JSON.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                        },
                        "503": {"$ref": "#/components/responses/Unavailable"},
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
                            "headers": {"Cache-Control": {"$ref": "#/components/headers/NoStore"}},
                            "content": {
                                "application/json": {
                                    "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Token"}}
                                }
                            },
                        },
                        "400": {
                            "description": "An invalid user.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                        },
                        "401": {"$ref": "#/components/responses/Unauthorized"},
                        "403": {"$ref": "#/components/responses/Forbidden"},
                        "503": {"$ref": "#/components/responses/Unavailable"},
                    },
                },
            },
            "Token": {
                "delete": {
                    "summary": "Revoke a user token (admin)",
                    "tags": ["tokens"],
                    "description": "It stops working at once, also for a /manage session signed in with it.",
                    "parameters": [{"$ref": "#/components/parameters/TokenId"}],
                    "responses": {
                        "200": {
                            "description": "The revoked token.",
                            "headers": {"Cache-Control": {"$ref": "#/components/headers/NoStore"}},
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RevokedToken"}}},
                        },
                        "401": {"$ref": "#/components/responses/Unauthorized"},
                        "403": {"$ref": "#/components/responses/Forbidden"},
                        "404": {
                            "description": "No live token with that id.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                        },
                        "503": {"$ref": "#/components/responses/Unavailable"},
                    },
                }
            },
            "TmpnbSpawn": {
                "post": {
                    "summary": "tmpnb's spawn: a notebook, answered once it is ACTIVE",
                    "description": (
                        "tmpnb's `POST /api/spawn/`. A request that names a `user` and no "
                        "`image_name` is no tmpnb client's: it is the seed's spawn, answered as "
                        "`POST /spawn` answers it (202 at once, the seed's record). Without a "
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
                            "application/json": {"schema": {"$ref": "#/components/schemas/TmpnbSpawnRequest"}},
                            "text/plain": {
                                "schema": {"type": "string", "description": "A JSON object, as for application/json."}
                            },
                            "application/x-www-form-urlencoded": {
                                "schema": {"$ref": "#/components/schemas/TmpnbSpawnRequest"}
                            },
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
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Notebook"}}},
                        },
                        "202": {
                            "description": (
                                "`wait` false, or the seed's spawn (a `user` named, no `image_name`): the "
                                "record as it is now (PENDING, or ACTIVE from the pool); its token for "
                                "whoever launched it."
                            ),
                            "headers": {
                                "Cache-Control": {"$ref": "#/components/headers/NoStore"},
                                "Location": {"description": "`/container/<hostname>`", "schema": {"type": "string"}},
                            },
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Notebook"}}},
                        },
                        "400": {
                            "description": (
                                "Invalid input (no image, two different images, a body that is not a JSON "
                                "object or a form, a profile or limits asked for by an anonymous launch)."
                            ),
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                        },
                        "401": {"$ref": "#/components/responses/Unauthorized"},
                        "403": {"$ref": "#/components/responses/Forbidden"},
                        "413": {
                            "description": "The body is larger than MAX_BODY.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                        },
                        "415": {
                            "description": "The body is neither JSON nor a form.",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                        },
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
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Full"}}},
                        },
                        "502": {
                            "description": "The notebook failed to start (the reason in `error`).",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                        },
                        "503": {"$ref": "#/components/responses/Unavailable"},
                        "504": {
                            "description": (
                                "The notebook was not ACTIVE within START_TIMEOUT (an anonymous one is killed)."
                            ),
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                        },
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
                            "headers": {"Cache-Control": {"$ref": "#/components/headers/NoStore"}},
                            "content": {
                                "text/event-stream": {
                                    "schema": {
                                        "type": "object",
                                        "description": "An unnamed event whose data is a BinderEvent.",
                                        "properties": {
                                            "data": {
                                                "type": "string",
                                                "contentMediaType": "application/json",
                                                "contentSchema": {"$ref": "#/components/schemas/BinderEvent"},
                                            },
                                            "event": {"const": "message"},
                                        },
                                        "required": ["data"],
                                    }
                                }
                            },
                        },
                        "401": {"$ref": "#/components/responses/Unauthorized"},
                        "404": {"$ref": "#/components/responses/NotFound"},
                        "503": {"$ref": "#/components/responses/Unavailable"},
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

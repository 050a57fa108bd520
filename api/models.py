"""The JSON API's request and response shapes, defined once: they validate what comes in and
make the schemas of the OpenAPI document (``api/openapi.py`` builds ``api/openapi.json`` from them).

Each rule is the one in ``shared/validation.py`` (image grammar and length, user names, ttl);
the validators call it and raise its :class:`~shared.errors.InvalidInput`, which pydantic lets
through as it is (it wraps only ValueError and AssertionError), so the first bad field in field
order is the 400's message, as the routes have always said it. What pydantic itself refuses
(a required field left out, a wrong type) becomes the same InvalidInput in :func:`parse`.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema

from shared.errors import InvalidInput
from shared.status import Status
from shared.validation import (
    HOSTNAME_RE,
    IMAGE_MAX_LENGTH,
    IMAGE_PATTERN,
    MAX_TTL,
    TTL_PATTERN,
    USER_RE,
    parse_whole,
    validate_image,
    validate_ttl,
    validate_user,
)

#: The longest a notebook may live when MAX_AGE is 0 ("no limit") and its spawn gives a ttl: ten
#: years. A ttl is capped by it as by MAX_AGE; uncapped, 999999999999 s would end in year 33715,
#: past the last date the records can hold.
MAX_LIFETIME = 10 * 365 * 86400
#: The most records one page of ``GET /containers`` holds.
MAX_LIST_LIMIT = 10_000
#: The furthest ``GET /containers`` pages in.
MAX_LIST_OFFSET = 10**9

Model = TypeVar("Model", bound=BaseModel)


def parse(model: type[Model], data: dict[str, Any]) -> Model:
    """``data`` (a JSON object, a form or query parameters) as ``model``; raises InvalidInput (400)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or "the body"
        if first["type"] == "missing":
            raise InvalidInput(f"{field} is required") from None
        raise InvalidInput(f"{field}: {first['msg']}") from None


# -- POST /spawn ----------------------------------------------------------------------------------
IMAGE_DESCRIPTION = (
    "Docker image reference, e.g. `jupyter/minimal-notebook:latest` (the engine's grammar; lower-case "
    "repository name; a registry host and a digest are accepted too). With ALLOWED_IMAGES set, one it allows."
)
USER_DESCRIPTION = "1-64 characters of letters, digits and . _ @ + -, starting with a letter or digit."


class SpawnRequest(BaseModel):
    """``POST /spawn``: a form (the first API's curl) or a JSON object, with the first API's field
    names. Fields it does not know are ignored, as they always were."""

    model_config = ConfigDict(
        extra="ignore",
        # user may be left out with a user token (spawn_user fills it in before validation).
        json_schema_extra={"required": ["image"], "description": "A spawn: the first API's fields."},
    )

    image: Annotated[
        str,
        BeforeValidator(validate_image),
        WithJsonSchema(
            {
                "type": "string",
                "maxLength": IMAGE_MAX_LENGTH,
                "pattern": IMAGE_PATTERN,
                "description": IMAGE_DESCRIPTION,
            }
        ),
    ] = Field(default=None, validate_default=True)  # None: "image is required", in field order
    user: Annotated[
        str,
        BeforeValidator(validate_user),
        WithJsonSchema(
            {
                "type": "string",
                "pattern": USER_RE.pattern,
                "description": "Whose notebook it is: "
                + USER_DESCRIPTION
                + " Required with the admin token (or AUTH=off); a user token spawns for its own user, "
                "so leave it out or name that user (anyone else: 403).",
            }
        ),
    ] = Field(default=None, validate_default=True)
    ttl: Annotated[
        int | None,
        BeforeValidator(validate_ttl),
        WithJsonSchema(
            {
                "description": "Seconds it may live, capped by MAX_AGE "
                f'(with MAX_AGE=0, "no limit", by ten years: {MAX_LIFETIME}).',
                "oneOf": [
                    {"type": "integer", "minimum": 1, "maximum": MAX_TTL},
                    {"type": "string", "pattern": TTL_PATTERN},
                ],
            }
        ),
    ] = None
    # The profile and its limits are checked against PROFILES_FILE (shared/profiles.py), which
    # knows what each profile allows: passed on as they came.
    profile: Annotated[
        object,
        WithJsonSchema(
            {
                "type": "string",
                "description": "A profile name from PROFILES_FILE (default: the image's own, if any).",
            }
        ),
    ] = None
    mem_limit: Annotated[
        object,
        WithJsonSchema(
            {
                "description": "Memory limit (e.g. `2g`), if the profile lets users choose.",
                "oneOf": [{"type": "string"}, {"type": "integer", "minimum": 0}],
            }
        ),
    ] = None
    cpu_limit: Annotated[
        object,
        WithJsonSchema(
            {
                "description": "CPUs (e.g. `1.5`), if the profile lets users choose.",
                "oneOf": [{"type": "string"}, {"type": "number", "minimum": 0}],
            }
        ),
    ] = None


#: The spawn's fields, as a form or a JSON object names them.
SPAWN_FIELDS = tuple(SpawnRequest.model_fields)


# -- POST /tokens ---------------------------------------------------------------------------------
class TokenRequest(BaseModel):
    """``POST /tokens`` (a form or a JSON object): whom the new user token acts as."""

    model_config = ConfigDict(
        extra="ignore", json_schema_extra={"description": "A new user token.", "required": ["user"]}
    )

    user: Annotated[
        str,
        BeforeValidator(validate_user),
        WithJsonSchema(
            {"type": "string", "pattern": USER_RE.pattern, "description": "The user it acts as: " + USER_DESCRIPTION}
        ),
    ] = Field(default=None, validate_default=True)


# -- GET /containers ---------------------------------------------------------------------------------
def _absent(value: object) -> bool:
    return value is None or value == ""


def _optional_user(value: object) -> str | None:
    return None if _absent(value) else validate_user(value)


def _status(value: object) -> Status | None:
    if _absent(value):
        return None
    try:
        return Status(str(value).upper())
    except ValueError:
        raise InvalidInput(f"status must be one of {', '.join(s.value for s in Status)}") from None


def _whole(name: str, lo: int, hi: int, absent: int | None = None) -> BeforeValidator:
    def check(value: object) -> int | None:
        if _absent(value):
            return absent
        try:
            number: int | None = parse_whole(value) if isinstance(value, str) else None  # ASCII digits only
        except ValueError:
            number = None
        if number is None or not lo <= number <= hi:
            raise InvalidInput(f"{name} must be a whole number from {lo} to {hi}")
        return number

    return BeforeValidator(check)


class ContainersQuery(BaseModel):
    """``GET /containers``'s query parameters; an empty one means "no filter" (or its default)."""

    model_config = ConfigDict(extra="ignore")

    user: Annotated[
        str | None,
        BeforeValidator(_optional_user),
        WithJsonSchema(
            {
                "type": "string",
                "pattern": f"^$|{USER_RE.pattern}",
                "description": "Only this user's notebooks (empty: all).",
            }
        ),
    ] = None
    status: Annotated[
        Status | None,
        BeforeValidator(_status),
        WithJsonSchema(
            {
                "type": "string",
                "enum": ["", *(s.value for s in Status)],
                "description": "Only notebooks in this status (any letter case; empty: all).",
            }
        ),
    ] = None
    offset: Annotated[
        int,
        _whole("offset", 0, MAX_LIST_OFFSET, absent=0),
        WithJsonSchema(
            {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_LIST_OFFSET,
                "description": "Skip this many.",
            }
        ),
    ] = 0
    limit: Annotated[
        int | None,
        _whole("limit", 1, MAX_LIST_LIMIT),
        WithJsonSchema(
            {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_LIST_LIMIT,
                "description": "At most this many (default: all).",
            }
        ),
    ] = None


# -- the record as served ------------------------------------------------------------------------------
_RFC3339 = "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?Z"
#: A time as records hold it (shared/record.py rfc3339).
TIME = {"type": "string", "pattern": f"^{_RFC3339}$", "description": "RFC 3339, UTC."}
OPTIONAL_TIME = {"type": "string", "pattern": f"^$|^{_RFC3339}$", "description": "RFC 3339, UTC; empty for none."}


def _text(description: str) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "description": description})


class NotebookRecord(BaseModel):
    """A notebook's record as every route serves it (``api/routes.py`` public_record): the fields
    of ``shared.record.Notebook`` in its order, then those only its owner and the admin get.

    The routes write records straight from the store (thousands per listing); this model is the
    record's contract, which the document states and tests/test_openapi.py holds the answers to.
    """

    model_config = ConfigDict(
        extra="forbid", title="Notebook", json_schema_extra={"description": "A notebook's record."}
    )

    hostname: Annotated[
        str,
        WithJsonSchema(
            {
                "type": "string",
                "pattern": HOSTNAME_RE.pattern,
                "description": "12 characters of [0-9a-z] from a cryptographic random source; names the notebook.",
            }
        ),
    ]
    domainname: Annotated[str, _text("The wildcard domain (DOMAIN).")]
    image: Annotated[str, _text("Docker image reference of the notebook server.")]
    url: Annotated[str, _text("`<hostname>.<DOMAIN>`: where the reverse proxy serves it.")]
    container_id: Annotated[str, _text("Engine object id (container, or Swarm service); empty until started.")]
    status: Status
    start_time: Annotated[str, WithJsonSchema(TIME)]
    user: Annotated[str, _text("Whose notebook it is.")]
    error: Annotated[str, _text("Why it FAILED, or why it left ACTIVE; empty otherwise.")]
    updated_at: Annotated[str, WithJsonSchema(TIME)]
    address: Annotated[str, _text("The notebook server's direct `http://host:port`; empty until started.")]
    node: Annotated[str, _text("The engine node it runs on; empty until started.")]
    expires_at: Annotated[
        str,
        WithJsonSchema({**OPTIONAL_TIME, "description": "When it will be killed for age; empty for never."}),
    ]
    profile: Annotated[str, _text("The profile it was spawned with; empty for none.")]
    token: Annotated[
        str, _text("Only for its owner and the admin: the notebook server's own token (empty for none).")
    ] = ""
    notebook_url: Annotated[
        str,
        _text(
            "Only for its owner and the admin: the notebook's address (PUBLIC_URL) with `?token=<token>`, "
            "ready to open."
        ),
    ] = ""
    public_url: Annotated[
        str,
        _text(
            "Only for its owner and the admin: the notebook's address (PUBLIC_URL), e.g. "
            "`https://<hostname>.<DOMAIN>/`, without the token."
        ),
    ] = ""


# -- the schemas, for the OpenAPI document (api/apidoc.py) -------------------------------------------------
REF = "#/components/schemas/{model}"
#: Forms carry text only: of a field's alternatives, a form documents its string one.
FORM_CONTENT = ("application/x-www-form-urlencoded", "multipart/form-data")


def _tidy(node: Any) -> Any:
    """A pydantic schema as the document spells it: without the titles pydantic derives from field
    names, and without the defaults that only say "absent" (None, "")."""
    if isinstance(node, dict):
        return {
            key: _tidy(value)
            for key, value in node.items()
            if not (key == "title" and isinstance(value, str)) and not (key == "default" and value in (None, ""))
        }
    if isinstance(node, list):
        return [_tidy(value) for value in node]
    return node


def component(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s schema for ``components/schemas``. The enums it refers to are components of
    their own (:func:`status_schema`), so pydantic's copies of them (``$defs``) are left out."""
    schema = dict(_tidy(model.model_json_schema(ref_template=REF)))
    schema.pop("$defs", None)
    return schema


def status_schema() -> dict[str, Any]:
    return {
        "type": "string",
        "enum": [s.value for s in Status],
        "description": "PENDING -> STARTING -> ACTIVE; any of those -> FAILED or DELETING -> REMOVED.",
    }


def _as_form(schema: dict[str, Any]) -> dict[str, Any]:
    properties = {}
    for name, prop in schema["properties"].items():
        choices = [c for c in prop.get("oneOf", ()) if c.get("type") == "string"]
        if choices:
            prop = {**{k: v for k, v in prop.items() if k != "oneOf"}, **choices[0]}
        properties[name] = prop
    return {"type": "object", "properties": properties, "required": schema["required"]}


def request_content(model: type[BaseModel]) -> dict[str, Any]:
    """A request body of ``model`` as a form (either encoding) or as JSON (its component)."""
    form = {"schema": _as_form(component(model))}
    return {
        **{mimetype: form for mimetype in FORM_CONTENT},
        "application/json": {"schema": {"$ref": REF.format(model=model.__name__)}},
    }


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """``model``'s fields as optional query parameters."""
    out = []
    for name, prop in component(model)["properties"].items():
        schema = {k: v for k, v in prop.items() if k != "description"}
        out.append(
            {"name": name, "in": "query", "required": False, "description": prop["description"], "schema": schema}
        )
    return out

"""Authentication and roles, in one place.

With ``AUTH`` on (the default) one ``before_request`` (:func:`authenticate`) resolves every
request's caller into ``g.caller`` before any view runs, from either

- ``Authorization: Bearer <token>``: the admin token (``ADMIN_TOKEN``) or a user token
  (``shared/auth.py``); a header that is there but not a live token is 401 at once, or
- the /manage session cookie, set by signing in with a token on the page. Unsafe methods
  through the cookie need the session's CSRF token (form field ``csrf_token`` or header
  ``X-CSRF-Token``), and the seed's ``GET /container/<h>/kill`` never accepts the cookie (a GET
  must not be a cross-site request forgery vector); it works with a Bearer token only.

and answers what the route's policy (:data:`POLICY`, by view function) needs: public routes
(``/healthz``, the OpenAPI document, static files, the sign-in form), admin-only routes
(``/metrics``, ``/tokens``), and everything else for any caller. What a user token may touch
within a route is decided by three helpers the routes call: :func:`spawn_user` (a user spawns
only for itself), :func:`check_visible` (another user's notebook is 404, like an unknown one:
no enumeration) and :func:`scoped_user` / :func:`event_filter` (lists and the events stream
show only its own). The admin sees and kills everything. With ``AUTH=off`` every caller is the
admin (and a WARNING says so at start-up).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, redirect, render_template, request, session, url_for
from flask.sessions import NullSession, SecureCookieSessionInterface
from flask.typing import ResponseReturnValue
from markupsafe import Markup

from shared.auth import ADMIN, USER, Tokens, is_admin_token
from shared.errors import ConfigError, Forbidden, NotFound, StoreUnavailable, Unauthorized
from shared.record import Notebook
from shared.settings import Settings
from shared.store import Event, Store

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__, template_folder="templates")

#: How a caller proved who it is.
BEARER, SESSION, OPEN = "bearer", "session", "open"
#: Route policies.
PUBLIC, ANY, ADMIN_ONLY, PAGE = "public", "any", "admin", "page"
#: Policy of each view function that is not ANY (by module and name, so a blueprint registered
#: twice, e.g. under /api/, has one policy).
POLICY: dict[str, str] = {
    "api.routes.healthz": PUBLIC,
    "api.openapi.openapi": PUBLIC,
    "api.auth.signin": PUBLIC,
    "api.auth.signout": PUBLIC,  # checks the session's CSRF token itself
    "api.metrics.metrics": ADMIN_ONLY,
    "api.tokens.create": ADMIN_ONLY,
    "api.tokens.listing": ADMIN_ONLY,
    "api.tokens.revoke": ADMIN_ONLY,
    "api.manage.page": PAGE,  # without credentials: the sign-in form
}
#: Views that kill on a GET: a Bearer token only, never the cookie.
KILLS_ON_GET = {"api.routes.kill"}
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_FIELD, CSRF_HEADER = "csrf_token", "X-CSRF-Token"
SESSION_LIFETIME = timedelta(hours=12)


@dataclass(frozen=True)
class Caller:
    """Who is asking: the admin (``user`` None) or a user token acting as ``user``."""

    role: str
    user: str | None
    via: str

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


EVERYONE = Caller(ADMIN, None, OPEN)  # AUTH=off


def settings() -> Settings:
    return current_app.extensions["settings"]


def tokens() -> Tokens:
    return current_app.extensions["tokens"]


# -- set-up ------------------------------------------------------------------------------
class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, signed with SECRET_KEY or else the key generated once in
    Redis, so every gunicorn worker (and every API replica) accepts the others' cookies."""

    def get_signing_serializer(self, app: Flask) -> Any:
        if not app.secret_key and app.extensions["settings"].auth:
            try:
                app.secret_key = app.extensions["tokens"].session_secret()
            except StoreUnavailable:
                return None  # no session for this request; whatever needs one answers 503
        return super().get_signing_serializer(app)


def init_app(app: Flask) -> None:
    """Check the settings, install the session, the before_request and CORS on ``app``."""
    s: Settings = app.extensions["settings"]
    store: Store = app.extensions["store"]
    app.extensions["tokens"] = Tokens(store.redis, store.prefix)
    if s.auth and not s.admin_token:
        raise ConfigError(
            "AUTH is on but ADMIN_TOKEN is empty: set ADMIN_TOKEN (at least 16 characters), "
            "or AUTH=off on a private machine"
        )
    if not s.auth:
        log.warning(
            "!!! AUTH is off: anyone who can reach this API can spawn, list and kill every notebook "
            "and watch every event. Turn it on (AUTH=on with ADMIN_TOKEN) anywhere but a private machine."
        )
    if s.secret_key:
        app.secret_key = s.secret_key
    app.session_interface = SessionInterface()
    app.config.update(
        # Per instance: two deployments on one host (cookies ignore ports) keep their sessions apart.
        SESSION_COOKIE_NAME=f"{s.instance}-session",
        SESSION_COOKIE_HTTPONLY=True,
        # Lax: a link from elsewhere to /manage keeps the session; every GET is harmless (the GET
        # kill refuses the cookie) and every POST needs the CSRF token anyway.
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=s.session_cookie_secure,
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )
    app.register_blueprint(bp)
    # A renamed view would silently fall back to ANY (admin-only routes open to users): refuse to start.
    views = {f"{view.__module__}.{view.__name__}" for view in app.view_functions.values()}
    if unknown := sorted((set(POLICY) | KILLS_ON_GET) - views):
        raise RuntimeError(f"api/auth.py names views the app does not have: {unknown}")
    app.before_request(authenticate)
    app.context_processor(lambda: {"caller": g.get("caller"), "csrf_token": csrf_token, "csrf_field": csrf_field})
    if s.cors_origins:
        from flask_cors import CORS

        # Exact origins (flask-cors would read "[", "?" and the like in a string as a regex), and
        # Bearer tokens only: no cookies cross-origin (supports_credentials stays off).
        origins = [re.compile(re.escape(origin) + r"\Z", re.IGNORECASE) for origin in s.cors_origins]
        CORS(
            app,
            origins=origins,
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Location", "Retry-After", "WWW-Authenticate"],
            methods=["GET", "POST", "DELETE"],
            supports_credentials=False,
            always_send=False,
            max_age=600,
        )
        app.after_request(vary_on_origin)


def vary_on_origin(response: Response) -> Response:
    """Every answer depends on Origin once CORS is on (allowed ones get the header): tell caches."""
    response.vary.add("Origin")
    return response


# -- who is asking ---------------------------------------------------------------------------
def policy_of(endpoint: str | None) -> str:
    """The route's policy; ANY also when no route matched (a caller gets the 404/405, others a 401)."""
    return PUBLIC if endpoint == "static" else POLICY.get(view_name(endpoint), ANY)


def view_name(endpoint: str | None) -> str:
    view = current_app.view_functions.get(endpoint or "")
    return f"{view.__module__}.{view.__name__}" if view else ""


def admin_marker() -> str:
    """What a session of the admin holds: changes (signing everyone out) when ADMIN_TOKEN does.

    Keyed with the session key, so a cookie that leaks is no oracle for guessing the admin token.
    """
    key = current_app.secret_key or ""
    key_bytes = key.encode() if isinstance(key, str) else bytes(key)
    mac = hmac.new(key_bytes, b"admin-session:" + settings().admin_token.encode(), hashlib.sha256)
    return "admin:" + mac.hexdigest()[:32]


def resolve_token(secret: str) -> tuple[Caller | None, str]:
    """The caller a token makes, and what a session remembers of it; (None, "") for no live token."""
    if is_admin_token(secret, settings().admin_token):
        return Caller(ADMIN, None, BEARER), admin_marker()
    token = tokens().find(secret)
    if token is None:
        return None, ""
    return Caller(USER, token.user, BEARER), f"token:{token.id}"


def from_bearer() -> Caller:
    scheme, _, secret = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("the Authorization header must be: Bearer <token>", invalid=True)
    caller, _ = resolve_token(secret.strip())
    if caller is None:
        raise Unauthorized("the token is not valid (unknown or revoked)", invalid=True)
    return caller


def from_session() -> Caller | None:
    marker = session.get("auth")
    if not isinstance(marker, str):
        return None
    kind, _, value = marker.partition(":")
    if kind == "admin" and hmac.compare_digest(marker, admin_marker()):
        return Caller(ADMIN, None, SESSION)
    if kind == "token":
        token = tokens().get(value)  # revoked: gone, and so is the session
        if token is not None:
            return Caller(USER, token.user, SESSION)
    session.pop("auth", None)
    return None


def authenticate() -> ResponseReturnValue | None:
    """before_request: set ``g.caller``, or answer 401/403 before the view runs."""
    if not settings().auth:
        g.caller = EVERYONE
        return None
    if request.method == "OPTIONS":
        return None  # CORS preflight and Allow: no view runs, nothing is read
    policy = policy_of(request.endpoint)
    if policy == PUBLIC:
        g.caller = None  # /healthz answers whatever token comes with it, without reading one
        return None
    caller = from_bearer() if "Authorization" in request.headers else from_session()
    g.caller = caller
    if caller is None:
        if policy == PAGE and request.method in ("GET", "HEAD"):
            return signin_page(401)
        raise Unauthorized()
    if caller.via == SESSION:
        if request.method in UNSAFE_METHODS:
            check_csrf()
        elif view_name(request.endpoint) in KILLS_ON_GET:
            raise Forbidden("a GET kill needs Authorization: Bearer <token>; the page kills with a POST")
    if policy == ADMIN_ONLY and not caller.is_admin:
        raise Forbidden("only the admin may do this")
    return None


def caller() -> Caller:
    """The request's caller (set by :func:`authenticate`); fails closed when there is none."""
    found = g.get("caller")
    if isinstance(found, Caller):
        return found
    if not settings().auth:
        return EVERYONE
    raise Unauthorized()


# -- what a caller may touch -------------------------------------------------------------------
def spawn_user(requested: object) -> object:
    """Whom a spawn is for: anyone the admin names; a user token's own user (also when it names none)."""
    who = caller()
    if who.is_admin:
        return requested
    if requested is None or (isinstance(requested, str) and requested.strip() in ("", who.user)):
        return who.user
    raise Forbidden("a user token spawns only for its own user")


def check_visible(record: Notebook) -> Notebook:
    """``record`` if the caller may see it; another user's notebook is the same 404 as an unknown one."""
    who = caller()
    if not who.is_admin and record.user != who.user:
        raise NotFound(f"no notebook with hostname {record.hostname!r}")
    return record


def scoped_user(requested: str | None) -> str | None:
    """The user a listing is filtered by: anyone for the admin; always its own for a user token."""
    who = caller()
    if who.is_admin:
        return requested
    if requested not in (None, "", who.user):
        raise Forbidden("a user token lists only its own notebooks")
    return who.user


def event_filter() -> Callable[[Event], bool] | None:
    """For /events: None for the admin (everything), else a test that keeps the caller's own notebooks.

    Record events say whose notebook it is; a progress event is matched by its hostname, looked
    up once (a pool member's owner changes when it is claimed, and that claim is a record event).
    """
    who = caller()
    if who.is_admin:
        return None
    store: Store = current_app.extensions["store"]
    owners: dict[str, str | None] = {}

    def visible(event: Event) -> bool:
        if len(owners) > 10_000:
            owners.clear()
        if event.record is not None:
            owners[event.hostname] = event.record.user
        elif event.hostname not in owners:
            record = store.get(event.hostname)
            owners[event.hostname] = record.user if record else None
        return owners[event.hostname] == who.user

    return visible


# -- CSRF --------------------------------------------------------------------------------------
def csrf_token() -> str:
    """The session's CSRF token, made on first use; "" with AUTH off (there is no session then)."""
    if not settings().auth:
        return ""
    if isinstance(session, NullSession):
        raise StoreUnavailable("Redis is unavailable: sessions are signed with a key kept there")
    token = session.get("csrf")
    if not isinstance(token, str) or not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_field() -> Markup:
    token = csrf_token()
    return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, token) if token else Markup("")


def check_csrf() -> None:
    expected = session.get("csrf")
    sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD)
    if not isinstance(expected, str) or not expected or not sent or not hmac.compare_digest(expected, sent):
        raise Forbidden("missing or wrong CSRF token: reload the page and try again")


# -- /manage sign-in -------------------------------------------------------------------------------
def signin_page(status: int, error: str = "") -> ResponseReturnValue:
    from api.manage import CSP

    body = render_template("signin.html", error=error)
    return (
        body,
        status,
        {
            "Content-Security-Policy": CSP,
            "Cache-Control": "no-store",
            "WWW-Authenticate": 'Bearer realm="swarm-manager"',
        },
    )


@bp.post("/manage/signin")
def signin() -> ResponseReturnValue:
    if not settings().auth:
        return redirect(url_for("manage.page"), 303)
    try:
        check_csrf()  # the sign-in form's own token: no signing someone in from another site
    except Forbidden:
        return signin_page(403, "The sign-in form expired or your browser sent no cookie: try again.")
    who, marker = resolve_token(request.form.get("token", "").strip())
    if who is None:
        log.warning("sign-in to /manage refused from %s: not a valid token", request.remote_addr)
        return signin_page(401, "That token is not valid (unknown or revoked).")
    session.clear()
    session.permanent = True
    session["auth"] = marker
    session["csrf"] = secrets.token_urlsafe(32)
    return redirect(url_for("manage.page"), 303)


@bp.post("/manage/signout")
def signout() -> ResponseReturnValue:
    if settings().auth and session.get("auth"):
        check_csrf()
    session.clear()
    return redirect(url_for("manage.page"), 303)

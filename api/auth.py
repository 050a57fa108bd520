"""Authentication and roles, in one place.

With ``AUTH`` on (the default) one ``before_request`` (:func:`authenticate`) resolves every
request's caller into ``g.caller`` before any view runs, from either

- ``Authorization: Bearer <token>``: the admin token (``ADMIN_TOKEN``) or a user token
  (``shared/tokenstore.py``); a header that is there but not a live token is 401 at once, or
- the /manage session cookie, set by signing in with a token on the page. The cookie holds only
  the session's random secret; the session itself (who signed in, its CSRF token, its expiry)
  is in Redis (``shared/tokenstore.py`` :class:`~shared.tokenstore.Sessions`), so signing out or revoking
  the token ends it at once. Cookies ignore ports, so anything else served on the API's host
  (a notebook's own port) receives the cookie: therefore every request through it must also carry
  the session's CSRF token, which only the page has (``X-CSRF-Token``, the forms' ``csrf_token``
  field, or the ``csrf`` query parameter the page's EventSource adds to the event streams' URL),
  except rendering the page itself (a navigation sends no header). The first API's
  ``GET /container/<h>/kill`` never accepts the cookie (a GET must not kill on a cookie); it
  works with a Bearer token only.

Two more identities come without an ``Authorization`` header or a session:

- **anonymous** (:data:`ANONYMOUS`), on the launch routes only (Binder's ``GET /build/...``, tmpnb's
  ``POST /api/spawn/``): a client with no credentials at all, known by its address
  (:func:`~api.anonymous.client_key`). It may launch the images ``ANONYMOUS_IMAGES`` names, for
  nobody in particular, within the anonymous limits (:func:`launch_as`, :func:`check_launch_image`);
  with ``ANONYMOUS_IMAGES`` empty it gets the 401 it always got. The session cookie is never read
  there, so it can neither help nor hinder such a launch.
- **a notebook's capability** (:data:`CAPABILITY`), on one notebook's routes (``GET
  /container/<h>``, its kills but the GET one, ``/container/<h>/events``): its hostname plus its
  own token as ``?token=`` (an EventSource cannot send headers). It sees and kills that notebook
  and nothing else; a wrong token is the same 404 as an unknown hostname, and a notebook without
  a token has no capability.

and answers what the route's policy (:func:`policy`, a decorator on each view) needs: public routes
(``/healthz``, the OpenAPI document, static files, the sign-in form), admin-only routes
(``/metrics``, ``/tokens``), and everything else for any caller. What a user token may touch
within a route is decided by three helpers the routes call: :func:`spawn_user` (a user spawns
only for itself), :func:`check_visible` (another user's notebook is 404, like an unknown one:
no enumeration) and :func:`scoped_user` (lists show only its own; the events streams are routed by owner
in ``api/hub.py``). The admin sees and kills everything. With ``AUTH=off`` every caller is the
admin, no cookie is ever set (and a WARNING says so at start-up).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from flask import Blueprint, Flask, Response, current_app, g, make_response, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from markupsafe import Markup
from werkzeug.wrappers import Response as BaseResponse

from api.anonymous import client_key
from shared.errors import ConfigError, Forbidden, ImageNotAllowed, InvalidInput, NotFound, Unauthorized
from shared.limits import Allowlist
from shared.notebook_token import FIELD as TOKEN_FIELD
from shared.pool import ANONYMOUS_USER
from shared.record import Notebook
from shared.settings import Settings
from shared.store import Store
from shared.tokenstore import ADMIN, USER, Session, Sessions, Tokens, digest, is_admin_token

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__, template_folder="templates")

#: How a caller proved who it is (ANONYMOUS: not at all; CAPABILITY: a notebook's own token).
BEARER, SESSION, OPEN, ANONYMOUS, CAPABILITY = "bearer", "session", "open", "anonymous", "capability"
#: Route policies. LAUNCH: anyone, no credentials making the anonymous caller; NOTEBOOK: one
#: notebook's routes, which also take that notebook's capability.
PUBLIC, ANY, ADMIN_ONLY, PAGE, LAUNCH, NOTEBOOK = "public", "any", "admin", "page", "launch", "notebook"
POLICIES = frozenset({PUBLIC, ANY, ADMIN_ONLY, PAGE, LAUNCH, NOTEBOOK})
#: The query parameter that carries a notebook's capability (its own token, as Jupyter takes it).
CAPABILITY_PARAM = "token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_FIELD, CSRF_HEADER, CSRF_PARAM = "csrf_token", "X-CSRF-Token", "csrf"


@dataclass(frozen=True)
class Caller:
    """Who is asking: the admin (``user`` None) or a user token acting as ``user``.

    ``token_id`` is the user token the request came with (as Bearer, or the one its session
    signed in with; "" for the admin) and ``session_id`` the session it came through ("" for a
    Bearer token): whatever the request opens that outlives it (an event stream) ends when
    ``shared.tokenstore.revoked_message`` names either.
    """

    role: str
    user: str | None
    via: str
    token_id: str = ""
    session_id: str = ""
    hostname: str = ""  # CAPABILITY: the one notebook it may see

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


EVERYONE = Caller(ADMIN, None, OPEN)  # AUTH=off
NOBODY = Caller(ANONYMOUS, None, ANONYMOUS)  # no credentials, on a LAUNCH route


def settings() -> Settings:
    return current_app.extensions["settings"]


# -- route policies, on the views --------------------------------------------------------------
# Each is an attribute of the view function itself, so a view registered twice (a blueprint under
# /api/ too, tmpnb's view on /api/spawn) has one policy wherever it is served, and renaming or
# moving a view keeps it.
View = TypeVar("View", bound=Callable[..., object])
#: The view function's attributes the decorators set and :func:`authenticate` reads.
POLICY_ATTR, KILLS_ON_GET_ATTR, STREAM_ATTR = "auth_policy", "auth_kills_on_get", "auth_stream"


def policy(name: str) -> Callable[[View], View]:
    """Decorate a view with its route policy (one of :data:`POLICIES`); a view without one is ANY."""
    if name not in POLICIES:
        raise ValueError(f"unknown route policy {name!r}")

    def mark(view: View) -> View:
        setattr(view, POLICY_ATTR, name)
        return view

    return mark


def kills_on_get(view: View) -> View:
    """Decorate a view that kills on a GET: that GET takes a Bearer token only, never the cookie
    (which rides along by itself) nor a capability (a URL that link previews and prefetchers fetch)."""
    setattr(view, KILLS_ON_GET_ATTR, True)
    return view


def stream(view: View) -> View:
    """Decorate an event stream: its GET may carry the CSRF token as the ``csrf`` query parameter,
    since the page follows it with an EventSource (which cannot send headers). No other view takes
    it there, so the token is in no other URL (access logs show URLs)."""
    setattr(view, STREAM_ATTR, True)
    return view


def tokens() -> Tokens:
    return current_app.extensions["tokens"]


def sessions() -> Sessions:
    return tokens().sessions


# -- set-up ------------------------------------------------------------------------------
def init_app(app: Flask) -> None:
    """Check the settings, install the before_request, the sign-in routes and CORS on ``app``."""
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
    # No app.secret_key: Flask's own (client-side) session stays a NullSession, which refuses
    # writes, so nothing about a caller can end up in a cookie by accident.
    app.register_blueprint(bp)
    app.before_request(authenticate)
    app.after_request(vary_on_cookie)
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


def vary_on_cookie(response: Response) -> Response:
    """An answer that depended on the session cookie says so, so no cache hands it to someone else."""
    if "session" in g:
        response.vary.add("Cookie")
    return response


def vary_on_origin(response: Response) -> Response:
    """Every answer depends on Origin once CORS is on (allowed ones get the header): tell caches."""
    response.vary.add("Origin")
    return response


# -- the cookie ------------------------------------------------------------------------------------
def cookie_name() -> str:
    """Per instance: two deployments on one host (cookies ignore ports) keep their sessions apart.

    Secure, it is a ``__Host-`` cookie: browsers take it only with Secure, Path=/ and no Domain, so
    no other host (a notebook's subdomain) can set or overwrite it.
    """
    s = settings()
    return ("__Host-" if s.session_cookie_secure else "") + f"{s.instance}-session"


def set_cookie(response: BaseResponse, value: str) -> None:
    """``value`` in the session cookie (HttpOnly; SameSite=Lax: a link from elsewhere to /manage
    keeps the session, and every request through it needs the CSRF token anyway)."""
    response.set_cookie(
        cookie_name(),
        value,
        max_age=sessions().lifetime,
        path="/",
        secure=settings().session_cookie_secure,
        httponly=True,
        samesite="Lax",
    )


def clear_cookie(response: BaseResponse) -> None:
    """Tell the browser to drop the cookie (with the attributes it was set with, or a __Host- one stays)."""
    response.delete_cookie(
        cookie_name(), path="/", secure=settings().session_cookie_secure, httponly=True, samesite="Lax"
    )


def signing_key() -> bytes:
    """SECRET_KEY, or else the key generated once in Redis (the same for every API process)."""
    key = current_app.extensions.get("signing_key")
    if key is None:
        key = (settings().secret_key or sessions().generated_key()).encode()
        current_app.extensions["signing_key"] = key
    return bytes(key)


def keyed(purpose: str, value: str) -> str:
    return hmac.new(signing_key(), f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()


def admin_key() -> str:
    """What an admin session holds of ADMIN_TOKEN: changes (signing every admin out) when it does.

    Keyed, so a copy of Redis is no oracle for guessing the admin token without the key too.
    """
    return keyed("admin-session", settings().admin_token)


# -- who is asking ---------------------------------------------------------------------------
def view_of(endpoint: str | None) -> object:
    """The view function of the request's route (None when no route matched)."""
    return current_app.view_functions.get(endpoint or "")


def policy_of(endpoint: str | None) -> str:
    """The route's policy; ANY also when no route matched (a caller gets the 404/405, others a 401)."""
    return PUBLIC if endpoint == "static" else str(getattr(view_of(endpoint), POLICY_ATTR, ANY))


def kills_on_get_route(endpoint: str | None) -> bool:
    return bool(getattr(view_of(endpoint), KILLS_ON_GET_ATTR, False))


def stream_route(endpoint: str | None) -> bool:
    return bool(getattr(view_of(endpoint), STREAM_ATTR, False))


def resolve_token(secret: str) -> Caller | None:
    """The caller a token makes (via BEARER); None for no live token."""
    if is_admin_token(secret, settings().admin_token):
        return Caller(ADMIN, None, BEARER)
    token = tokens().find(secret)
    if token is None:
        return None
    return Caller(USER, token.user, BEARER, token_id=token.id)


def from_bearer() -> Caller:
    scheme, _, secret = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("the Authorization header must be: Bearer <token>", invalid=True)
    caller = resolve_token(secret.strip())
    if caller is None:
        raise Unauthorized("the token is not valid (unknown or revoked)", invalid=True)
    return caller


def current_session() -> Session | None:
    """The live session the request's cookie names (also in ``g.session``); None without one.

    An admin session from before ADMIN_TOKEN changed is ended here (and its streams with it).
    """
    found = sessions().get(request.cookies.get(cookie_name(), ""))
    if found is not None and found.role == ADMIN and not hmac.compare_digest(found.admin_key, admin_key()):
        sessions().end(found)
        found = None
    g.session = found
    return found


def from_session() -> Caller | None:
    found = current_session()
    if found is None:
        return None
    user = found.user if found.role == USER else None
    return Caller(found.role, user, SESSION, token_id=found.token_id, session_id=found.id)


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
    if "Authorization" in request.headers:
        caller: Caller | None = from_bearer()
    elif policy == NOTEBOOK and CAPABILITY_PARAM in request.args:
        caller = from_capability()
    elif policy == LAUNCH:
        caller = NOBODY  # never the cookie: a launch is anonymous or Bearer
    else:
        caller = from_session()
    g.caller = caller
    if caller is None:
        if policy == PAGE and request.method in ("GET", "HEAD"):
            return signin_page(401)
        raise Unauthorized()
    # A GET must not kill on anything but a Bearer token (a cookie rides along by itself; a
    # capability in a URL is fetched by link previews and prefetchers).
    killing_get = request.method not in UNSAFE_METHODS and kills_on_get_route(request.endpoint)
    if caller.via in (SESSION, CAPABILITY) and killing_get:
        raise Forbidden("a GET kill needs Authorization: Bearer <token>; kill with POST or DELETE")
    if caller.via == SESSION and not (policy == PAGE and request.method in ("GET", "HEAD")):
        check_csrf(g.session.csrf)
    if policy == ADMIN_ONLY and not caller.is_admin:
        raise Forbidden("only the admin may do this")
    return None


def from_capability() -> Caller:
    """The caller a notebook's capability makes: ``?token=`` must be that notebook's own token.

    Anything else (an unknown or malformed hostname, a wrong token, a notebook without a token)
    is the 404 of an unknown notebook, word for word: nothing to enumerate, nothing to guess.
    """
    from api.routes import checked_hostname, store

    hostname = checked_hostname(str((request.view_args or {}).get("hostname", "")))
    presented = request.args.get(CAPABILITY_PARAM, "")
    kept = store().internal(hostname, TOKEN_FIELD) or ""
    if not kept or not presented or not hmac.compare_digest(digest(presented), digest(kept)):
        raise NotFound(f"no notebook with hostname {hostname!r}")
    return Caller(ANONYMOUS, None, CAPABILITY, hostname=hostname)


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
    if who.user is None:
        raise Unauthorized()  # anonymous callers launch through launch_as only
    if requested is None or (isinstance(requested, str) and requested.strip() in ("", who.user)):
        return who.user
    raise Forbidden("a user token spawns only for its own user")


def check_visible(record: Notebook) -> Notebook:
    """``record`` if the caller may see it; another user's notebook is the same 404 as an unknown one."""
    who = caller()
    if who.is_admin:
        return record
    if who.via == CAPABILITY:
        visible = record.hostname == who.hostname
    else:
        visible = who.user is not None and record.user == who.user
    if not visible:
        raise NotFound(f"no notebook with hostname {record.hostname!r}")
    return record


def scoped_user(requested: str | None) -> str | None:
    """The user a listing is filtered by: anyone for the admin; always its own for a user token."""
    who = caller()
    if who.is_admin:
        return requested
    if who.user is None:
        raise Unauthorized()  # nobody without a user lists anything
    if requested not in (None, "", who.user):
        raise Forbidden("a user token lists only its own notebooks")
    return who.user


def stream_owner() -> tuple[str, str]:
    """Whose stream slots a stream counts against, and the setting that caps them: a signed-in
    caller by its user (or as the admin), everyone else (AUTH=off, anonymous, a capability) by
    its client address."""
    who = caller()
    if who.via in (OPEN, ANONYMOUS, CAPABILITY):
        return f"addr:{client_key(request.remote_addr)}", "STREAMS_PER_ADDRESS"
    return (f"user:{who.user}" if who.user else "admin"), "STREAMS_PER_USER"


# -- launches (Binder, tmpnb) -----------------------------------------------------------------
@dataclass(frozen=True)
class Launch:
    """Who a Binder or tmpnb launch is for: a user (``anonymous`` False; the ordinary limits), or
    nobody in particular (``user`` ANONYMOUS_USER; ANONYMOUS_IMAGES and the anonymous limits,
    counted by ``address``)."""

    user: object
    anonymous: bool = False
    address: str = ""


def launch_as(requested: object) -> Launch:
    """Whom a launch is for. A user token: its own user (naming another is 403). The admin (and
    everyone with AUTH=off): the user it names. A launch that names nobody, by a caller with no
    user of its own, is anonymous; an anonymous caller cannot name a user (403)."""
    who = caller()
    named = not (requested is None or (isinstance(requested, str) and not requested.strip()))
    if who.user is not None or (who.is_admin and named):
        return Launch(spawn_user(requested))
    if who.via == ANONYMOUS and not settings().anonymous_images:
        raise Unauthorized()  # no anonymous launches here: the 401 of every route without a token
    if named:
        raise Forbidden("a launch without a token is anonymous: it cannot name a user")
    return Launch(ANONYMOUS_USER, anonymous=True, address=client_key(request.remote_addr))


def check_launch_image(launch: Launch, image: str) -> None:
    """An anonymous launch runs only what ANONYMOUS_IMAGES names (403 with the reason); with no
    anonymous images at all, an anonymous caller gets the 401 any route without a token gives."""
    if not launch.anonymous:
        return
    patterns = settings().anonymous_images
    if not patterns:
        if caller().via == ANONYMOUS:
            raise Unauthorized()
        raise InvalidInput("user is required (anonymous launches are off: ANONYMOUS_IMAGES is empty)")
    if not Allowlist(patterns).allows(image):
        raise ImageNotAllowed(
            f"image {image[:120]!r} is not open to anonymous clients here (ANONYMOUS_IMAGES: {', '.join(patterns)}); "
            "launch it with a token"
        )


# -- CSRF --------------------------------------------------------------------------------------
def csrf_token() -> str:
    """The CSRF token of the page being rendered: the session's when signed in; on the sign-in
    form, one keyed to the cookie's random value (:func:`signin_nonce`); "" with AUTH off or for a
    Bearer caller (nothing rides on a cookie then)."""
    if not settings().auth:
        return ""
    found = g.get("session")
    if isinstance(found, Session):
        return found.csrf
    if g.get("caller") is not None:
        return ""
    return keyed("signin", signin_nonce())


def csrf_field() -> Markup:
    token = csrf_token()
    return Markup('<input type="hidden" name="{}" value="{}">').format(CSRF_FIELD, token) if token else Markup("")


def check_csrf(expected: str) -> None:
    """Raise Forbidden unless the request carries ``expected``: in the header, in a form's field
    (unsafe methods), or as the query parameter (a GET of an event stream)."""
    sent = request.headers.get(CSRF_HEADER)
    if not sent and request.method in UNSAFE_METHODS:
        sent = request.form.get(CSRF_FIELD)
    if not sent and request.method == "GET" and stream_route(request.endpoint):
        sent = request.args.get(CSRF_PARAM)
    if not expected or not sent or not hmac.compare_digest(expected.encode(), sent.encode()):
        raise Forbidden("missing or wrong CSRF token: reload the page and try again")


def signin_nonce() -> str:
    """Before signing in, the cookie holds a random value that the sign-in form's CSRF token is
    keyed to (so another site cannot sign a visitor in as someone else). Nothing is stored for it:
    visitors who are not signed in write nothing to Redis. Signing in replaces it with a new
    session secret (no session fixation)."""
    nonce = g.get("signin_nonce")
    if nonce is None:
        nonce = request.cookies.get(cookie_name(), "")
        if not 32 <= len(nonce) <= 128:
            nonce = secrets.token_urlsafe(32)
        g.signin_nonce = nonce
    return str(nonce)


# -- /manage sign-in -------------------------------------------------------------------------------
def signin_page(status: int, error: str = "") -> Response:
    from api.manage import CSP

    response = make_response(render_template("signin.html", error=error), status)
    response.headers.update(
        {
            "Content-Security-Policy": CSP,
            "Cache-Control": "no-store",
            "WWW-Authenticate": 'Bearer realm="swarm-manager"',
        }
    )
    nonce = g.get("signin_nonce")
    if nonce and nonce != request.cookies.get(cookie_name()):
        set_cookie(response, nonce)
    return response


@bp.post("/manage/signin")
@policy(PUBLIC)  # checks the sign-in form's CSRF token itself
def signin() -> ResponseReturnValue:
    if not settings().auth:
        return redirect(url_for("manage.page"), 303)
    sent = request.form.get(CSRF_FIELD, "")
    nonce = request.cookies.get(cookie_name(), "")
    if not nonce or not sent or not hmac.compare_digest(keyed("signin", nonce).encode(), sent.encode()):
        return signin_page(403, "The sign-in form expired or your browser sent no cookie: try again.")
    who = resolve_token(request.form.get("token", "").strip())
    made = None
    if who is not None:
        made = sessions().create(
            role=who.role,
            user=who.user or "",
            token_id=who.token_id,
            admin_key=admin_key() if who.is_admin else "",
        )
    if made is None:  # no live token (or it was revoked while signing in)
        log.warning("sign-in to /manage refused from %s: not a valid token", request.remote_addr)
        return signin_page(401, "That token is not valid (unknown or revoked).")
    _, secret = made
    response = redirect(url_for("manage.page"), 303)
    set_cookie(response, secret)
    return response


@bp.post("/manage/signout")
@policy(PUBLIC)  # checks the session's CSRF token itself
def signout() -> ResponseReturnValue:
    """End the session (its CSRF token required) and drop the cookie; without a live session, just the latter."""
    if settings().auth:
        found = current_session()
        if found is not None:
            check_csrf(found.csrf)
            sessions().end(found)
    response = redirect(url_for("manage.page"), 303)
    if settings().auth:
        clear_cookie(response)
    return response

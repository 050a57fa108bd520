"""The HTTP API: a thin Flask app that writes records and enqueues tasks.

``create_app(settings, store=..., queue=...)`` builds the real collaborators only when
none are passed; tests inject their own. This package never imports ``docker`` or ``worker``.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response
from werkzeug.middleware.proxy_fix import ProxyFix

from api.fastjson import OrjsonProvider
from api.hub import Hub
from shared.failover import Replication
from shared.pool import Pool
from shared.profiles import Profiles, load_profiles
from shared.queue import Queue, make_celery
from shared.settings import Settings
from shared.store import Store, connect
from shared.streams import StreamSlots

#: Answers that may carry a secret: records (a notebook's token and notebook_url for its owner),
#: POST /tokens (a user's token), event streams (a ready event carries the notebook's token).
SECRET_BEARING = frozenset({"application/json", "text/event-stream"})


def no_store(response: Response) -> Response:
    """``Cache-Control: no-store`` on every JSON answer and event stream, errors included: no
    browser or shared cache keeps a token. For all of them, not route by route, so that no route
    can forget it; pages (/manage sets its own) and static files are left as they are."""
    if response.mimetype in SECRET_BEARING:
        response.headers["Cache-Control"] = "no-store"
    return response


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    queue: Queue | None = None,
    profiles: Profiles | None = None,
    **config: Any,
) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.json = OrjsonProvider(app)  # keeps the first API's field order in records (no sorted keys)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body,
        MAX_FORM_MEMORY_SIZE=settings.max_body,
        MAX_FORM_PARTS=50,
    )
    app.config.update(config)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")

    app.extensions["settings"] = settings
    app.extensions["store"] = store or Store(connect(settings.redis_target), prefix=settings.key_prefix)
    app.extensions["queue"] = queue or Queue(make_celery(settings, name="swarm_manager_api"))
    app.extensions["profiles"] = profiles if profiles is not None else load_profiles(settings.profiles_file)
    app.extensions["pool"] = Pool(app.extensions["store"], settings.pool_sizes) if settings.pool else None
    # Accepted spawns and kills are on the replicas before the API answers (shared/failover.py).
    app.extensions["replication"] = Replication(
        app.extensions["store"].redis, settings.key_prefix, settings.wait_replicas, settings.redis_wait_timeout
    )
    # Every event stream of this process follows one Redis subscription (api/hub.py); made here,
    # in the serving process (gunicorn loads the app after it forks its workers).
    hub_store = app.extensions["store"]
    app.extensions["hub"] = Hub(hub_store, StreamSlots(hub_store.redis, hub_store.prefix))
    if settings.trusted_proxy_hops:
        # The client's address (per-address stream caps) and scheme as the trusted proxies saw them.
        hops = settings.trusted_proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]

    from api import errors, manage, routes

    errors.register(app)
    app.after_request(no_store)
    app.register_blueprint(routes.bp)
    # The first API also served everything under /api/, for tmpnb-style clients.
    app.register_blueprint(routes.bp, url_prefix="/api", name="api_compat")
    from api import binder

    # Thebe, Binder and tmpnb clients (api/binder.py): BinderHub's GET /build/..., and tmpnb's own
    # POST /api/spawn/ (it answers once the notebook is ACTIVE; the first API's /spawn answers at once).
    app.register_blueprint(binder.bp)
    app.view_functions["api_compat.spawn"] = binder.tmpnb_spawn
    app.register_blueprint(manage.bp)
    from api import events

    # Server-Sent Events (also under /api/, like the JSON routes).
    app.register_blueprint(events.bp)
    app.register_blueprint(events.bp, url_prefix="/api", name="api_events")
    from api import metrics

    app.register_blueprint(metrics.bp)
    from api import openapi

    app.register_blueprint(openapi.bp)
    from api import auth, tokens

    # Tokens and roles (api/auth.py): one before_request decides for every route, /manage's
    # sign-in and session, CORS. Raises ConfigError with AUTH on and no ADMIN_TOKEN.
    app.register_blueprint(tokens.bp)
    from api import nodes

    app.register_blueprint(nodes.bp)  # the nodes and their pre-pulled images (admin only)
    auth.init_app(app)
    return app

"""Route policies are decorators on the views (api/auth.py): every endpoint of the app, under each
name it is registered by (the /api/ aliases too), has the policy it is meant to have, and a view
without one is ANY. What each policy lets each caller do is tests/test_auth_matrix.py's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from api import auth, create_app
from shared.settings import Settings
from testkit.stack import base_env
from testkit.support import RedisServer, unique_instance

#: Every view that is not ANY, by the function it is (module.name), as api/auth.py's table once held them.
EXPECTED = {
    "api.routes.healthz": auth.PUBLIC,
    "api.openapi.openapi": auth.PUBLIC,
    "api.auth.signin": auth.PUBLIC,
    "api.auth.signout": auth.PUBLIC,
    "api.metrics.metrics": auth.ADMIN_ONLY,
    "api.tokens.create": auth.ADMIN_ONLY,
    "api.tokens.listing": auth.ADMIN_ONLY,
    "api.tokens.revoke": auth.ADMIN_ONLY,
    "api.nodes.nodes": auth.ADMIN_ONLY,
    "api.manage.page": auth.PAGE,
    "api.binder.build": auth.LAUNCH,
    "api.binder.tmpnb_spawn": auth.LAUNCH,
    "api.routes.container": auth.NOTEBOOK,
    "api.routes.kill": auth.NOTEBOOK,
    "api.events.container_events": auth.NOTEBOOK,
}
KILLS_ON_GET = {"api.routes.kill"}
STREAMS = {"api.events.all_events", "api.events.container_events"}


@pytest.fixture(scope="module")
def app(redis_server: RedisServer) -> Iterator[Flask]:
    made = create_app(Settings.from_env(base_env(redis_server.url, unique_instance("policy"))))
    yield made
    made.extensions["store"].redis.close()


def test_every_endpoint_has_its_policy(app: Flask) -> None:
    seen = set()
    with app.test_request_context():
        for endpoint, view in app.view_functions.items():
            name = f"{view.__module__}.{view.__name__}"
            seen.add(name)
            expected = auth.PUBLIC if endpoint == "static" else EXPECTED.get(name, auth.ANY)
            assert auth.policy_of(endpoint) == expected, endpoint
            assert auth.kills_on_get_route(endpoint) == (name in KILLS_ON_GET), endpoint
            assert auth.stream_route(endpoint) == (name in STREAMS), endpoint
        assert auth.policy_of(None) == auth.ANY  # no route matched
    assert set(EXPECTED) | KILLS_ON_GET | STREAMS <= seen
    # The /api/ aliases are the same views, with the same policies.
    assert app.view_functions["api_compat.container"] is app.view_functions["api.container"]
    assert app.view_functions["api_compat.spawn"].__name__ == "tmpnb_spawn"


def test_a_view_without_a_decorator_is_any_and_policies_are_checked() -> None:
    app = Flask(__name__)

    @app.get("/plain")
    def plain() -> str:
        return ""

    @app.get("/admin")
    @auth.policy(auth.ADMIN_ONLY)
    def admin() -> str:
        return ""

    with app.test_request_context():
        assert auth.policy_of("plain") == auth.ANY
        assert auth.policy_of("admin") == auth.ADMIN_ONLY
        assert not auth.kills_on_get_route("plain") and not auth.stream_route("plain")
    with pytest.raises(ValueError, match="unknown route policy"):
        auth.policy("admin-only")

"""Each notebook's own token, against a REAL Jupyter Notebook server (testkit/jupyter_image.py).

The image is Debian's Jupyter Notebook 6.4 with no token flag in its CMD, so the server takes
the token from JUPYTER_TOKEN, which the worker sets from the record's internal ``_token``. The
token is shown to the notebook's owner and admins only, and nowhere else: not on the events
channel, not in /metrics, not in the worker's log, not in another user's answers.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from api.auth import BEARER, USER, Caller
from api.routes import public_record
from shared.status import Status
from testkit.stack import Stack
from testkit.support import make_reconciler, wait_for
from worker.activity import last_activity

FINAL = {Status.ACTIVE, Status.FAILED}
ADMIN_TOKEN = "adm-" + secrets.token_urlsafe(24)
PROFILES = """
profiles:
  - name: argtoken
    command: ["jupyter", "notebook", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--allow-root"]
    token_arg: "--NotebookApp.token={token}"
  - name: notoken
    token: false
  - name: leaky
    command: ["/bin/sh", "-c", "echo my token is $JUPYTER_TOKEN; exit 4"]
  - name: emptytoken
    command: ["jupyter", "notebook", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--allow-root",
              "--NotebookApp.token="]
  - name: wrongvar
    token_env: NB_SECRET
"""


def direct() -> requests.Session:
    http = requests.Session()
    http.trust_env = False  # straight to our own container, never through a proxy
    return http


@pytest.fixture(scope="module")
def jstack(stack_factory: Any, jupyter_image: str, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    profiles = tmp_path_factory.mktemp("jprofiles") / "profiles.yml"
    profiles.write_text(PROFILES)
    return stack_factory("jupyter", START_TIMEOUT=60, PROFILES_FILE=str(profiles))  # type: ignore[no-any-return]


@pytest.fixture
def events(jstack: Stack) -> Iterator[Callable[[], list[str]]]:
    """A function that returns every raw message published on the events channel so far."""
    pubsub = jstack.store.redis.pubsub()
    pubsub.subscribe(jstack.store.events_channel)
    seen: list[str] = []
    wait_for(lambda: (m := pubsub.get_message(timeout=1)) and m["type"] == "subscribe", 10, "the subscription")

    def drain() -> list[str]:
        while (message := pubsub.get_message(timeout=0.2)) is not None:
            if message["type"] == "message":
                seen.append(str(message["data"]))
        return seen

    try:
        yield drain
    finally:
        pubsub.close()


def spawn_json(stack: Stack, image: str, user: str, **extra: Any) -> dict[str, Any]:
    response = stack.http.post("/spawn", json={"image": image, "user": user, **extra})
    assert response.status_code == 202, response.get_json()
    body = dict(response.get_json())
    stack.created.append(body["hostname"])
    return body


def test_real_jupyter_refuses_without_its_token(
    jstack: Stack, jupyter_image: str, events: Callable[[], list[str]]
) -> None:
    body = spawn_json(jstack, jupyter_image, "owner")
    token = body["token"]
    assert len(token) >= 32 and body["notebook_url"] == f"http://{body['url']}/?token={token}"
    record = jstack.wait(body["hostname"], FINAL, timeout=90)
    assert record.status == Status.ACTIVE, record.error  # readiness: any HTTP answer, the 403 too
    container = jstack.docker.containers.get(record.container_id)
    # The server took its token from the environment and does not print it ("?token=...").
    assert token not in container.logs().decode(errors="replace")

    with direct() as http:
        status = record.address + "/api/status"
        assert http.get(status, timeout=5).status_code == 403
        assert http.get(status, headers={"Authorization": "token wrong"}, timeout=5).status_code == 403
        assert http.get(status + "?token=" + secrets.token_urlsafe(24), timeout=5).status_code == 403
        ok = http.get(status, params={"token": token}, timeout=5)
        assert ok.status_code == 200 and "last_activity" in ok.json()
        assert http.get(status, headers={"Authorization": f"token {token}"}, timeout=5).status_code == 200
        # notebook_url's path and query on the notebook's own address: signed in, at the file tree.
        opened = http.get(record.address + "/?token=" + token, timeout=10)
        assert opened.status_code == 200 and urlsplit(opened.url).path == "/tree", opened.url
        assert http.get(status, timeout=5).status_code == 200  # the login cookie the token got us

    assert f"JUPYTER_TOKEN={token}" in container.attrs["Config"]["Env"]
    assert "--NotebookApp.token=" not in " ".join(container.attrs["Config"]["Cmd"] or [])

    # The owner (AUTH off here: everyone is the admin) sees it on every route...
    assert jstack.http.get(f"/container/{record.hostname}").get_json()["token"] == token
    listed = {r["hostname"]: r for r in jstack.http.get("/containers").get_json()}
    assert listed[record.hostname]["token"] == token
    # ...and it is nowhere else: not on the events channel, in /metrics or in the worker's log.
    published = events()
    assert not [e for e in published if token in e], "the events channel carries public fields only"
    assert any(json.loads(e).get("hostname") == record.hostname for e in published)
    assert token not in jstack.http.get("/metrics").get_data(as_text=True)
    assert jstack.worker is not None and token not in jstack.worker.logfile.read_text(errors="replace")
    assert record.error == "" and token not in json.dumps(record.to_json())

    # Idle culling reads last_activity through the token; without it the server says nothing.
    assert last_activity(record.address) is None
    seen = last_activity(record.address, token)
    assert seen is not None and abs(seen - time.time()) < 300
    reconciler = make_reconciler(jstack, clock=lambda: time.time() + 3600, idle_timeout=600)
    report = reconciler.run(lock=False)
    assert record.hostname in report.culled, report
    culled = jstack.wait(record.hostname, {Status.REMOVED}, timeout=30)
    assert "idle" in culled.error


def test_profile_passes_the_token_as_an_argument(jstack: Stack, jupyter_image: str) -> None:
    body = spawn_json(jstack, jupyter_image, "arguer", profile="argtoken")
    token = body["token"]
    record = jstack.wait(body["hostname"], FINAL, timeout=90)
    assert record.status == Status.ACTIVE, record.error
    container = jstack.docker.containers.get(record.container_id)
    assert f"--NotebookApp.token={token}" in container.attrs["Config"]["Cmd"]
    assert not [e for e in container.attrs["Config"]["Env"] if e.startswith("JUPYTER_TOKEN=")]
    with direct() as http:
        assert http.get(record.address + "/api/status", timeout=5).status_code == 403
        assert http.get(record.address + "/api/status", params={"token": token}, timeout=5).status_code == 200
    jstack.kill(record.hostname)


# -- the token is enforced: a notebook that ignores it is never ACTIVE ------------------------------
def test_a_server_that_ignores_its_token_fails_with_the_reason(jstack: Stack, jupyter_image: str) -> None:
    # The recipe's own command line: `--NotebookApp.token=` overrides JUPYTER_TOKEN, so the
    # server answers anyone who knows its address.
    body = spawn_json(jstack, jupyter_image, "careless", profile="emptytoken")
    assert body["token"]
    record = jstack.wait(body["hostname"], FINAL, timeout=90)
    assert record.status == Status.FAILED
    assert record.error.startswith("the notebook ignores its token: GET /api/status without it answered 200")
    assert "token: false" in record.error and body["token"] not in record.error
    # FAILED is recorded first (by the attempt that still owns the spawn), then its container goes.
    wait_for(
        lambda: not [c for c in jstack.containers() if c.name.endswith(body["hostname"])],
        10,
        "the FAILED notebook's container to be removed",
    )


def test_a_server_that_never_got_its_token_fails_with_the_reason(jstack: Stack, jupyter_image: str) -> None:
    # The token goes in a variable the server does not read: it makes up its own, and refuses ours.
    body = spawn_json(jstack, jupyter_image, "misdelivered", profile="wrongvar")
    record = jstack.wait(body["hostname"], FINAL, timeout=90)
    assert record.status == Status.FAILED
    assert record.error.startswith("the notebook refuses its own token: GET /api/status with it answered 403")


def test_any_image_serving_its_api_to_anyone_fails_unless_its_profile_says_no_token(
    jstack: Stack, images: dict[str, str]
) -> None:
    # busybox httpd serving a Jupyter-like /api/status to everyone: what the check exists for.
    refused = spawn_json(jstack, images["status"], "busy")
    failed = jstack.wait(refused["hostname"], FINAL, timeout=60)
    assert failed.status == Status.FAILED and "ignores its token" in failed.error, failed.error
    # The profile says the image has no token support: it runs, and its record carries no token.
    declared = spawn_json(jstack, images["status"], "busy", profile="notoken")
    assert declared["token"] == "" and declared["notebook_url"] == declared["public_url"]
    record = jstack.wait(declared["hostname"], FINAL, timeout=60)
    assert record.status == Status.ACTIVE, record.error
    jstack.kill(record.hostname)


def test_profile_can_turn_the_token_off(jstack: Stack, images: dict[str, str]) -> None:
    body = spawn_json(jstack, images["httpd"], "plain", profile="notoken")
    assert body["token"] == "" and body["notebook_url"] == f"http://{body['url']}/"
    record = jstack.wait(body["hostname"], FINAL, timeout=60)
    assert record.status == Status.ACTIVE, record.error
    env = jstack.docker.containers.get(record.container_id).attrs["Config"]["Env"] or []
    assert not [e for e in env if "TOKEN" in e]
    assert jstack.store.internal(record.hostname, "token") is None
    jstack.kill(record.hostname)


def test_a_notebook_that_prints_its_token_does_not_leak_it_into_the_record(
    jstack: Stack, images: dict[str, str]
) -> None:
    body = spawn_json(jstack, images["httpd"], "leaker", profile="leaky")
    record = jstack.wait(body["hostname"], FINAL, timeout=60)
    assert record.status == Status.FAILED
    assert "exited with code 4" in record.error and "my token is <token>" in record.error, record.error
    assert body["token"] not in record.error
    assert jstack.worker is not None and body["token"] not in jstack.worker.logfile.read_text(errors="replace")


def test_profile_token_fields_are_checked_at_start_up() -> None:
    from shared.errors import ConfigError
    from shared.profiles import parse_profiles

    good = parse_profiles(PROFILES)
    assert good.get("argtoken").token_arg == "--NotebookApp.token={token}"  # type: ignore[union-attr]
    assert good.get("notoken").token is False  # type: ignore[union-attr]
    bad = {
        "token_arg: '--token'": "containing {token}",
        "token_arg: '--t={token}'": "needs a command",
        "token_env: 'NOT VALID'": "environment variable name",
        "token: 'no'": "true or false",
        "{token: false, token_env: X}": "nothing for token_env",
    }
    for fields, message in bad.items():
        text = f"profiles:\n  - {{name: p, {fields.strip('{}')}}}\n"
        with pytest.raises(ConfigError, match=message):
            parse_profiles(text)


def test_notebook_token_off(stack_factory: Any, images: dict[str, str]) -> None:
    stack = stack_factory("notoken", worker=False, NOTEBOOK_TOKEN="off")
    body = stack.http.post("/spawn", json={"image": images["httpd"], "user": "u"}).get_json()
    assert body["token"] == "" and stack.store.internal(body["hostname"], "token") is None


# -- who sees it ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def secured(stack_factory: Any) -> Stack:
    return stack_factory(  # type: ignore[no-any-return]
        "jtokauth", worker=False, AUTH="on", ADMIN_TOKEN=ADMIN_TOKEN, SECRET_KEY=secrets.token_urlsafe(32)
    )


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def user_token(stack: Stack, user: str) -> str:
    response = stack.http.post("/tokens", json={"user": user}, headers=bearer(ADMIN_TOKEN))
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["token"])


def test_only_the_owner_and_admins_see_the_token(secured: Stack, images: dict[str, str]) -> None:
    alice, bob = user_token(secured, "alice"), user_token(secured, "bob")
    http = secured.app.test_client(use_cookies=False)
    spawned = http.post("/spawn", json={"image": images["httpd"], "user": "alice"}, headers=bearer(alice))
    assert spawned.status_code == 202, spawned.get_json()
    body = spawned.get_json()
    hostname, token = body["hostname"], body["token"]
    assert token and token == secured.store.internal(hostname, "token")
    bobs = http.post("/spawn", json={"image": images["httpd"]}, headers=bearer(bob)).get_json()

    for who in (alice, ADMIN_TOKEN):
        seen = http.get(f"/container/{hostname}", headers=bearer(who)).get_json()
        assert seen["token"] == token and seen["notebook_url"].endswith(f"?token={token}")
    assert http.get(f"/container/{hostname}", headers=bearer(bob)).status_code == 404  # not even the record

    as_bob = http.get("/containers", headers=bearer(bob)).get_json()
    assert [r["hostname"] for r in as_bob] == [bobs["hostname"]] and as_bob[0]["token"] == bobs["token"]
    assert token not in json.dumps(as_bob)
    as_admin = {r["hostname"]: r for r in http.get("/containers", headers=bearer(ADMIN_TOKEN)).get_json()}
    assert as_admin[hostname]["token"] == token and as_admin[bobs["hostname"]]["token"] == bobs["token"]

    # The serialiser itself: another user (were the record shown to them) gets no token fields.
    record = secured.store.require(hostname)
    with secured.app.test_request_context("/containers"):
        from flask import g

        g.caller = Caller(USER, "bob", BEARER)
        assert "token" not in public_record(record) and "notebook_url" not in public_record(record)
        g.caller = Caller(USER, "alice", BEARER)
        assert public_record(record)["token"] == token
        g.caller = None  # no caller with AUTH on: fail closed
        assert "token" not in public_record(record)


def test_engine_and_api_outputs_never_carry_certificate_paths(tmp_path: Path) -> None:
    """Error texts from the engine client are scrubbed of PEM data and certificate file paths."""
    from worker.engine import classify

    leaky = OSError(
        f"could not load {tmp_path}/certs/key.pem: -----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----"
    )
    text = str(classify(leaky, "connecting"))
    assert "key.pem" not in text and str(tmp_path) not in text and "PRIVATE KEY" not in text and "MIIE" not in text

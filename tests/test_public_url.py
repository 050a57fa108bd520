"""PUBLIC_URL: where people open a notebook, and a bad value stopping every process at start-up."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest

from api.events import record_message
from shared.errors import ConfigError
from shared.public_url import notebook_url, public_url
from shared.settings import Settings
from shared.status import Status
from testkit.stack import base_env
from testkit.support import ROOT, VENV_BIN, free_port

BAD = {
    "http://notebooks.example.org/": "has no {hostname}",
    "https://{hostname}.{user}.example.org/": "names {user}",
    "https://{hostname}.{0}/": "names {0}",
    "ftp://{hostname}.example.org/": "not an http:// or https:// URL",
    "{hostname}.example.org": "not an http:// or https:// URL",
    "https://{hostname:>20}.example.org/": "write placeholders plainly",
    "https://{hostname}.example.org:port/": "port that is not a number",
    "https://user:pw@{hostname}.example.org/": "no user, password",
    "https://{hostname}.example.org/#top": "#fragment",
    "https://{hostname.upper}.example.org/": "names {hostname.upper}",
    "https://{hostname}.example.org/{": "is not a template",
    "https://{hostname} .example.org/": "not an http:// or https:// URL",
}


@pytest.mark.parametrize("template", list(BAD))
def test_a_bad_template_is_refused_naming_the_setting(template: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"PUBLIC_URL": template})
    assert str(caught.value).startswith("bad settings: PUBLIC_URL: ")
    assert BAD[template] in str(caught.value)


def test_addresses_made_from_a_template() -> None:
    template = Settings.from_env({"PUBLIC_URL": "https://{hostname}.{domain}:8443/lab/"}).public_url
    address = public_url(template, "ki60dje40khk", "nb.example.org")
    assert address == "https://ki60dje40khk.nb.example.org:8443/lab/"
    assert notebook_url(address, "s3cret") == address + "?token=s3cret"
    assert notebook_url(address, "") == address
    with_query = public_url("https://proxy.example.org/?nb={hostname}", "ki60dje40khk", "x")
    assert notebook_url(with_query, "t") == "https://proxy.example.org/?nb=ki60dje40khk&token=t"
    assert Settings.from_env({}).public_url == "http://{hostname}.{domain}/"


@pytest.mark.parametrize(
    "command",
    [
        ["swarm-manager", "serve", "--bind", "127.0.0.1:{port}"],
        ["swarm-manager", "worker"],
        ["swarm-manager", "beat"],
        ["swarm-manager", "flower", "--port", "{port}"],
        ["swarm-manager", "check"],
        # And without the command line's own check: the processes read their settings at start.
        ["gunicorn", "--bind", "127.0.0.1:{port}", "api.wsgi:app"],
        ["celery", "-A", "worker.celery_app", "worker", "--pool", "solo"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_every_process_refuses_to_start_with_a_bad_public_url(command: list[str]) -> None:
    env = {
        **os.environ,
        **base_env(f"redis://127.0.0.1:{free_port()}/0", "publicurl"),
        "PUBLIC_URL": "https://{hostname}.{region}.example.org/",
    }
    argv = [str(VENV_BIN / command[0]), *(a.replace("{port}", str(free_port())) for a in command[1:])]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "PUBLIC_URL" in result.stderr and "{region}" in result.stderr, result.stderr[-1500:]


def test_answers_and_the_ready_event_use_the_template(stack_factory: Any, images: dict[str, str]) -> None:
    stack = stack_factory("publicurl", worker=False, PUBLIC_URL="https://{hostname}.{domain}:8443/")
    body = stack.http.post("/spawn", json={"image": images["httpd"], "user": "linker"}).get_json()
    hostname, token = body["hostname"], body["token"]
    assert body["url"] == f"{hostname}.nb.test"  # the seed's field is unchanged
    assert body["public_url"] == f"https://{hostname}.nb.test:8443/"
    assert body["notebook_url"] == f"https://{hostname}.nb.test:8443/?token={token}"
    listed = {r["hostname"]: r for r in stack.http.get("/containers").get_json()}
    assert listed[hostname]["notebook_url"] == body["notebook_url"]
    # The ready event (what /container/<h>/events sends when it is ACTIVE), for the owner.
    ready = stack.store.require(hostname)  # no worker here: the record as it would be once ACTIVE
    ready.status = Status.ACTIVE
    with stack.app.test_request_context("/events"):
        message = record_message(ready, lambda owner: True)
        assert f"ready at https://{hostname}.nb.test:8443/" in message
        assert f'"notebook_url": "https://{hostname}.nb.test:8443/?token={token}"' in message
        hidden = record_message(ready, lambda owner: False)
        assert token not in hidden and f'"public_url": "https://{hostname}.nb.test:8443/"' in hidden

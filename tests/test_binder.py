"""Thebe, Binder and tmpnb clients in a real browser (api/binder.py), as a reader of a book's page meets them.

thebe 0.9.3 from npm (testkit/thebe_site.py) in Debian's chromium, on pages served from a loopback
port of their own (another origin than the API's), against the API as `make run` serves it
(gunicorn's gevent workers), a real worker, the real Jupyter Notebook image (testkit/jupyter_image.py)
and configurable-http-proxy routing ``http://<hostname>.localhost:<port>/`` to each notebook, with
authentication on and no token anywhere on the pages: every launch is anonymous. Nothing but
loopback is reachable from the browser.

- Binder mode: thebe opens ``GET /build/gh/<repo>/<ref>`` and runs ``print(6*7)``: cold, and from
  the warm pool; a spec nobody mapped and a spec mapped to an image the allowlist refuses end in
  thebe's own failure, with our reason.
- Server mode: the page spawns anonymously (tmpnb's route, not waiting), follows the notebook's
  events with an ``EventSource`` and its capability (``?token=``), then connects thebe to it.
- A tmpnb-style client: ``text/plain`` JSON ``{"image_name": ...}`` answered once ACTIVE with a full
  ``url``, whose ``api/kernels`` answers the page's origin (the notebook server was told it:
  CORS_ORIGINS, through the profile's command) with the token and refuses it without.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from shared.pool import ANONYMOUS_USER, Pool
from shared.record import Internal
from shared.status import Status
from testkit.chp import running_chp
from testkit.stack import Stack
from testkit.support import ApiServer, wait_for
from testkit.thebe_site import BINDER, SERVER, TMPNB, PageServer, chromium, install_thebe, open_page, page

ADMIN_TOKEN = "adm-" + secrets.token_urlsafe(24)
#: Two spellings of the one Jupyter image: the first is pooled, the second (the same image, not the
#: POOL entry as written) always starts cold, so each test knows which it gets.
COLD = "docker.io/{image}"
PROFILES = """
profiles:
  - name: jupyter
    images: ["swarm-manager-test/jupyter:*"]
    # The image's own CMD: the worker adds the allowed origins (CORS_ORIGINS) to it.
    command: ["jupyter", "notebook", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--allow-root"]
    # Pool members start thebe's kernel before they are offered.
    warm_kernel: python3
binder:
  - spec: gh/swarm-manager/thebe-demo/*
    image: {image}
  - spec: gh/swarm-manager/thebe-cold/*
    image: docker.io/{image}
  - spec: gh/swarm-manager/not-allowed/*
    image: {refused}
"""
PAGE_TIMEOUT = 120  # seconds: a cold Jupyter start and its first kernel, on a busy 2-core machine


@dataclass
class Site:
    stack: Stack
    api: ApiServer
    pages: PageServer
    chp: Any
    image: str
    browser: Any

    def url(self, path: str, script: str, **values: Any) -> str:
        self.pages.pages[path] = page(script, API=self.api.url, **values)
        return self.pages.origin + path

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def anonymous(self) -> list[Any]:
        return list(self.stack.store.records(user=ANONYMOUS_USER))

    def kill(self, hostname: str) -> None:
        requests.delete(f"{self.api.url}/container/{hostname}", headers=self.admin(), timeout=10)


@pytest.fixture(scope="module")
def site(
    stack_factory: Any,
    jupyter_image: str,
    images: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Site]:
    lib = install_thebe()
    work = tmp_path_factory.mktemp("thebe")
    profiles = work / "profiles.yml"
    profiles.write_text(PROFILES.format(image=jupyter_image, refused=images["httpd"]))
    pages = PageServer(lib).start()
    try:
        with running_chp(work) as chp, chromium() as browser:
            port = urlsplit(chp.public_url).port
            stack = stack_factory(
                "thebe",
                AUTH="on",
                ADMIN_TOKEN=ADMIN_TOKEN,
                DOMAIN="localhost",
                PUBLIC_URL=f"http://{{hostname}}.{{domain}}:{port}/",
                CORS_ORIGINS=pages.origin,
                ALLOWED_IMAGES="swarm-manager-test/jupyter:*",
                ANONYMOUS_IMAGES="swarm-manager-test/*",
                ANONYMOUS_PER_ADDRESS="10",
                ANONYMOUS_SPAWN_RATE="60",
                PROFILES_FILE=str(profiles),
                POOL=f"{jupyter_image}=1",
                START_TIMEOUT="60",
                **chp.env(),
            )
            api = ApiServer(stack.env, work / "gunicorn.log")
            api.start()
            try:
                yield Site(stack, api, pages, chp, jupyter_image, browser)
            finally:
                api.stop()
    finally:
        pages.stop()


def launched(site: Site, before: set[str]) -> Any:
    """The one anonymous notebook launched since ``before`` (hostnames)."""
    new = [r for r in site.anonymous() if r.hostname not in before]
    assert len(new) == 1, [(r.hostname, r.status) for r in new]
    return new[0]


def test_binder_mode_cold_runs_the_readers_code(site: Site) -> None:
    before = {r.hostname for r in site.anonymous()}
    url = site.url("/cold.html", BINDER, REPO="swarm-manager/thebe-cold", REF="main")
    context, tab, seen, refused = open_page(site.browser, url, PAGE_TIMEOUT)
    try:
        assert "output" in seen, seen
        assert tab.locator(".jp-OutputArea-output").first.inner_text().strip() == "42"
        assert seen["errors"] == [] and refused == [], (seen, refused)
        # thebe saw BinderHub's phases: the launch's progress, then the ready server.
        assert any("Binder is: launching - queued: waiting for a worker" in e for e in seen["events"]), seen
        assert any(e.startswith("server-ready: Binder server is ready: server running at") for e in seen["events"])
    finally:
        context.close()
    record = launched(site, before)
    assert record.status is Status.ACTIVE and record.image == COLD.format(image=site.image)
    assert record.expires_at, "an anonymous notebook lives ANONYMOUS_MAX_AGE at most"
    # The page's origin reached the notebook server, added to the profile's command.
    cmd = site.stack.docker.containers.get(record.container_id).attrs["Config"]["Cmd"]
    assert f"--NotebookApp.allow_origin_pat=^({site.pages.origin.replace('.', '[.]')})$" in cmd, cmd
    site.kill(record.hostname)


def test_binder_mode_from_the_warm_pool(site: Site) -> None:
    pool = Pool(site.stack.store, {site.image: 1})
    site.stack.app.extensions["queue"].refill(site.image)  # no beat here: fill it now
    wait_for(lambda: pool.ready_count(site.image) == 1, 120, "the warm pool to fill")
    members = pool.members(site.image)
    # The profile's warm_kernel: the member was offered with thebe's session and its kernel running.
    [member] = members
    warmed = sessions(site, member)
    assert [(s["path"], s["kernel"]["name"]) for s in warmed] == [("/", "python3")], warmed
    before = {r.hostname for r in site.anonymous()}
    url = site.url("/pooled.html", BINDER, REPO="swarm-manager/thebe-demo", REF="main")
    context, _tab, seen, refused = open_page(site.browser, url, PAGE_TIMEOUT)
    try:
        assert "output" in seen and seen["errors"] == [] and refused == [], (seen, refused)
        # From the pool: ready at once, no stage of a cold start on the way.
        assert not any("queued" in e for e in seen["events"]), seen["events"]
    finally:
        context.close()
    record = launched(site, before)
    assert record.hostname in members and record.status is Status.ACTIVE
    # thebe ran the reader's code in that kernel: it was handed the session, it started no other.
    after = sessions(site, member)
    assert [s["kernel"]["id"] for s in after] == [warmed[0]["kernel"]["id"]], (warmed, after)
    site.kill(record.hostname)


def sessions(site: Site, hostname: str) -> list[dict[str, Any]]:
    """The notebook server's sessions, asked with its own token at its published address."""
    found = site.stack.store.get_with_internal(hostname)
    assert found is not None
    record, internal = found
    response = requests.get(
        f"{record.address}/api/sessions", headers={"Authorization": f"token {internal[Internal.TOKEN]}"}, timeout=10
    )
    assert response.status_code == 200, (response.status_code, response.text)
    return list(response.json())


@pytest.mark.parametrize(
    ("repo", "reason"),
    [
        (
            "swarm-manager/no-such-repo",
            "no image for gh/swarm-manager/no-such-repo/main here (not in this service's binder list)",
        ),
        (
            "swarm-manager/not-allowed",
            "image 'swarm-manager-test/httpd:2' (docker.io/swarm-manager-test/httpd:2) is not allowed here; "
            "ALLOWED_IMAGES: swarm-manager-test/jupyter:*",
        ),
    ],
    ids=["unknown-spec", "disallowed-image"],
)
def test_binder_mode_failures_show_in_thebe_with_the_reason(site: Site, repo: str, reason: str) -> None:
    before = {r.hostname for r in site.stack.store.records()}
    url = site.url(f"/{repo.split('/')[1]}.html", BINDER, REPO=repo, REF="main")
    context, tab, seen, refused = open_page(site.browser, url, 60)
    try:
        assert "failed" in seen and "output" not in seen, seen
        build = f"{site.api.url}/build/gh/{repo}/main"
        assert seen["errors"] == [f"Binder: failed to build - {build} - {reason}\n"], seen["errors"]
        assert seen["failure"] == reason + "\n"  # what thebe's launch promise is rejected with
        assert reason in tab.locator("#log").inner_text()
        assert refused == []
    finally:
        context.close()
    assert {r.hostname for r in site.stack.store.records()} == before, "a refused launch wrote a record"


def test_server_mode_after_an_anonymous_spawn_followed_with_an_event_source(site: Site) -> None:
    image = COLD.format(image=site.image)
    url = site.url("/server.html", SERVER, IMAGE=image)
    context, _tab, seen, refused = open_page(site.browser, url, PAGE_TIMEOUT)
    try:
        assert "output" in seen and seen["errors"] == [] and refused == [], (seen, refused)
        assert seen["spawn"]["status"] == 202 and seen["spawn"]["record"] == "PENDING"
        # The EventSource saw the whole cold start, from its own notebook's events, with no header.
        assert seen["stages"][0] == "queued" and seen["stages"][-1] == "ready", seen["stages"]
        assert {"starting", "waiting"} <= set(seen["stages"]), seen["stages"]
        hostname = seen["spawn"]["hostname"]
        port = urlsplit(site.chp.public_url).port
        assert seen["ready"]["public_url"] == f"http://{hostname}.localhost:{port}/"
        assert seen["ready"]["notebook_url"].startswith(seen["ready"]["public_url"] + "?token=")
    finally:
        context.close()
    site.kill(hostname)


def test_a_tmpnb_client_gets_a_full_url_whose_api_answers_the_pages_origin(site: Site) -> None:
    image = COLD.format(image=site.image)
    url = site.url("/tmpnb.html", TMPNB, IMAGE=image)
    context, _tab, seen, refused = open_page(site.browser, url, PAGE_TIMEOUT)
    context.close()
    assert "done" in seen and refused == [], (seen, refused)
    spawn = seen["spawn"]
    port = urlsplit(site.chp.public_url).port
    assert spawn["status"] == 200 and spawn["record"] == "ACTIVE", spawn  # answered once ACTIVE
    assert spawn["url"] == f"http://{spawn['hostname']}.localhost:{port}/"
    assert seen["kernels"]["status"] == 200 and isinstance(seen["kernels"]["body"], list), seen["kernels"]
    assert seen["without"]["status"] == 403  # the token is enforced cross-origin too
    # Only the page's origin is let in; another origin gets no CORS header from the notebook.
    direct = requests.Session()
    direct.trust_env = False
    host = {"Host": f"{spawn['hostname']}.localhost", "Authorization": f"token {spawn['token']}"}
    for origin, allowed in ((site.pages.origin, True), ("http://127.0.0.1:9", False)):
        answer = direct.get(site.chp.public_url + "/api/kernels", headers={**host, "Origin": origin}, timeout=10)
        assert answer.headers.get("Access-Control-Allow-Origin") == (origin if allowed else None), answer.headers
    site.kill(spawn["hostname"])

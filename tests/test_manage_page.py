"""/manage: the server-rendered page, its spawn and kill forms (POST only), and HTML escaping."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
from flask.testing import FlaskClient

from api import create_app
from shared.errors import InvalidInput
from shared.settings import Settings
from shared.status import Status
from shared.store import Store, connect
from shared.validation import validate_image
from testkit.stack import base_env
from testkit.support import RedisServer, unique_instance


@dataclass
class Page:
    http: FlaskClient
    store: Store
    raw: redis.Redis
    settings: Settings

    def prefixed_keys(self) -> list[bytes]:
        return sorted(self.raw.scan_iter(match=f"{self.settings.key_prefix}*", count=1000))

    def snapshot(self) -> dict[bytes, bytes | None]:
        return {key: self.raw.dump(key) for key in self.prefixed_keys()}


@pytest.fixture
def ui(redis_server: RedisServer) -> Iterator[Page]:
    settings = Settings.from_env(base_env(redis_server.url, unique_instance("manage")))
    app = create_app(settings)
    page = Page(
        http=app.test_client(),
        store=Store(connect(settings.redis_url), prefix=settings.key_prefix),
        raw=redis.Redis.from_url(settings.redis_url, socket_timeout=10),
        settings=settings,
    )
    yield page
    for key in page.prefixed_keys():
        page.raw.delete(key)
    assert page.prefixed_keys() == []
    page.store.redis.close()
    page.raw.close()
    app.extensions["store"].redis.close()


@dataclass
class Parsed:
    forms: list[dict[str, str]] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    rows: dict[str, str] = field(default_factory=dict)  # tr id -> text of the row
    alerts: list[str] = field(default_factory=list)


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out = Parsed()
        self._row: str | None = None
        self._alert = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.out.forms.append({"method": a.get("method", "get").lower(), "action": a.get("action", "")})
        elif tag == "a":
            self.out.links.append(a.get("href", ""))
        elif tag == "tr" and a.get("id"):
            self._row = a["id"]
            self.out.rows[self._row] = ""
        elif a.get("role") == "alert":
            self._alert = True
            self.out.alerts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        if tag == "p":
            self._alert = False

    def handle_data(self, data: str) -> None:
        if self._row:
            self.out.rows[self._row] += data
        if self._alert:
            self.out.alerts[-1] += data


def parse(html: str) -> Parsed:
    parser = _Parser()
    parser.feed(html)
    parser.close()
    return parser.out


def get_page(ui: Page, path: str = "/manage") -> tuple[str, Parsed]:
    response = ui.http.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    return html, parse(html)


def spawn(ui: Page, image: str, user: str) -> str:
    response = ui.http.post("/spawn", data={"image": image, "user": user})
    assert response.status_code == 202, response.get_data(as_text=True)
    return str(response.get_json()["hostname"])


def test_empty_page(ui: Page) -> None:
    html, parsed = get_page(ui)
    assert "No notebooks yet." in html
    assert {"method": "post", "action": "/manage/spawn"} in parsed.forms
    assert parsed.rows == {}


def test_page_lists_records_with_status_and_a_post_kill_form(ui: Page) -> None:
    one = spawn(ui, "zischwartz/notebook", "odewahn")
    two = spawn(ui, "ipython/scipystack", "rmadsen")
    html, parsed = get_page(ui)

    assert list(parsed.rows) == [f"nb-{two}", f"nb-{one}"]  # newest first
    for hostname, image, user in [(one, "zischwartz/notebook", "odewahn"), (two, "ipython/scipystack", "rmadsen")]:
        row = parsed.rows[f"nb-{hostname}"]
        assert hostname in row and image in row and user in row
        assert "PENDING" in row
        assert f"{hostname}.nb.test" in row
        assert {"method": "post", "action": f"/manage/kill/{hostname}"} in parsed.forms

    # Nothing on the page kills through a GET: no link to any kill route, and the one GET form
    # is the filter form, which only reloads the page.
    for href in parsed.links:
        assert "kill" not in href.lower(), href
    for form in parsed.forms:
        assert form["method"] == "post" or form == {"method": "get", "action": "/manage"}, form
        assert "kill" not in form["action"] or form["method"] == "post", form
    assert "/container/" not in html  # the JSON API's GET kill route is not linked either


def test_page_shows_no_kill_form_for_records_that_cannot_be_killed(ui: Page) -> None:
    alive = spawn(ui, "busybox", "alice")
    gone = spawn(ui, "busybox", "alice")
    ui.store.transition(gone, Status.DELETING)
    ui.store.transition(gone, Status.REMOVED)
    failed = spawn(ui, "busybox", "alice")
    ui.store.transition(failed, Status.FAILED, error="image not found")

    _, parsed = get_page(ui)
    actions = {f["action"] for f in parsed.forms}
    assert f"/manage/kill/{alive}" in actions
    assert f"/manage/kill/{gone}" not in actions
    assert f"/manage/kill/{failed}" not in actions
    assert "REMOVED" in parsed.rows[f"nb-{gone}"]
    assert "FAILED" in parsed.rows[f"nb-{failed}"] and "image not found" in parsed.rows[f"nb-{failed}"]


@pytest.mark.parametrize("path", ["/manage", "/manage/"])
def test_page_path_with_and_without_slash(ui: Page, path: str) -> None:
    get_page(ui, path)


def test_manage_spawn_redirects_and_creates_a_record(ui: Page) -> None:
    response = ui.http.post("/manage/spawn", data={"image": "jupyter/minimal-notebook", "user": "alice"})
    assert response.status_code == 303
    location = urlsplit(response.headers["Location"])
    assert location.path == "/manage"
    records = list(ui.store.records())
    assert len(records) == 1
    record = records[0]
    assert record.image == "jupyter/minimal-notebook" and record.user == "alice"
    assert record.status is Status.PENDING
    assert parse_qs(location.query)["message"] == [f"spawning {record.hostname}"]

    html, parsed = get_page(ui, response.headers["Location"])
    assert f"spawning {record.hostname}" in html
    assert f"nb-{record.hostname}" in parsed.rows
    assert parsed.alerts == []


@pytest.mark.parametrize(
    "data",
    [
        {"image": "Not A Valid Image", "user": "alice"},
        {"image": "busybox", "user": "bad user"},
        {"image": "", "user": "alice"},
        {"image": "busybox"},
        {},
        {"image": "busybox", "user": "<script>alert(1)</script>"},
        {"image": "../etc/passwd", "user": "alice"},
    ],
    ids=["bad-image", "bad-user", "empty-image", "no-user", "nothing", "script-user", "traversal"],
)
def test_manage_spawn_bad_input_redirects_with_the_error_and_writes_nothing(ui: Page, data: dict[str, str]) -> None:
    existing = spawn(ui, "busybox", "alice")
    before = ui.snapshot()
    response = ui.http.post("/manage/spawn", data=data)
    assert response.status_code == 303
    location = urlsplit(response.headers["Location"])
    assert location.path == "/manage"
    error = parse_qs(location.query)["error"][0]
    assert error
    assert ui.snapshot() == before

    html, parsed = get_page(ui, response.headers["Location"])
    assert parsed.alerts == [error[:300]]
    assert "<script>alert(1)" not in html
    assert list(parsed.rows) == [f"nb-{existing}"]


def test_manage_kill_redirects_and_moves_to_deleting(ui: Page) -> None:
    hostname = spawn(ui, "busybox", "alice")
    response = ui.http.post(f"/manage/kill/{hostname}")
    assert response.status_code == 303
    location = urlsplit(response.headers["Location"])
    assert location.path == "/manage"
    assert parse_qs(location.query)["message"] == [f"{hostname} is DELETING"]
    assert ui.store.require(hostname).status is Status.DELETING

    _, parsed = get_page(ui, response.headers["Location"])
    assert "DELETING" in parsed.rows[f"nb-{hostname}"]
    assert f"/manage/kill/{hostname}" not in {f["action"] for f in parsed.forms}

    again = ui.http.post(f"/manage/kill/{hostname}")  # a no-op, still a redirect
    assert again.status_code == 303
    assert ui.store.require(hostname).status is Status.DELETING


@pytest.mark.parametrize("name", ["zzzzzzzzzzzz", "NOT-A-HOST", "..", "a" * 300])
def test_manage_kill_unknown_redirects_with_the_error(ui: Page, name: str) -> None:
    spawn(ui, "busybox", "alice")
    before = ui.snapshot()
    response = ui.http.post(f"/manage/kill/{name}")
    assert response.status_code == 303
    assert "error" in parse_qs(urlsplit(response.headers["Location"]).query)
    assert ui.snapshot() == before


@pytest.mark.parametrize("path", ["/manage/kill/zzzzzzzzzzzz", "/manage/spawn"])
def test_manage_mutations_refuse_get(ui: Page, path: str) -> None:
    response = ui.http.get(path)
    assert response.status_code == 405


def test_page_escapes_record_fields(ui: Page) -> None:
    # Validation keeps such a value out of the API, so write it to the store directly.
    evil = '"><script>alert(1)</script>'
    with pytest.raises(InvalidInput):
        validate_image(evil)
    record = ui.store.create(image=evil, user="mallory", domain="nb.test")
    ui.store.transition(record.hostname, Status.FAILED, error="<img src=x onerror=alert(2)>")

    html, parsed = get_page(ui)
    assert "<script>" not in html
    assert "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    row = parsed.rows[f"nb-{record.hostname}"]
    assert evil in row  # shown as text, not interpreted
    assert "<img src=x onerror=alert(2)>" in row


@pytest.mark.parametrize("param", ["error", "message"])
def test_page_escapes_message_and_error_parameters(ui: Page, param: str) -> None:
    response = ui.http.get("/manage", query_string={param: "<script>alert(3)</script>"})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "<script>alert(3)" not in html
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in html


# -- filters, the script's JSON answers, what the page loads -----------------------------------
def test_filters_by_user_and_status_from_the_query_string(ui: Page) -> None:
    odewahn = spawn(ui, "busybox", "odewahn")
    rmadsen = spawn(ui, "busybox", "rmadsen")
    gone = spawn(ui, "busybox", "odewahn")
    ui.store.transition(gone, Status.DELETING)

    _, parsed = get_page(ui, "/manage?user=odewahn")
    assert list(parsed.rows) == [f"nb-{gone}", f"nb-{odewahn}"]
    _, parsed = get_page(ui, "/manage?user=odewahn&status=pending")
    assert list(parsed.rows) == [f"nb-{odewahn}"]
    _, parsed = get_page(ui, "/manage?status=DELETING")
    assert list(parsed.rows) == [f"nb-{gone}"]
    html, parsed = get_page(ui, "/manage?user=nobody")
    assert parsed.rows == {} and "No notebooks match these filters." in html
    # The filters are kept in the form and handed to the script for live updates.
    html, _ = get_page(ui, "/manage?user=rmadsen&status=PENDING")
    assert 'value="rmadsen"' in html and '<option value="PENDING" selected>' in html
    assert 'data-filter-user="rmadsen"' in html and 'data-filter-status="PENDING"' in html
    assert rmadsen


@pytest.mark.parametrize("query", ["user=bad%20user", "status=SLEEPING", "user=%3Cscript%3E"])
def test_a_bad_filter_is_reported_and_ignored(ui: Page, query: str) -> None:
    hostname = spawn(ui, "busybox", "alice")
    html, parsed = get_page(ui, f"/manage?{query}")
    assert len(parsed.alerts) == 1 and "filter ignored" in parsed.alerts[0]
    assert list(parsed.rows) == [f"nb-{hostname}"]
    assert "<script>" not in html


def test_the_page_loads_only_its_own_script_and_stylesheet(ui: Page) -> None:
    response = ui.http.get("/manage")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    html = response.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html  # nothing from another origin (no notebooks here)
    for path, mimetype in [("/static/manage.js", "text/javascript"), ("/static/manage.css", "text/css")]:
        assert f'"{path}"' in html
        asset = ui.http.get(path)
        assert asset.status_code == 200 and asset.mimetype == mimetype
        asset.close()
    script = ui.http.get("/static/manage.js").get_data(as_text=True)
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "outerHTML" not in script


def test_spawn_and_kill_answer_json_to_the_script(ui: Page) -> None:
    json_accept = {"Accept": "application/json"}
    response = ui.http.post("/manage/spawn", data={"image": "busybox", "user": "alice"}, headers=json_accept)
    assert response.status_code == 202
    record = response.get_json()
    assert record["status"] == "PENDING" and record["user"] == "alice"

    bad = ui.http.post("/manage/spawn", data={"image": "busybox", "user": "bad user"}, headers=json_accept)
    assert bad.status_code == 400 and bad.get_json()["code"] == "invalid_input"

    killed = ui.http.post(f"/manage/kill/{record['hostname']}", headers=json_accept)
    assert killed.status_code == 202 and killed.get_json()["status"] == "DELETING"
    again = ui.http.post(f"/manage/kill/{record['hostname']}", headers=json_accept)
    assert again.status_code == 200 and again.get_json()["status"] == "DELETING"
    unknown = ui.http.post("/manage/kill/zzzzzzzzzzzz", headers=json_accept)
    assert unknown.status_code == 404 and unknown.get_json()["code"] == "not_found"

"""/manage in a real headless browser: Debian's chromium driven by Playwright.

The page is served by gunicorn on a real socket (as `make run` serves it) against a stack with
its own instance (Redis keys, queue, worker, container labels), so the worker really starts
the notebooks the page spawns and the page follows them over Server-Sent Events.

``UPDATE_DOCS_SCREENSHOT=1`` also writes the screenshot to docs/manage.png (linked from the README).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, expect, sync_playwright

from shared.status import Status
from testkit.support import ROOT, ApiServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MISSING_IMAGE = "swarm-manager-test/not-built:1"


@pytest.fixture(scope="module")
def site(stack_factory: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, ApiServer]]:
    stack = stack_factory("browser")
    server = ApiServer(stack.worker.env, tmp_path_factory.mktemp("browser-api") / "gunicorn.log")
    server.start()
    yield stack, server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing (Debian package chromium; `make test` installs it)", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=60_000
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 700})
    context.set_default_timeout(15_000)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            problems.append(f"console error: {msg.text}")

    page.on("console", on_console)
    yield page
    context.close()
    assert problems == []


def row_of(page: Page, user: str) -> Any:
    return page.locator("#notebooks tbody tr[id^='nb-']", has=page.locator("td[data-label='User']", has_text=user))


def open_manage(page: Page, url: str) -> None:
    page.goto(url)
    expect(page.locator("#live")).to_have_text("live")  # the event stream is open
    page.evaluate("window.__loadedOnce = true")  # gone if the page were ever reloaded


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__loadedOnce === true"), "the page was reloaded"


def test_screenshots_of_a_busy_page(
    site: tuple[Any, ApiServer], browser: Browser, page: Page, images: dict[str, str], tmp_path: Path
) -> None:
    stack, server = site
    # First in this module (its own instance), so the screenshot shows just these notebooks.
    open_manage(page, server.url + "/manage")

    removed = stack.spawn(images["httpd"], user="carol")
    active = stack.spawn(images["httpd"], user="odewahn")
    failed = stack.spawn(images["crash"], user="rmadsen")
    starting = stack.spawn(images["silent"], user="alice")  # never answers: stays STARTING a while
    for hostname, status in [(removed, "ACTIVE"), (active, "ACTIVE"), (failed, "FAILED")]:
        expect(page.locator(f"#nb-{hostname} .badge")).to_have_text(status, timeout=60_000)
    stack.kill(removed)
    expect(page.locator(f"#nb-{removed} .badge")).to_have_text("REMOVED", timeout=30_000)
    # Queued: a record whose spawn was not sent (what a client sees before a worker takes it).
    queued = stack.store.create(image="jupyter/minimal-notebook", user="bob", domain=stack.settings.domain)
    stack.created.append(queued.hostname)
    expect(page.locator(f"#nb-{queued.hostname} .badge")).to_have_text("PENDING")
    expect(page.locator(f"#nb-{starting} .stage")).to_have_text("waiting for the notebook to answer on port 8888")
    page.locator(f"#nb-{failed} details.error summary").click()
    page.evaluate("window.scrollTo(0, 0)")
    page.wait_for_timeout(1700)  # let the change highlight fade

    shot = tmp_path / "manage.png"
    page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stack.record(starting).status == Status.STARTING, "the screenshot was meant to show a starting notebook"
    if os.environ.get("UPDATE_DOCS_SCREENSHOT"):
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, ROOT / "docs" / "manage.png")

    # The same page on a phone: cards, nothing wider than the screen.
    phone = browser.new_context(viewport={"width": 390, "height": 800}, is_mobile=True, has_touch=True)
    try:
        small = phone.new_page()
        small.goto(server.url + "/manage")
        expect(small.locator("#live")).to_have_text("live")
        expect(small.locator(f"#nb-{active} .badge")).to_have_text("ACTIVE")
        assert small.evaluate("document.documentElement.scrollWidth") <= 390
        assert small.locator("#notebooks thead").is_hidden()
        small.screenshot(path=str(tmp_path / "manage-phone.png"))
    finally:
        phone.close()


def test_spawn_turns_active_and_kill_removes_without_a_reload(
    site: tuple[Any, ApiServer], page: Page, images: dict[str, str]
) -> None:
    stack, server = site
    open_manage(page, server.url + "/manage")
    user = f"pw{secrets.token_hex(3)}"

    page.fill("#spawn input[name=image]", images["httpd"])
    page.fill("#spawn input[name=user]", user)
    page.click("#spawn button[type=submit]")

    row = row_of(page, user)
    expect(row).to_have_count(1)
    hostname = row.get_attribute("data-hostname")
    assert hostname
    stack.created.append(hostname)
    expect(row.locator(".badge")).to_have_text("ACTIVE", timeout=60_000)
    # The link opens the notebook signed in: PUBLIC_URL's address with the notebook's own token.
    token = stack.store.internal(hostname, "token")
    assert token
    expect(row.locator("td[data-label='URL'] a")).to_have_attribute("href", f"http://{hostname}.nb.test/?token={token}")
    assert stack.record(hostname).status == Status.ACTIVE
    assert_not_reloaded(page)

    asked: list[str] = []

    def accept(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    row.get_by_role("button", name="Kill").click()
    expect(row.locator(".badge")).to_have_text("REMOVED", timeout=30_000)
    assert len(asked) == 1 and hostname in asked[0]
    expect(row.get_by_role("button", name="Kill")).to_have_count(0)
    assert stack.record(hostname).status == Status.REMOVED
    assert_not_reloaded(page)


def test_dismissing_the_confirmation_kills_nothing(
    site: tuple[Any, ApiServer], page: Page, images: dict[str, str]
) -> None:
    stack, server = site
    user = f"pw{secrets.token_hex(3)}"
    hostname = stack.spawn(images["httpd"], user=user)
    assert stack.wait(hostname, {Status.ACTIVE, Status.FAILED}).status == Status.ACTIVE
    open_manage(page, server.url + "/manage")
    page.once("dialog", lambda dialog: dialog.dismiss())
    row_of(page, user).get_by_role("button", name="Kill").click()
    page.wait_for_timeout(500)
    assert stack.record(hostname).status == Status.ACTIVE
    expect(row_of(page, user).locator(".badge")).to_have_text("ACTIVE")
    stack.kill(hostname)
    expect(row_of(page, user).locator(".badge")).to_have_text("REMOVED", timeout=30_000)


def test_the_user_filter_hides_other_users_also_in_live_updates(site: tuple[Any, ApiServer], page: Page) -> None:
    stack, server = site
    tag = secrets.token_hex(3)
    mine, theirs = f"fa{tag}", f"fb{tag}"
    first = stack.spawn(MISSING_IMAGE, user=mine)
    stack.spawn(MISSING_IMAGE, user=theirs)

    open_manage(page, server.url + "/manage")
    expect(row_of(page, theirs)).to_have_count(1)
    page.fill("#filters input[name=user]", mine)
    page.click("#filters button[type=submit]")
    page.wait_for_url(lambda url: url.endswith(f"/manage?user={mine}"))
    expect(page.locator("#live")).to_have_text("live")
    page.evaluate("window.__loadedOnce = true")

    expect(row_of(page, mine)).to_have_count(1)
    expect(row_of(page, theirs)).to_have_count(0)
    assert page.locator("#notebooks tbody tr[id^='nb-']").count() == 1

    # Live: another notebook of theirs stays hidden; then one of mine shows up (events arrive in
    # order, so once mine is shown, theirs has been seen and left out).
    stack.spawn(MISSING_IMAGE, user=theirs)
    second = stack.spawn(MISSING_IMAGE, user=mine)
    expect(page.locator(f"#nb-{second}")).to_have_count(1)
    expect(page.locator(f"#nb-{second} .badge")).to_have_text("FAILED", timeout=30_000)
    expect(row_of(page, theirs)).to_have_count(0)
    expect(row_of(page, mine)).to_have_count(2)
    expect(page.locator("#count")).to_have_text("2")
    assert first in page.locator("#notebooks tbody").inner_text()
    assert_not_reloaded(page)

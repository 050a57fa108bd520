"""thebe in a real browser against swarm-manager: the parts the browser tests and the thebe benchmark share.

- thebe 0.9.3 from the npm registry, installed with ``npm ci`` from ``testkit/thebe/package-lock.json``
  into ``.state/thebe`` (never globally, never into the product), once per machine and again only
  when the lock file changes; two runs installing at once take turns on a lock file.
- :class:`PageServer`: web pages on a loopback port of their own (so they have an origin of their
  own, as a book's pages would), with thebe's ``lib/`` served beside them.
- Pages as a reader would meet them: thebe in Binder mode (BinderHub's ``/build``), thebe in
  server mode after an anonymous spawn followed with an ``EventSource``, and a tmpnb-style client.
  Each records when things happen (milliseconds since the navigation began) in ``window.__t``:
  ``output`` when ``42`` is on the page, ``failed`` (with ``failure``) when the launch failed, and
  thebe's own ``status`` and ``error`` events.
- Debian's chromium (``/usr/bin/chromium``), never a downloaded browser, with every request that is
  not to loopback refused (and listed), so no test or benchmark reaches the internet.
"""

from __future__ import annotations

import fcntl
import hashlib
import html
import json
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from testkit.support import ROOT

PACKAGE = ROOT / "testkit" / "thebe"
INSTALL = ROOT / ".state" / "thebe"
LIB = INSTALL / "node_modules" / "thebe" / "lib"
LOCK = Path("/tmp/swarm-manager-thebe-npm.lock")
NPM_TIMEOUT = 900

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: The code every page runs, and what it must show.
CODE, EXPECTED = "print(6*7)", "42"


def install_thebe() -> Path:
    """thebe's ``lib/`` (its bundle and chunks), installed from the lock file if needed."""
    stamp = INSTALL / ".lock-sha256"
    wanted = hashlib.sha256((PACKAGE / "package-lock.json").read_bytes()).hexdigest()

    def current() -> bool:
        return (LIB / "index.js").is_file() and stamp.is_file() and stamp.read_text().strip() == wanted

    if current():
        return LIB
    if not shutil.which("npm"):
        raise RuntimeError("npm is not installed (Debian package npm; `make test` installs it)")
    LOCK.touch(exist_ok=True)
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if current():  # another run installed it while we waited
            return LIB
        INSTALL.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(PACKAGE / name, INSTALL / name)
        done = subprocess.run(
            ["npm", "ci", "--prefix", str(INSTALL), "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
            check=False,
        )
        if done.returncode != 0 or not (LIB / "index.js").is_file():
            raise RuntimeError(f"npm ci of thebe failed ({done.returncode}): {done.stderr[-2000:]}")
        stamp.write_text(wanted + "\n")
    return LIB


# -- pages ---------------------------------------------------------------------------------------
HARNESS = """
window.__t = {events: [], errors: [], stages: [], timeline: []};
function mark(name) { if (!(name in window.__t)) window.__t[name] = performance.now(); }
function show(text) { document.getElementById('log').textContent += text + '\\n'; }
function fail(e) {
  window.__t.failure = String((e && e.message) || e);
  show('failed: ' + window.__t.failure);
  mark('failed');
}
new MutationObserver(() => {
  for (const el of document.querySelectorAll('.jp-OutputArea-output')) {
    if (el.textContent.trim() === EXPECTED) mark('output');
  }
}).observe(document.documentElement, {subtree: true, childList: true, characterData: true});
document.addEventListener('DOMContentLoaded', () => {
  thebe.on('status', (name, data) => {
    window.__t.events.push(data.status + ': ' + data.message);
    window.__t.timeline.push([Math.round(performance.now()), data.status + ': ' + data.message]);
  });
  mark('loaded');
  thebe.on('error', (name, data) => { window.__t.errors.push(data.message); show(data.message); });
});
async function runCells(options) {
  const {notebook} = await thebe.bootstrap(Object.assign({
    requestKernel: true,
    kernelOptions: {kernelName: 'python3'},
    savedSessionOptions: {enabled: false},
    mountActivateWidget: false,
  }, options));
  mark('kernel');
  await notebook.executeAll();
  mark('executed');
}
"""

#: thebe in Binder mode: it opens GET <binderUrl>/build/gh/<repo>/<ref> itself.
BINDER = """
document.addEventListener('DOMContentLoaded', () => {
  runCells({useBinder: true, binderOptions: {binderUrl: API, repo: REPO, ref: REF, repoProvider: 'github'}})
    .catch(fail);
});
"""

#: thebe in server mode after an anonymous spawn (tmpnb's route, not waiting), followed with an
#: EventSource on the notebook's own events (its capability: ?token=), then connected to it.
SERVER = """
document.addEventListener('DOMContentLoaded', async () => {
  try {
    const answer = await fetch(API + '/api/spawn/', {
      method: 'POST', headers: {'Content-Type': 'text/plain;charset=UTF-8'},
      body: JSON.stringify({image_name: IMAGE, wait: false}),
    });
    const nb = await answer.json();
    window.__t.spawn = {status: answer.status, hostname: nb.hostname, record: nb.status};
    if (!answer.ok) throw new Error(nb.error);
    mark('spawned');
    const ready = await new Promise((resolve, reject) => {
      const url = API + '/container/' + nb.hostname + '/events?token=' + encodeURIComponent(nb.token);
      const source = new EventSource(url);
      const ends = ['failed', 'stopping', 'removed'];
      for (const stage of ['queued', 'creating', 'starting', 'waiting', 'ready', ...ends]) {
        source.addEventListener(stage, (event) => {
          const data = JSON.parse(event.data);
          window.__t.stages.push(stage);
          if (stage === 'ready') { source.close(); resolve(data); }
          else if (ends.includes(stage)) { source.close(); reject(new Error(data.message)); }
        });
      }
      source.onerror = () => {
        if (source.readyState === EventSource.CLOSED) reject(new Error('events stream refused'));
      };
    });
    window.__t.ready = {public_url: ready.public_url, notebook_url: ready.notebook_url};
    mark('ready');
    await runCells({useBinder: false, serverSettings: {baseUrl: ready.public_url, token: nb.token, appendToken: true}});
  } catch (e) { fail(e); }
});
"""

#: A tmpnb-style client, as the 2015 Thebe was: POST /api/spawn/ with text/plain JSON (no CORS
#: preflight), then straight to the notebook's REST API from the page's origin.
TMPNB = """
document.addEventListener('DOMContentLoaded', async () => {
  try {
    const answer = await fetch(API + '/api/spawn/', {
      method: 'POST', headers: {'Content-Type': 'text/plain;charset=UTF-8'}, body: JSON.stringify({image_name: IMAGE}),
    });
    const nb = await answer.json();
    window.__t.spawn = {status: answer.status, url: nb.url, hostname: nb.hostname, record: nb.status, token: nb.token};
    if (!answer.ok) throw new Error(nb.error);
    const kernels = await fetch(nb.url + 'api/kernels', {headers: {Authorization: 'token ' + nb.token}});
    window.__t.kernels = {status: kernels.status, body: await kernels.json()};
    const without = await fetch(nb.url + 'api/kernels');
    window.__t.without = {status: without.status};
    mark('done');
  } catch (e) { fail(e); }
});
"""


def page(script: str, **values: Any) -> str:
    """A page with thebe on it, one executable cell, and ``script`` (given ``values`` as constants)."""
    constants = "".join(f"const {name} = {json.dumps(value)};\n" for name, value in values.items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>thebe on swarm-manager</title>
<link rel="stylesheet" href="/thebe/thebe.css">
<script src="/thebe/index.js"></script>
<script>const EXPECTED = {json.dumps(EXPECTED)};
{constants}{HARNESS}{script}</script>
</head><body>
<div class="thebe-status"></div>
<pre data-executable="true" data-language="python">{html.escape(CODE)}</pre>
<pre id="log"></pre>
</body></html>
"""


class PageServer:
    """Pages (by path) and thebe's lib (under /thebe/) on a loopback port of their own."""

    def __init__(self, lib: Path) -> None:
        self.lib = lib.resolve()
        self.pages: dict[str, str] = {}
        # Paths that run a function (in the request's thread) and answer 204: a page's own back end.
        self.hooks: dict[str, Callable[[], None]] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                hook = server.hooks.get(path)
                if hook is not None:
                    hook()
                    self.send_response(204)
                    self.end_headers()
                    return
                body, kind = server.lookup(path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="pages", daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def lookup(self, path: str) -> tuple[bytes | None, str]:
        if path in self.pages:
            return self.pages[path].encode(), "text/html; charset=utf-8"
        if path.startswith("/thebe/"):
            target = (self.lib / path.removeprefix("/thebe/")).resolve()
            if target.is_relative_to(self.lib) and target.is_file():
                kind = {".js": "text/javascript", ".css": "text/css", ".map": "application/json"}.get(
                    target.suffix, "application/octet-stream"
                )
                return target.read_bytes(), kind
        return None, ""

    def start(self) -> PageServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's chromium under Playwright; fails (never skips) when it is missing."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing (Debian package chromium; `make test` installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            yield browser
        finally:
            browser.close()


def loopback_only(context: Any) -> list[str]:
    """Refuse every request of ``context`` that is not to this machine; return the list of them."""
    refused: list[str] = []

    def route(r: Any) -> None:
        host = urlsplit(r.request.url).hostname or ""
        if host in ("127.0.0.1", "localhost") or host.endswith(".localhost"):
            r.continue_()
        else:
            refused.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    return refused


def open_page(browser: Any, url: str, timeout: float) -> tuple[Any, Any, dict[str, Any], list[str]]:
    """A fresh context (nothing saved from another run) and its page at ``url``, waited on until
    the page is done (``output``, ``done`` or ``failed`` in ``window.__t``) or ``timeout`` seconds
    pass; returns the context, the page, ``window.__t`` and the requests refused."""
    context = browser.new_context()
    refused = loopback_only(context)
    page_ = context.new_page()
    page_.goto(url)
    try:
        page_.wait_for_function(
            "window.__t && (window.__t.output || window.__t.done || window.__t.failed)", timeout=timeout * 1000
        )
    except Exception as exc:
        state = page_.evaluate("window.__t || null")
        context.close()
        raise AssertionError(f"{url}: nothing happened within {timeout}s; the page saw {state}") from exc
    return context, page_, dict(page_.evaluate("window.__t")), refused

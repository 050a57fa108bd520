"""The installed `swarm-manager` console script, run as a subprocess against a real gunicorn
(started by the CLI's own `serve`), the stack's real worker and the real engine."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.status import Status
from testkit.stack import base_env
from testkit.support import ROOT, VENV_BIN, free_port, wait_for

CLI = VENV_BIN / "swarm-manager"
MISSING_IMAGE = "swarm-manager-test/missing:1"


def run_cli(
    *args: str, api: str | None = None, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    assert CLI.exists(), f"{CLI} is missing: install the project (.venv/bin/pip install --no-deps -e .)"
    full_env = {k: v for k, v in os.environ.items() if k not in ("SWARM_MANAGER_URL", "SWARM_MANAGER_TOKEN")}
    full_env.update(env or {})
    argv = [str(CLI), *(["--api", api] if api else []), *args]
    # Run from outside the source tree: the installed script must find its packages by itself.
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env, cwd="/")


def serve(env: dict[str, str], log: Path) -> Iterator[str]:
    """`swarm-manager serve`: gunicorn serving api.wsgi:app with ``env``'s settings."""
    port = free_port()
    proc = subprocess.Popen(
        [str(CLI), "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "8"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(base + "/healthz", timeout=1).ok, 30, f"swarm-manager serve (log: {log})")
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)


@pytest.fixture(scope="module")
def served(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from serve(stack.worker.env, tmp_path_factory.mktemp("cli-serve") / "gunicorn.log")


ADMIN_TOKEN = "cli-test-admin-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def served_with_auth(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same API with AUTH on (the default outside the tests) and an admin token."""
    env = {**stack.worker.env, "AUTH": "on", "ADMIN_TOKEN": ADMIN_TOKEN}
    yield from serve(env, tmp_path_factory.mktemp("cli-serve-auth") / "gunicorn.log")


def ensure_removed(stack: Any, hostname: str) -> None:
    record = stack.store.get(hostname)
    if record is not None and record.status not in (Status.REMOVED, Status.FAILED):
        stack.kill(hostname)
        stack.wait(hostname, {Status.REMOVED, Status.FAILED}, timeout=30)


def test_spawn_wait_status_list_kill(served: str, stack: Any, images: dict[str, str]) -> None:
    spawned = run_cli("spawn", "--image", images["httpd"], "--user", "cli", "--wait", api=served)
    assert spawned.returncode == 0, spawned.stderr
    opened = spawned.stdout.strip()
    hostname = opened.removeprefix("http://").split(".")[0]
    url = f"{hostname}.nb.test"
    try:
        # The address to open alone on stdout: PUBLIC_URL's, with the notebook's own token.
        token = stack.store.internal(hostname, "token")
        assert token and opened == f"http://{url}/?token={token}", spawned.stdout
        assert f"{hostname}  queued" in spawned.stderr  # progress on stderr
        assert f"ready at http://{url}/" in spawned.stderr and token not in spawned.stderr, spawned.stderr
        assert stack.record(hostname).status == Status.ACTIVE

        status = run_cli("status", hostname, api=served)
        assert status.returncode == 0, status.stderr
        lines = dict(line.split(None, 1) for line in status.stdout.splitlines() if len(line.split(None, 1)) == 2)
        assert lines["hostname"] == hostname and lines["status"] == "ACTIVE" and lines["url"] == url
        as_json = run_cli("status", hostname, "--json", api=served)  # --json after the command works too
        assert json.loads(as_json.stdout)["status"] == "ACTIVE"

        listed = run_cli("--json", "list", "--user", "cli", "--status", "active", api=served)
        assert listed.returncode == 0, listed.stderr
        records = json.loads(listed.stdout)
        assert hostname in [r["hostname"] for r in records]
        assert all(r["user"] == "cli" and r["status"] == "ACTIVE" for r in records)
        table = run_cli("list", "--user", "cli", api=served)
        assert table.returncode == 0, table.stderr
        header, *rows = table.stdout.splitlines()
        assert header.split() == ["HOSTNAME", "STATUS", "USER", "IMAGE", "AGE", "NODE", "URL"]
        assert any(row.split()[:3] == [hostname, "ACTIVE", "cli"] for row in rows), table.stdout

        killed = run_cli("kill", hostname, "--wait", api=served)
        assert killed.returncode == 0, killed.stderr
        assert killed.stdout.split() == [hostname, "REMOVED"]
        assert stack.record(hostname).status == Status.REMOVED
        assert not [c for c in stack.containers() if c.labels["swarm-manager.hostname"] == hostname]
        again = run_cli("kill", hostname, "--json", api=served)  # a no-op, still a success
        assert again.returncode == 0 and json.loads(again.stdout)["status"] == "REMOVED"
    finally:
        ensure_removed(stack, hostname)


def test_spawn_wait_of_a_missing_image_fails_with_the_reason(served: str, stack: Any) -> None:
    result = run_cli("spawn", "--image", MISSING_IMAGE, "--user", "cli", "--wait", api=served)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("swarm-manager: error: ") and " failed: " in last and "not present" in last, result.stderr
    hostname = last.split("error: ")[1].split()[0]
    assert stack.record(hostname).status == Status.FAILED

    as_json = run_cli("--json", "spawn", "--image", MISSING_IMAGE, "--user", "cli", "--wait", api=served)
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["status"] == "FAILED"  # scripts get the record too


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["spawn", "--image", "Not An Image!", "--user", "alice"], "image is not a valid Docker image reference"),
        (["spawn", "--image", "busybox", "--user", "no spaces"], "user must be"),
        (["spawn", "--image", "busybox", "--user", "alice", "--ttl", "0"], "ttl must be a whole number"),
        (["spawn", "--image", "busybox"], "user is required"),
        (["status", "zzzzzzzzzzzz"], "no notebook with hostname"),
        (["kill", "zzzzzzzzzzzz", "--wait"], "no notebook with hostname"),
        (["list", "--user", "a/b"], "user must be"),
        (["list", "--limit", "0"], "limit must be a whole number"),
    ],
)
def test_bad_input_fails_with_the_api_message(served: str, args: list[str], message: str) -> None:
    result = run_cli(*args, api=served)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("swarm-manager: error: ") and message in result.stderr, result.stderr
    assert "(HTTP 4" in result.stderr


def test_token_from_option_or_environment(served_with_auth: str) -> None:
    refused = run_cli("list", api=served_with_auth)
    assert refused.returncode == 1
    assert "needs a token" in refused.stderr and "(HTTP 401 unauthorized)" in refused.stderr, refused.stderr
    wrong = run_cli("list", "--token", "not-the-token", api=served_with_auth)
    assert wrong.returncode == 1 and "(HTTP 401" in wrong.stderr, wrong.stderr
    for result in (
        run_cli("--json", "list", "--token", ADMIN_TOKEN, api=served_with_auth),
        run_cli("--json", "list", api=served_with_auth, env={"SWARM_MANAGER_TOKEN": ADMIN_TOKEN}),
    ):
        assert result.returncode == 0, result.stderr
        assert isinstance(json.loads(result.stdout), list)


def test_bad_usage_is_exit_2() -> None:
    for args in (["spawn", "--user", "alice"], ["list", "--status", "bogus"], ["nope"], ["--api", "ftp://x", "list"]):
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "error" in result.stderr


def test_a_bad_api_workers_setting_concerns_only_serve() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    assert run_cli("list", api=nowhere, env={"API_WORKERS": "auto"}).returncode == 3  # parsed; the API is away
    served = run_cli("serve", env={"API_WORKERS": "auto"})
    assert served.returncode == 2 and "--workers: invalid int value: 'auto'" in served.stderr


def test_unreachable_api_is_a_clear_error() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    for result in (run_cli("list", api=nowhere), run_cli("status", "zzzzzzzzzzzz", env={"SWARM_MANAGER_URL": nowhere})):
        assert result.returncode == 3, result.stderr
        assert result.stderr.strip() == (
            f"swarm-manager: error: cannot reach the swarm-manager API at {nowhere}: Connection refused "
            "(is it running? set --api or SWARM_MANAGER_URL)"
        )


# -- --wait against an API without the events route: polling ------------------------------------
class FakeOldApi(BaseHTTPRequestHandler):
    """An API from before the events stream: 404 on /events, a record moving on each poll."""

    hostname = "ki60dje40khk"
    steps = ["PENDING", "STARTING", "STARTING", "ACTIVE"]
    seen: list[str] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def record(self, status: str) -> dict[str, str]:
        return {
            "hostname": self.hostname,
            "url": f"{self.hostname}.old.test",
            "status": status,
            "node": "n1",
            "error": "",
            "user": "old",
            "image": "busybox",
            "start_time": "2026-01-01T00:00:00.000000Z",
        }

    def do_POST(self) -> None:
        self.seen.append(f"POST {self.path}")
        self._json(202, self.record("PENDING"))

    def do_GET(self) -> None:
        self.seen.append(f"GET {self.path}")
        if self.path == f"/container/{self.hostname}":
            polls = sum(1 for s in self.seen if s == f"GET {self.path}")
            self._json(200, self.record(self.steps[min(polls, len(self.steps)) - 1]))
        else:
            self._json(404, {"error": "The requested URL was not found on the server.", "code": "not_found"})


@pytest.fixture
def old_api() -> Iterator[str]:
    FakeOldApi.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOldApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_spawn_wait_polls_when_the_api_has_no_events_stream(old_api: str) -> None:
    result = run_cli("spawn", "--image", "busybox", "--user", "old", "--wait", api=old_api, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ki60dje40khk.old.test"
    assert FakeOldApi.seen[:2] == ["POST /spawn", "GET /container/ki60dje40khk/events"]
    assert FakeOldApi.seen.count("GET /container/ki60dje40khk") == 4  # polled until ACTIVE
    assert "starting on n1" in result.stderr and "ready at" in result.stderr


# -- `swarm-manager worker` ---------------------------------------------------------------------
def test_worker_command_runs_a_real_worker(stack_factory: Any, images: dict[str, str], tmp_path: Path) -> None:
    own = stack_factory("cliworker", worker=False)
    log = tmp_path / "worker.log"
    proc = subprocess.Popen(
        [str(CLI), "worker", "--hostname", "cliworker@%h", "--without-mingle", "--without-gossip"],
        cwd="/",
        env={**os.environ, **base_worker_env(own)},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: proc.poll() is None and " ready." in log.read_text(errors="replace"),
            60,
            f"swarm-manager worker (log: {log})",
            0.2,
        )
        hostname = own.spawn(images["httpd"], user="cliworker")
        assert own.wait(hostname).status == Status.ACTIVE, log.read_text(errors="replace")[-2000:]
        own.kill(hostname)
        assert own.wait(hostname, {Status.REMOVED}, timeout=30).status == Status.REMOVED
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGQUIT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        own.cleanup()


def base_worker_env(stack: Any) -> dict[str, str]:
    return base_env(stack.settings.redis_url, stack.settings.instance)


def test_token_create_list_revoke(served_with_auth: str) -> None:
    admin = {"SWARM_MANAGER_TOKEN": ADMIN_TOKEN}
    made = run_cli("token", "create", "--user", "clitok", api=served_with_auth, env=admin)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()  # the token alone: TOKEN=$(swarm-manager token create --user U)
    assert len(token) >= 40 and "\n" not in token, made.stdout
    assert "shown only now" in made.stderr

    mine = run_cli("--json", "list", "--token", token, api=served_with_auth)
    assert mine.returncode == 0, mine.stderr
    assert all(r["user"] == "clitok" for r in json.loads(mine.stdout))
    listed = run_cli("--json", "token", "list", "--user", "clitok", api=served_with_auth, env=admin)
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert set(entry) == {"id", "user", "created"} and entry["user"] == "clitok"
    table = run_cli("token", "list", api=served_with_auth, env=admin)
    assert table.stdout.splitlines()[0].split() == ["ID", "USER", "CREATED"]
    assert any(row.split()[:2] == [entry["id"], "clitok"] for row in table.stdout.splitlines()[1:]), table.stdout

    refused = run_cli("token", "list", "--token", token, api=served_with_auth)  # a user's token: not the admin
    assert refused.returncode == 1 and "(HTTP 403 forbidden)" in refused.stderr, refused.stderr

    revoked = run_cli("token", "revoke", entry["id"], api=served_with_auth, env=admin)
    assert revoked.returncode == 0, revoked.stderr
    assert f"{entry['id']}  revoked" in revoked.stdout
    after = run_cli("list", "--token", token, api=served_with_auth)
    assert after.returncode == 1 and "(HTTP 401 unauthorized)" in after.stderr, after.stderr
    again = run_cli("token", "revoke", entry["id"], api=served_with_auth, env=admin)
    assert again.returncode == 1 and "(HTTP 404 not_found)" in again.stderr, again.stderr


def test_the_cli_is_a_pure_http_client() -> None:
    # It runs where only the API is reachable: no Docker SDK, no worker code, no Redis client use.
    probe = (
        "import sys, cli.main; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('docker', 'worker', 'celery', 'flask', 'api')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-c", probe], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert result.returncode == 0, result.stdout + result.stderr

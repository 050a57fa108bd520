"""The README's `make run`, as a new user meets it: a fresh clone, the runtime lock alone, real processes.

The tree is cloned with git (the working tree's changes laid over it, so an uncommitted change is
what runs), and `make run` starts there with a virtualenv built from requirements.txt alone (kept
between runs under ~/.cache, keyed by the lock's hash), so a runtime dependency that only a test
tool brings in fails here. The run is the user's own: supervisord with Redis, the routing proxy,
the API (authentication on, the generated admin token), a worker, beat and Flower, against the
machine's Docker engine. Then, in order: a spawn through it reaches ACTIVE and opens through the
proxy; /manage in Chromium spawns the real Jupyter image and its link opens the notebook signed
in; each process is SIGKILLed in turn and comes back while spawns settle; Ctrl-C stops it all.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from shared.status import SETTLED, Status
from testkit.support import ROOT, cleanup_engine, free_port, fresh_clone, unique_instance, wait_for
from tests.test_dependencies import canonical, pins

#: Packages of the test and lint set (requirements-dev.txt) that must not be in the runtime venv.
TEST_TOOLS = ("pytest", "ruff", "mypy", "playwright", "schemathesis", "fakeredis", "uv", "hypothesis", "lupa")
#: Installed with the venv itself or as the project: not from the lock.
NOT_LOCKED = {"pip", "setuptools", "wheel", "swarm-manager"}
RUNTIME_CACHE = Path.home() / ".cache" / "swarm-manager"
SUPERVISED = ("redis", "proxy", "api", "worker", "beat", "watch", "flower")


def runtime_venv() -> Path:
    digest = hashlib.sha256((ROOT / "requirements.txt").read_bytes()).hexdigest()[:16]
    return RUNTIME_CACHE / f"venv-run-{digest}"


def direct() -> requests.Session:
    http = requests.Session()
    http.trust_env = False  # loopback only, never through a proxy from the environment
    # A connection per request, as separate clients make them: a kept-alive one would die with
    # the API process this module kills, which says nothing about the API still answering.
    http.headers["Connection"] = "close"
    return http


@dataclass
class Run:
    """A `make run` in a fresh clone, and what it serves."""

    clone: Path
    venv: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: Path
    marker: str
    api: str
    flower: str
    proxy: str
    http: requests.Session = field(default_factory=direct)

    @property
    def token(self) -> str:
        return (self.clone / ".state" / "admin-token").read_text().strip()

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return self.http.request(method, self.api + path, headers=headers, timeout=10, **kwargs)

    def spawn(self, image: str, user: str = "runner") -> str:
        response = self.call("POST", "/spawn", json={"image": image, "user": user})
        assert response.status_code == 202, response.text
        return str(response.json()["hostname"])

    def record(self, hostname: str) -> dict[str, Any]:
        response = self.call("GET", f"/container/{hostname}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def settled(self, hostnames: list[str], timeout: float) -> dict[str, dict[str, Any]]:
        def all_settled() -> dict[str, dict[str, Any]] | None:
            records = {h: self.record(h) for h in hostnames}
            return records if all(r["status"] in SETTLED for r in records.values()) else None

        try:
            return wait_for(all_settled, timeout, f"{hostnames} to settle", interval=0.5)
        except AssertionError:
            print(self.log_tail())
            raise

    def status(self) -> dict[str, tuple[str, int]]:
        """supervisorctl status: program -> (state, pid)."""
        conf = self.clone / ".state" / "supervisord.conf"
        out = subprocess.run(
            [str(self.venv / "bin" / "supervisorctl"), "-c", str(conf), "status"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
        found = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                pid = re.search(r"pid (\d+)", line)
                found[parts[0]] = (parts[1], int(pid.group(1)) if pid else 0)
        return found

    def processes(self) -> list[int]:
        """Every process on the machine started by this run (they all inherit its marker)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if f"SM_RUN_MARKER={self.marker}".encode() in environ.split(b"\0"):
                pids.append(int(entry.name))
        return pids

    def healthy(self) -> bool:
        try:
            return self.http.get(self.api + "/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def run(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
    images: dict[str, str],
    jupyter_image: str,
) -> Iterator[Run]:
    clone = fresh_clone(tmp_path_factory.mktemp("fresh") / "swarm-manager")
    venv = runtime_venv()
    venv.parent.mkdir(parents=True, exist_ok=True)
    marker = secrets.token_hex(8)
    ports = {name: free_port() for name in ("api", "flower", "redis", "proxy", "proxy_api")}
    instance = unique_instance("makerun")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "SWARM_MANAGER"))},
        "VENV": str(venv),
        "PORT": str(ports["api"]),
        "FLOWER_PORT": str(ports["flower"]),
        "REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
        "PROXY_PUBLIC_URL": f"http://127.0.0.1:{ports['proxy']}",
        "PROXY_API_URL": f"http://127.0.0.1:{ports['proxy_api']}",
        "INSTANCE": instance,
        # The engine may be a Swarm manager while the Swarm tests run: this run uses containers.
        "ENGINE_BACKEND": "containers",
        "START_TIMEOUT": "30",
        "KILL_GRACE": "1",
        "RECONCILE_INTERVAL": "5",
        "SM_RUN_MARKER": marker,
    }
    log = clone.parent / "make-run.log"
    proc = subprocess.Popen(
        ["make", "run"], cwd=clone, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    served = Run(
        clone,
        venv,
        env,
        proc,
        log,
        marker,
        api=f"http://127.0.0.1:{ports['api']}",
        flower=f"http://127.0.0.1:{ports['flower']}",
        proxy=f"http://127.0.0.1:{ports['proxy']}",
    )
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"make run exited ({proc.returncode}):\n{served.log_tail()}")
            states = served.status()
            return served.healthy() and all(states.get(p, ("",))[0] == "RUNNING" for p in SUPERVISED)

        # A first run builds the runtime venv (about a minute); later runs reuse it.
        wait_for(up, 300, f"make run to come up (log: {log})", interval=1)
        yield served
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        for pid in served.processes():  # whatever a failed test left running
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        cleanup_engine(docker_client, instance)


def test_fresh_clone_runs_from_the_runtime_lock_alone(run: Run, images: dict[str, str]) -> None:
    listed = subprocess.run(
        [str(run.venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    installed = {canonical(line.split("==")[0]): line.split("==")[-1] for line in listed.splitlines() if "==" in line}
    assert not [t for t in TEST_TOOLS if t in installed], f"test tools in the runtime venv: {installed}"
    locked = pins("requirements.txt")
    strays = {n: v for n, v in installed.items() if n not in locked and n not in NOT_LOCKED}
    assert not strays, f"installed but not in requirements.txt: {strays}"
    assert all(locked[n] == v for n, v in installed.items() if n not in NOT_LOCKED)

    hostname = run.spawn(images["httpd"])
    record = run.settled([hostname], 60)[hostname]
    assert record["status"] == Status.ACTIVE, record["error"]
    # The notebook opens at its public URL, through the proxy `make run` started.
    port = run.proxy.rsplit(":", 1)[1]
    assert record["public_url"] == f"http://{hostname}.localhost:{port}/"
    assert record["notebook_url"] == f"{record['public_url']}?token={record['token']}"
    page = run.http.get(run.proxy + "/", headers={"Host": f"{hostname}.localhost:{port}"}, timeout=10)
    assert page.status_code == 200 and "test notebook" in page.text, (page.status_code, page.text[:200])
    # Flower answers, with the password `make run` made for it, and only with it.
    user, password = (run.clone / ".state" / "flower-auth").read_text().strip().split(":", 1)
    assert run.http.get(run.flower + "/", timeout=10).status_code == 401
    flower = run.http.get(run.flower + "/", auth=(user, password), timeout=10)
    assert flower.status_code == 200 and "Flower" in flower.text
    killed = run.call("DELETE", f"/container/{hostname}")
    assert killed.status_code == 202
    assert run.settled([hostname], 30)[hostname]["status"] == Status.REMOVED


def test_the_manage_page_link_opens_the_notebook_signed_in(run: Run, jupyter_image: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    from tests.test_manage_browser import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            context.set_default_timeout(30_000)
            page = context.new_page()
            page.goto(run.api + "/manage")
            page.fill("input[name=token]", run.token)
            page.click("#signin button[type=submit]")
            page.fill("#spawn input[name=image]", jupyter_image)
            page.fill("#spawn input[name=user]", "reader")
            page.click("#spawn button[type=submit]")
            row = page.locator("#notebooks tbody tr[id^='nb-']", has=page.locator("td", has_text=jupyter_image))
            expect(row).to_have_count(1)
            hostname = row.get_attribute("data-hostname")
            assert hostname
            expect(row).to_have_attribute("data-status", "ACTIVE", timeout=90_000)
            link = row.locator("td[data-label='URL'] a")
            href = link.get_attribute("href") or ""
            assert href.startswith(f"http://{hostname}.localhost:") and "?token=" in href, href
            with context.expect_page() as opened:
                link.click()
            notebook = opened.value
            notebook.wait_for_load_state()
            # Jupyter's file tree, signed in by the token in the link: no login prompt.
            assert notebook.url.split("?")[0].endswith("/tree"), notebook.url
            expect(notebook.locator("#notebook_list")).to_be_attached()
            expect(notebook.locator("input[type=password]")).to_have_count(0)
            # The same address without the token, in a browser that never had it: the login page.
            stranger = browser.new_context().new_page()
            stranger.goto(href.split("?")[0])
            assert "/login" in stranger.url, stranger.url
            expect(stranger.locator("form input#password_input")).to_be_attached()
        finally:
            browser.close()
    assert run.call("DELETE", f"/container/{hostname}").status_code == 202


def test_a_killed_process_is_restarted_and_queued_spawns_settle(run: Run, images: dict[str, str]) -> None:
    spawned: list[str] = []
    for name in ("worker", "beat", "watch", "flower"):
        before = run.status()[name][1]
        os.kill(before, signal.SIGKILL)
        spawned += [run.spawn(images["httpd"], user=f"after-{name}") for _ in range(2)]  # queued meanwhile
        assert run.healthy(), f"the API stopped answering when {name} was killed"
        wait_for(
            lambda n=name, b=before: run.status()[n][0] == "RUNNING" and run.status()[n][1] not in (0, b),
            30,
            f"{name} to be restarted",
        )
    # An API worker process: gunicorn's master replaces it while the other keeps answering.
    master = run.status()["api"][1]
    children = [int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
    os.kill(children[0], signal.SIGKILL)
    spawned.append(run.spawn(images["httpd"], user="after-api-worker"))
    # The API itself (gunicorn's master): supervisord starts it again within seconds.
    os.kill(master, signal.SIGKILL)
    wait_for(run.healthy, 5, "the API to answer again within 5 s of its master's death", interval=0.1)
    wait_for(lambda: run.status()["api"][0] == "RUNNING" and run.status()["api"][1] not in (0, master), 15, "a new API")
    wait_for(run.healthy, 30, "the new API to answer")  # (a bound, not a measure: loaded machines are slow)
    spawned.append(run.spawn(images["httpd"], user="after-api"))

    records = run.settled(spawned, 120)
    assert {r["status"] for r in records.values()} <= {Status.ACTIVE, Status.FAILED}, records
    assert all(r["status"] == Status.ACTIVE for r in records.values()), {h: r["error"] for h, r in records.items()}
    log = run.log.read_text(errors="replace")
    for name in ("worker", "beat", "watch", "flower", "api"):
        assert re.search(rf"exited: {name} \(terminated by SIGKILL; not expected\)", log), name
    for hostname in spawned:
        run.call("DELETE", f"/container/{hostname}")


def test_ctrl_c_stops_everything_it_started(run: Run) -> None:
    assert run.processes(), "the run's processes carry its marker"
    os.killpg(run.proc.pid, signal.SIGINT)  # what a terminal sends the foreground process group
    run.proc.wait(60)
    wait_for(lambda: not run.processes(), 30, "every process of the run to end", interval=0.5)
    for url in (run.api, run.flower, run.proxy):
        with pytest.raises(requests.ConnectionError):
            run.http.get(url, timeout=2)
    assert not (run.clone / ".state" / "supervisor.sock").exists()
    assert "received SIGINT indicating exit request" in run.log.read_text(errors="replace")


def test_bad_public_url_stops_make_run_with_the_message(tmp_path: Path) -> None:
    clone = fresh_clone(tmp_path / "swarm-manager")
    env = {**os.environ, "VENV": str(runtime_venv()), "PUBLIC_URL": "http://{user}.example.org/", "PROXY": "off"}
    env["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    result = subprocess.run(["make", "run"], cwd=clone, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "PUBLIC_URL" in result.stderr and "{user}" in result.stderr, result.stderr[-2000:]
    # Nothing was started: the check comes before supervisord.
    assert not (clone / ".state" / "supervisord.pid").exists()

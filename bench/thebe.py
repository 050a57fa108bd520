"""A reader's page load to the first output with thebe in Binder mode (`make bench`, section ``thebe``).

    .venv/bin/python -m bench.thebe [--n 5] [--tag latest]

The page a book would serve (thebe 0.9.3 from npm, testkit/thebe_site.py), in Debian's chromium, a
fresh browser context per load (nothing cached, no saved session), against the API as `make run`
serves it (gunicorn's gevent workers, authentication on, no token on the page), a real worker,
configurable-http-proxy and the real Jupyter Notebook image, every request on loopback. Each
figure is from the navigation's start to ``42`` (``print(6*7)``) on the page. Interleaved, one of
each per round, so drift on a shared machine hits them all:

- ``cold``: Binder mode, an image that is not pooled: queued, started, routed, then the kernel.
- ``pool``: Binder mode, the pooled image, the pool refilled before each load.
- ``active``: of each ``cold`` load, the launch's own spawn-to-ACTIVE (the record's ``start_time`` to
  its ACTIVE ``updated_at``): the part of a cold load that is swarm-manager's alone.
- ``raw_ready``: raw Docker: create + start + the readiness probe of the same image (bench/common.py
  ``raw_spawn``), no page; the issue's yardstick for ``cold`` (and the same work as ``active``).
- ``raw_thebe``: raw Docker and thebe in server mode: the container is created and started as the
  navigation begins, and the page connects as soon as its server answers (no API, no queue, no proxy):
  the floor of a cold page.
- ``raw_thebe_request``: the same, with the container started when the page's script asks for it
  (a request to the page's own server), the moment thebe in Binder mode sends its launch request:
  a cold page with raw Docker in swarm-manager's place.
- ``cold_prewarmed``, ``pool_prewarmed``: the same two with the image's profile starting a kernel as
  the server starts (:data:`PREWARM`: a command that opens thebe's session, path ``/``, which
  Jupyter then hands to thebe instead of starting a kernel of its own).
- ``pool_warm_kernel``: the pooled load with the profile's ``warm_kernel: python3`` instead: the
  worker opens that session in each pool member before offering it (worker/spawner.py).

Goals (the issue's): ``pool`` median <= 1.0 s; ``cold`` median <= ``raw_ready`` median + 0.5 s.
Figures go to stdout and ``bench/results/thebe-<tag>.json``; containers and keys are removed after.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import requests

from bench.common import (
    RESULTS,
    Gunicorn,
    delete_keys,
    ms,
    raw_spawn,
    remove_everything,
    remove_one,
    server_seconds,
    stats,
)
from shared.pool import Pool
from shared.profiles import origin_arguments
from shared.queue import Queue, make_celery
from shared.settings import Settings
from shared.store import Store, connect
from testkit.chp import running_chp
from testkit.jupyter_image import CMD, build_jupyter_image
from testkit.stack import base_env
from testkit.support import RedisServer, WorkerProcess, free_port, unique_instance, wait_for
from testkit.thebe_site import BINDER, PageServer, chromium, install_thebe, open_page, page

ADMIN_TOKEN = "adm-" + secrets.token_urlsafe(24)
TARGETS = {"pool_median": 1.0, "cold_over_raw": 0.5}
KINDS = (
    "cold",
    "active",
    "raw_ready",
    "raw_thebe",
    "raw_thebe_request",
    "pool",
    "cold_prewarmed",
    "active_prewarmed",
    "pool_prewarmed",
    "pool_warm_kernel",
)
PROFILES = """
profiles:
  - name: jupyter
    images: ["swarm-manager-test/jupyter:*"]
    command: {command}
{extra}binder:
  - spec: gh/bench/pooled/*
    image: {image}
  - spec: gh/bench/cold/*
    image: docker.io/{image}
"""

#: A notebook command that also opens thebe's kernel session (path ``/``) as soon as the server
#: answers, so a reader's thebe finds its kernel started: the server is exec'd as the container's
#: main process, with the arguments the worker adds ("$@": the allowed origins).
PREWARM = [
    "sh",
    "-c",
    "python3 -c '\n"
    "import json, os, time, urllib.request\n"
    'api = "http://127.0.0.1:8888/api/"\n'
    'auth = {"Authorization": "token " + os.environ.get("JUPYTER_TOKEN", "")}\n'
    "for _ in range(1200):\n"
    "    try:\n"
    '        urllib.request.urlopen(urllib.request.Request(api + "status", headers=auth), timeout=2)\n'
    "        break\n"
    "    except Exception:\n"
    "        time.sleep(0.05)\n"
    'body = {"path": "/", "name": "thebe.ipynb", "type": "notebook", "kernel": {"name": "python3"}}\n'
    'headers = {**auth, "Content-Type": "application/json"}\n'
    'request = urllib.request.Request(api + "sessions", json.dumps(body).encode(), headers, method="POST")\n'
    "urllib.request.urlopen(request, timeout=60)\n"
    "' &\n"
    'exec jupyter notebook --ip=0.0.0.0 --port=8888 --no-browser --allow-root "$@"',
    "jupyter",
]

#: thebe in server mode on a raw container that starts as the page loads: it connects once the
#: server answers (a refused or reset connection is "not yet").
SERVER_UP = """
async function serverUp() {
  for (;;) {
    try { if ((await fetch(SERVER + 'api/status?token=' + TOKEN)).ok) return; } catch (e) {}
    await new Promise((done) => setTimeout(done, 50));
  }
}
"""
RAW = (
    SERVER_UP
    + """
document.addEventListener('DOMContentLoaded', async () => {
  try {
    await serverUp();
    mark('ready');
    await runCells({useBinder: false, serverSettings: {baseUrl: SERVER, token: TOKEN, appendToken: true}});
  } catch (e) { fail(e); }
});
"""
)

#: The same, with the container started when the page asks for it (its own back end, LAUNCH), at
#: the moment thebe in Binder mode sends its /build request: raw Docker in our place.
RAW_ON_REQUEST = (
    SERVER_UP
    + """
document.addEventListener('DOMContentLoaded', async () => {
  try {
    await fetch(LAUNCH);
    await serverUp();
    mark('ready');
    await runCells({useBinder: false, serverSettings: {baseUrl: SERVER, token: TOKEN, appendToken: true}});
  } catch (e) { fail(e); }
});
"""
)


def log(text: str) -> None:
    print(text, flush=True)


class Bench:
    def __init__(self, redis_url: str, workdir: Path, client: docker.DockerClient) -> None:
        self.redis_url = redis_url
        self.workdir = workdir
        self.client = client
        self.image = build_jupyter_image(client)
        self.lib = install_thebe()
        self.instance = unique_instance("benchthebe")
        self.raw_instance = f"{self.instance}-raw"
        self.samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
        self.parts: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}

    def run(self, n: int) -> dict[str, Any]:
        pages = PageServer(self.lib).start()
        try:
            with running_chp(self.workdir) as chp, chromium() as browser:
                self.pages, self.browser, self.origin = pages, browser, pages.origin
                for command, suffix, extra in (
                    (CMD, "", ""),
                    (PREWARM, "_prewarmed", ""),
                    (CMD, "_warm_kernel", "    warm_kernel: python3\n"),
                ):
                    self.configuration(chp, command, suffix, n, extra)
        finally:
            pages.stop()
        return self.result(n)

    def configuration(self, chp: Any, command: list[str], suffix: str, n: int, extra: str = "") -> None:
        """One API, worker and store with the image's profile running ``command`` (plus ``extra``
        profile lines); ``n`` rounds. With ``warm_kernel`` only pooled loads count (it warms pool
        members only)."""
        instance = unique_instance("benchthebe")
        store = Store(connect(self.redis_url), f"{instance}:")
        profiles = self.workdir / f"profiles{suffix}.yml"
        profiles.write_text(PROFILES.format(command=json.dumps(command), image=self.image, extra=extra))
        port = urlsplit(chp.public_url).port
        env = base_env(
            self.redis_url,
            instance,
            AUTH="on",
            ADMIN_TOKEN=ADMIN_TOKEN,
            DOMAIN="localhost",
            PUBLIC_URL=f"http://{{hostname}}.{{domain}}:{port}/",
            CORS_ORIGINS=self.origin,
            ALLOWED_IMAGES="swarm-manager-test/jupyter:*",
            ANONYMOUS_IMAGES="swarm-manager-test/jupyter:*",
            ANONYMOUS_PER_ADDRESS="100",
            ANONYMOUS_SPAWN_RATE="1000",
            ANONYMOUS_MAX_NOTEBOOKS="0",
            PROFILES_FILE=str(profiles),
            POOL=f"{self.image}=1",
            START_TIMEOUT="120",
            **chp.env(),
        )
        worker = WorkerProcess(env, self.workdir / f"worker{suffix}.log", name=f"benchthebe{suffix}")
        api = Gunicorn(env, self.workdir / f"gunicorn{suffix}.log")
        try:
            worker.start()
            api.start()
            self.api, self.store = api, store
            self.pool = Pool(store, {self.image: 1})
            self.queue = Queue(make_celery(Settings.from_env(env), name="bench_thebe"))
            log(
                f"  {'with a kernel started by the profile' if suffix else 'the image as it is'}: warm-up (not counted)"
            )
            self.binder("cold", suffix, count=False)
            if not suffix:
                self.raw_ready(count=False)
            for i in range(n):
                log(f"  round {i + 1} of {n}")
                if suffix != "_warm_kernel":
                    self.binder("cold", suffix)
                if not suffix:
                    self.raw_ready()
                    self.raw_thebe()
                    self.raw_thebe(on_request=True)
                self.binder("pool", suffix)
        finally:
            api.stop()
            worker.stop()
            remove_everything(self.client, instance)
            remove_everything(self.client, self.raw_instance)
            delete_keys(store.redis, f"{instance}:")
            store.redis.close()

    # -- one load of each kind ---------------------------------------------------------------
    def load(self, kind: str, url: str, count: bool) -> dict[str, Any]:
        context, _, seen, refused = open_page(self.browser, url, 180)
        context.close()
        if "output" not in seen or refused:
            raise RuntimeError(f"{kind}: the page did not show 42: {seen.get('failure')} {refused} {seen['timeline']}")
        if count:
            self.samples[kind].append(seen["output"] / 1000)
            self.parts[kind].append(breakdown(seen))
        log(f"    {kind}: {seen['output']:.0f} ms")
        return seen

    def binder(self, kind: str, suffix: str = "", count: bool = True) -> None:
        before = {r.hostname for r in self.store.records(user="_anonymous")}
        if kind == "pool":
            if self.pool.ready_count(self.image) < 1:
                self.queue.refill(self.image)  # a claim queues one too; the first load needs its own
            wait_for(lambda: self.pool.ready_count(self.image) >= 1, 180, "the warm pool to refill")
            time.sleep(2)  # a pool is filled ahead of its readers (a prewarmed member's kernel starts meanwhile)
        repo = "bench/cold" if kind == "cold" else "bench/pooled"
        url = self.page(f"/{kind}{suffix}.html", BINDER, REPO=repo, REF="main")
        self.load(kind + suffix, url, count)
        for record in self.store.records(user="_anonymous"):
            if record.hostname not in before:
                if kind == "cold" and count:
                    # The part of a cold load that is ours alone, as raw_ready measures Docker's.
                    self.samples[f"active{suffix}"].append(server_seconds(record))
                requests.delete(
                    f"{self.api.url}/container/{record.hostname}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
                )

    def raw_ready(self, count: bool = True) -> None:
        name = f"{self.raw_instance}-{secrets.token_hex(4)}"
        try:
            seconds = raw_spawn(self.client, self.image, name, self.raw_instance, 0.05)
        finally:
            remove_one(self.client, name)
        if count:
            self.samples["raw_ready"].append(seconds)
        log(f"    raw_ready: {seconds * 1000:.0f} ms")

    def raw_thebe(self, on_request: bool = False) -> None:
        name, port, token = f"{self.raw_instance}-{secrets.token_hex(4)}", free_port(), secrets.token_urlsafe(24)
        server = f"http://127.0.0.1:{port}/"
        launch = f"/launch-{name}"
        if on_request:
            url = self.page("/raw-request.html", RAW_ON_REQUEST, SERVER=server, TOKEN=token, LAUNCH=launch)
        else:
            url = self.page("/raw.html", RAW, SERVER=server, TOKEN=token)

        def start() -> None:
            self.client.containers.run(
                self.image,
                command=[*CMD, *origin_arguments(None, [self.origin])],
                environment={"JUPYTER_TOKEN": token},
                name=name,
                labels={"swarm-manager.instance": self.raw_instance},
                ports={"8888/tcp": ("127.0.0.1", port)},
                detach=True,
            )

        starter = threading.Thread(target=start)
        if on_request:
            self.pages.hooks[launch] = starter.start  # when the page's script asks
        else:
            starter.start()  # as the navigation begins
        try:
            self.load("raw_thebe_request" if on_request else "raw_thebe", url, True)
        finally:
            self.pages.hooks.pop(launch, None)
            if starter.is_alive() or starter.ident is not None:
                starter.join(60)
            remove_one(self.client, name)

    # -- helpers ---------------------------------------------------------------------------
    def page(self, path: str, script: str, **values: Any) -> str:
        self.pages.pages[path] = page(script, API=self.api.url, **values)
        return self.pages.origin + path

    def result(self, n: int) -> dict[str, Any]:
        figures = {kind: stats(values) for kind, values in self.samples.items()}
        parts = {
            kind: {name: stats([p[name] for p in found if name in p]) for name in ("loaded", "ready", "kernel")}
            for kind, found in self.parts.items()
            if found
        }
        pool, cold, raw = (figures[k].get("median", float("nan")) for k in ("pool", "cold", "raw_ready"))
        return {
            "n": n,
            "samples": self.samples,
            "stats": figures,
            "parts": parts,
            "targets": TARGETS,
            "met": {
                "pool": pool <= TARGETS["pool_median"],
                "cold": cold <= raw + TARGETS["cold_over_raw"],
            },
        }


def breakdown(seen: dict[str, Any]) -> dict[str, float]:
    """Seconds from the navigation's start to: the page's scripts ran (``loaded``), the server was
    ready (thebe's ``server-ready``, or the raw server answering), thebe's kernel session was attached."""
    out = {"loaded": seen["loaded"] / 1000, "kernel": seen["kernel"] / 1000}
    ready = [t for t, what in seen["timeline"] if what.startswith("server-ready")]
    if "ready" in seen:
        out["ready"] = seen["ready"] / 1000
    elif ready:
        out["ready"] = ready[0] / 1000
    return out


def bench_thebe(redis_url: str, workdir: Path, n: int = 5) -> dict[str, Any]:
    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=120)
    try:
        return Bench(redis_url, workdir, client).run(n)
    finally:
        client.close()


def rows(result: dict[str, Any]) -> list[list[str]]:
    """Summary rows: what, ours, raw, figure, target, met."""
    s, parts = result["stats"], result["parts"]

    def median(kind: str) -> float:
        return float(s[kind].get("median", float("nan")))

    def split(kind: str) -> str:
        p = parts.get(kind, {})
        names = [("loaded", "scripts ran"), ("ready", "server ready"), ("kernel", "kernel attached")]
        return ", ".join(f"{label} {ms(p[name]['median'])}" for name, label in names if p.get(name, {}).get("n"))

    return [
        [
            f"thebe Binder page to `42`, warm pool (median of {s['pool'].get('n', 0)})",
            ms(median("pool")),
            ms(median("raw_thebe")),
            split("pool"),
            "<= 1000 ms",
            "yes" if result["met"]["pool"] else "no",
        ],
        [
            f"thebe Binder page to `42`, cold (median of {s['cold'].get('n', 0)})",
            ms(median("cold")),
            ms(median("raw_ready")),
            f"raw page+server {ms(median('raw_thebe'))}, started on the page's request "
            f"{ms(median('raw_thebe_request'))} ({split('raw_thebe_request')}); {split('cold')}",
            "<= raw spawn-to-ready + 500 ms",
            "yes" if result["met"]["cold"] else "no",
        ],
        [
            "its launch's spawn-to-ACTIVE (median), beside raw spawn-to-ready",
            ms(median("active")),
            ms(median("raw_ready")),
            f"{median('active') - median('raw_ready'):+.3f} s",
            "<= raw + 500 ms",
            "yes" if median("active") <= median("raw_ready") + TARGETS["cold_over_raw"] else "no",
        ],
        [
            "the same, warm pool, the profile starting a kernel with the server (median)",
            ms(median("pool_prewarmed")),
            "",
            split("pool_prewarmed"),
            "<= 1000 ms",
            "yes" if median("pool_prewarmed") <= TARGETS["pool_median"] else "no",
        ],
        [
            "the same, warm pool, its members' kernel started by the worker (`warm_kernel`, median)",
            ms(median("pool_warm_kernel")),
            "",
            split("pool_warm_kernel"),
            "<= 1000 ms",
            "yes" if median("pool_warm_kernel") <= TARGETS["pool_median"] else "no",
        ],
        [
            "the same, cold, the profile starting a kernel with the server (median)",
            ms(median("cold_prewarmed")),
            ms(median("raw_ready")),
            split("cold_prewarmed"),
            "<= raw spawn-to-ready + 500 ms",
            "yes" if median("cold_prewarmed") <= median("raw_ready") + TARGETS["cold_over_raw"] else "no",
        ],
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5, help="rounds (one load of each kind per round)")
    parser.add_argument("--tag", default="latest")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="smthebe-") as tmp:
        redis = RedisServer(Path(tmp) / "redis")
        redis.start()
        try:
            result = bench_thebe(redis.url, Path(tmp), args.n)
        finally:
            redis.stop()
    result["seconds"] = round(time.monotonic() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"thebe-{args.tag}.json"
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    for row in rows(result):
        log(" | ".join(row))
    log(f"{out} written in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

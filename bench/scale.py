"""How a reconcile pass and the listing grow with the number of notebooks (`make bench`).

    .venv/bin/python -m bench.scale [--sizes 100,1000,10000]

For each N, N records shaped exactly like the product's ACTIVE records (one made through the API
and the real Spawner, then cloned in Redis: bench/spawn.py's ``seed``) in its own redis-server;
then, with every one of them reported running by the engine:

- a reconcile pass (the real Reconciler and Store; the engine's listing is handed over ready, so
  the pass's own cost is measured: the engine's is in bench/swarm.py), its Redis commands;
- GET /containers, whole and a page of 100, through gunicorn as `make run` serves it;
- /manage loaded in headless Chromium until its table shows its rows (the newest 500 at most).

Figures go to stdout, bench/results/scale-latest.json and a plot scale-latest.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from api import create_app
from bench.common import RESULTS, Gunicorn, delete_keys, ms, stats
from bench.spawn import InstantEngine, seed, template_record, timed_get
from shared.settings import Settings
from shared.store import Store, connect
from testkit.stack import base_env
from testkit.support import RedisServer, unique_instance
from worker.engine import EngineObject


class ListedEngine(InstantEngine):
    """Reports every notebook it is given as running (what a healthy engine's listing says)."""

    def __init__(self, objects: dict[str, EngineObject]) -> None:
        self.objects = objects

    def inventory(self) -> dict[str, Any]:
        return self.objects


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def manage_render(url: str, rows: int, samples: int = 3) -> list[float]:
    """Seconds from navigating to ``url``/manage until its table shows ``rows`` rows, in headless
    Chromium (Debian's, driven by Playwright as tests/test_manage_browser.py does); [] without it."""
    if not Path(CHROMIUM).exists():
        return []
    from playwright.sync_api import sync_playwright

    took = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            for _ in range(samples):
                page = browser.new_page(viewport={"width": 1200, "height": 700})
                started = time.perf_counter()
                page.goto(f"{url}/manage", wait_until="load", timeout=120_000)
                page.wait_for_function(
                    f"document.querySelectorAll('tbody tr[data-hostname]').length >= {rows}", timeout=120_000
                )
                took.append(time.perf_counter() - started)
                page.close()
        finally:
            browser.close()
    return took


def log(text: str) -> None:
    print(text, flush=True)


def commands(store: Store) -> int:
    return int(store.redis.info("stats")["total_commands_processed"])


def run(sizes: list[int], workdir: Path) -> dict[str, Any]:
    from worker.reconciler import Reconciler
    from worker.spawner import Spawner

    redis = RedisServer(workdir / "redis")
    redis.start()
    env = base_env(redis.url, unique_instance("bscale"), ORPHAN_GRACE=3600)
    settings = Settings.from_env(env)
    store = Store(connect(settings.redis_url), settings.key_prefix)
    api = Gunicorn(env, workdir / "gunicorn.log")
    out: dict[str, Any] = {"sizes": {}}
    try:
        api.start()
        app = create_app(settings)

        def spawn(user: str) -> str:
            response = app.test_client().post("/spawn", data={"image": "swarm-manager-test/httpd:2", "user": user})
            return str(response.get_json()["hostname"])

        template = template_record(store, spawn, settings)
        have = 0
        for size in sizes:
            seed(store, template, have, size - have)
            have = size
            hostnames = [str(h) for h in store.redis.zrange(f"{store.prefix}idx:all", 0, -1)]
            now = time.time()
            engine = ListedEngine({h: EngineObject(hostname=h, running=True, created=now - 86400) for h in hostnames})
            spawner = Spawner(store, engine, settings)  # type: ignore[arg-type]
            reconciler = Reconciler(store, engine, spawner, settings)  # type: ignore[arg-type]
            passes, cmds = [], 0
            for _ in range(5 if size <= 10_000 else 2):
                c0, t0 = commands(store), time.perf_counter()
                report = reconciler.run(lock=False)
                passes.append(time.perf_counter() - t0)
                cmds = commands(store) - c0
                assert not report.failed, report.failed[:3]
            whole, _, records = timed_get(f"{api.url}/containers", 5)
            page, _, _ = timed_get(f"{api.url}/containers?limit=100", 20)
            from api.manage import PAGE_LIMIT

            manage = manage_render(api.url, min(size, PAGE_LIMIT))
            out["sizes"][str(size)] = {
                "records": records,
                "reconcile_pass": stats(passes),
                "reconcile_redis_commands": cmds,
                "list_whole": stats(whole),
                "list_page_100": stats(page),
                "manage_render": stats(manage),  # the page shows the newest PAGE_LIMIT
                "redis_used_memory": int(store.redis.info("memory")["used_memory"]),
            }
            log(
                f"  {size:>7,} records: reconcile pass {ms(stats(passes)['median'])} ({cmds} Redis commands), "
                f"GET /containers {ms(stats(whole)['median'])}, a page of 100 {ms(stats(page)['median'])}, "
                f"/manage in Chromium {ms(stats(manage).get('median', float('nan')))}"
            )
    finally:
        api.stop()
        delete_keys(store.redis, settings.key_prefix)
        redis.stop()
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(k) for k in results["sizes"]]
    fig, ax = plt.subplots(figsize=(7, 5))
    for key, label in (
        ("reconcile_pass", "reconcile pass"),
        ("list_whole", "GET /containers, all"),
        ("list_page_100", "GET /containers?limit=100"),
        ("manage_render", "/manage in Chromium (newest 500)"),
    ):
        if any("median" not in results["sizes"][str(n)][key] for n in sizes):
            continue
        ax.plot(sizes, [results["sizes"][str(n)][key]["median"] * 1000 for n in sizes], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("live notebooks (records)")
    ax.set_ylabel("ms (median)")
    ax.set_title(f"cost vs number of notebooks ({results['when']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--out", default=str(RESULTS / "scale-latest.json"))
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="smbscale-") as tmp:
        results = run([int(x) for x in args.sizes.split(",")], Path(tmp))
    results["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results["seconds"] = round(time.monotonic() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=float) + "\n")
    plot(results, out.with_suffix(".png"))
    log(f"{out} and {out.with_suffix('.png')} written in {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Isolated notebooks at raw speed: spawns on an engine whose default bridge keeps containers apart.

    .venv/bin/python -m bench.icc [--n 20]

A second dockerd in a network namespace of its own (testkit/tls_engine.py's, restarted with
``--icc=false``; the host's engine is not touched), one real worker process against it (its unix
socket, notebooks published on the namespace's address), the API in-process. Interleaved one of
each per round, spawn-to-ACTIVE timed as the ``cold`` rows of bench/spawn.py time it:

- ``ours``: default settings (NOTEBOOK_ISOLATION on): the worker finds the default bridge isolating
  and puts notebooks there.
- ``ours_own_network``: the same with NOTEBOOK_NETWORK naming a bridge made with inter-container
  traffic off, as the worker's own network is on an engine that lets containers talk.
- ``raw``: create + start + an HTTP probe every 20 ms on the default bridge (bench/common.py).

Figures go to stdout and ``bench/results/icc-<tag>.json``; everything is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker

from bench.common import RESULTS, against_raw, ms, raw_spawn, remove_containers, remove_one
from bench.spawn import Context, ours_once, start_stack, stop_stack
from testkit.support import RedisServer, build_images
from testkit.tls_engine import running_tls_engine
from worker.hardening import isolated_network_options

RAW_PROBE_INTERVAL = 0.02


def log(text: str) -> None:
    print(text, flush=True)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    host_client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=120)
    images = build_images(host_client)
    redis = RedisServer(workdir / "redis")
    redis.start()
    try:
        with running_tls_engine(images, workdir / "certs") as engine:
            engine.stop_engine()
            engine.start_engine("--icc=false")
            client = engine.client
            image = engine.image
            own = f"smbench-icc-{secrets.token_hex(3)}"
            client.api.create_network(own, driver="bridge", options=isolated_network_options())
            where = {"DOCKER_HOST": engine.socket_url, "PUBLISH_IP": engine.engine_ip}
            ours = Context(args, redis, client, images, workdir)
            mine = Context(args, redis, client, images, workdir)
            samples: dict[str, list[float]] = {"ours": [], "ours_own_network": [], "raw": []}
            networks: dict[str, list[str]] = {}  # the networks each kind's notebooks joined
            try:
                start_stack(ours, "benchicc", **where)
                start_stack(mine, "benchiccown", NOTEBOOK_NETWORK=own, **where)
                for i in range(args.warmup + args.n):
                    took = {}
                    for kind, ctx in (("ours", ours), ("ours_own_network", mine)):
                        took[kind], _, _, hostname = ours_once(ctx, image, f"icc{i}")
                        container = client.containers.get(f"{ctx.instance}-{hostname}")
                        networks[kind] = sorted(container.attrs["NetworkSettings"]["Networks"])
                        remove_one(client, container.name)
                        time.sleep(args.pause)
                    name = f"{ours.raw_instance}-{secrets.token_hex(6)}"
                    took["raw"] = raw_spawn(
                        client, image, name, ours.raw_instance, RAW_PROBE_INTERVAL, host=engine.engine_ip
                    )
                    remove_containers(client, ours.raw_instance, threads=1)
                    time.sleep(args.pause)
                    if i >= args.warmup:
                        for kind, value in took.items():
                            samples[kind].append(value)
                        log(f"  #{i - args.warmup + 1:>2}: " + "  ".join(f"{k} {ms(v):>9}" for k, v in took.items()))
            finally:
                stop_stack(mine)
                stop_stack(ours)
                client.api.remove_network(own)
    finally:
        redis.stop()
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "n": args.n,
        **against_raw(samples),
        "networks": networks,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--pause", type=float, default=0.2)
    parser.add_argument("--tag", default="latest")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="smbench-icc-") as tmp:
        result = run(args, Path(tmp))
    for kind in ("ours", "ours_own_network"):
        ratio = result[kind + "_ratio"]
        log(f"{kind}: {ms(result[kind]['median'])} = {ratio:.2f}x raw ({ms(result['raw']['median'])})")
    out = RESULTS / f"icc-{args.tag}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Images from a registry: swarm-manager's spawn of an image the engine lacks, against raw Docker.

    .venv/bin/python -m bench.pulls [--rounds 5] [--burst 20] [--megabytes 30] [--tag latest]

On real parts: a redis-server, one real Celery worker process (default settings), the real engine,
and a real registry on loopback (Debian's docker-registry, testkit/registry.py) holding a test image
of ``--megabytes`` of random bytes in three layers over the httpd test image.

- ``cold``: ``--rounds`` spawns of that image with no copy of its layers on the engine, from the
  POST to the record's ACTIVE event, interleaved one by one with raw Docker doing the same work
  (``docker pull`` through the SDK, then create + start + an HTTP probe every 20 ms). The image
  and the container are removed after each, so every round pulls everything.
- ``burst``: ``--burst`` concurrent spawns of the missing image until all are ACTIVE, against as
  many concurrent raw pulls followed by as many raw create + start + probe; with the registry's
  count of manifest reads for each (single flight: one for the spawns).

Figures go to stdout and ``bench/results/pulls-<tag>.json``. Containers, images, keys and the
registry are removed after.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import docker.errors

from api import create_app
from bench.common import (
    RESULTS,
    EventTimer,
    delete_keys,
    isolated_network,
    ms,
    raw_spawn,
    remove_containers,
    remove_everything,
    stats,
)
from shared.settings import Settings
from shared.status import Status
from shared.store import Store, connect
from testkit.registry import Registry, running_registry
from testkit.stack import base_env
from testkit.support import RedisServer, WorkerProcess, build_images, unique_instance

PROBE = 0.02
LAYERS = 3


def build_layered(client: docker.DockerClient, base: str, megabytes: int) -> str:
    tag = f"swarm-manager-test/bench-layered:{secrets.token_hex(4)}"
    lines = [f"FROM {base}"] + [f"COPY blob{i} /blob{i}" for i in range(LAYERS)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        files = {"Dockerfile": ("\n".join(lines) + "\n").encode()}
        files.update({f"blob{i}": os.urandom(megabytes * 1024 * 1024 // LAYERS) for i in range(LAYERS)})
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    client.images.build(fileobj=io.BytesIO(buf.getvalue()), custom_context=True, tag=tag, rm=True)
    return tag


def forget(client: docker.DockerClient, ref: str) -> None:
    try:
        client.images.remove(ref, force=True)
    except docker.errors.NotFound:
        pass


def raw_pull(client: docker.DockerClient, ref: str) -> float:
    began = time.perf_counter()
    name, tag = ref.rsplit(":", 1)
    for message in client.api.pull(name, tag=tag, stream=True, decode=True):
        if message.get("error"):
            raise RuntimeError(message["error"])
    return time.perf_counter() - began


def manifest_reads(registry: Registry, ref: str) -> int:
    repository, tag = ref.split("/", 1)[1].rsplit(":", 1)
    return registry.pulls(repository, tag)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--megabytes", type=int, default=30)
    parser.add_argument("--tag", default="latest")
    args = parser.parse_args()

    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=300)
    images = build_images(client)
    workdir = Path(tempfile.mkdtemp(prefix="bench-pulls-"))
    redis_server = RedisServer(workdir / "redis")
    redis_server.start()
    instance = unique_instance("benchpull")
    network = isolated_network(client, instance)
    local = build_layered(client, images["httpd"], args.megabytes)
    results: dict[str, Any] = {"rounds": args.rounds, "burst": args.burst, "megabytes": args.megabytes}
    worker = None
    ref = ""
    try:
        with running_registry() as registry:
            ref = registry.push(local, "bench/layered", "1")
            forget(client, ref)
            forget(client, local)  # only the registry has its layers now
            env = base_env(redis_server.url, instance, NOTEBOOK_NETWORK=network, START_TIMEOUT="120")
            settings = Settings.from_env(env)
            store = Store(connect(settings.redis_url), settings.key_prefix)
            http = create_app(settings).test_client()
            worker = WorkerProcess(env, workdir / "worker.log", name="benchpull")
            worker.start()
            timer = EventTimer(store)

            def spawn() -> str:
                answer = http.post("/spawn", data={"image": ref, "user": "bench"})
                assert answer.status_code == 202, answer.get_json()
                return str(answer.get_json()["hostname"])

            def settle(hostnames: list[str], began: float) -> float:
                seen = timer.wait(hostnames, 600, frozenset({Status.ACTIVE, Status.FAILED}))
                for h in hostnames:
                    record = seen[h].record
                    assert record is not None and record.status == Status.ACTIVE, record and record.error
                return max(seen[h].at[Status.ACTIVE] for h in hostnames) - began

            def clean() -> None:
                remove_containers(client, instance)  # the network stays: the worker's notebooks use it
                forget(client, ref)

            ours: list[float] = []
            raw: list[float] = []
            for i in range(args.rounds):
                clean()
                began = time.perf_counter()
                ours.append(settle([spawn()], began))
                clean()
                began = time.perf_counter()
                raw_pull(client, ref)
                raw_spawn(client, ref, f"{instance}-raw{i}", instance, PROBE, network=network)
                raw.append(time.perf_counter() - began)
                print(f"cold round {i + 1}: ours {ms(ours[-1])}, raw {ms(raw[-1])}", flush=True)
            results["cold"] = {
                "ours": stats(ours),
                "raw": stats(raw),
                "ratio_median": stats(ours)["median"] / stats(raw)["median"],
            }

            clean()
            reads = manifest_reads(registry, ref)
            began = time.perf_counter()
            hostnames = [spawn() for _ in range(args.burst)]
            burst_ours = settle(hostnames, began)
            ours_reads = manifest_reads(registry, ref) - reads
            clean()
            reads = manifest_reads(registry, ref)
            began = time.perf_counter()
            with ThreadPoolExecutor(args.burst) as pool:
                list(pool.map(lambda _: raw_pull(client, ref), range(args.burst)))
                pulled = time.perf_counter() - began
                list(
                    pool.map(
                        lambda i: raw_spawn(client, ref, f"{instance}-burst{i}", instance, PROBE, network=network),
                        range(args.burst),
                    )
                )
            burst_raw = time.perf_counter() - began
            raw_reads = manifest_reads(registry, ref) - reads
            results["burst"] = {
                "ours_seconds": burst_ours,
                "raw_seconds": burst_raw,
                "raw_pull_seconds": pulled,
                "ratio": burst_ours / burst_raw,
                "ours_manifest_reads": ours_reads,
                "raw_manifest_reads": raw_reads,
            }
            timer.close()
            clean()
            delete_keys(store.redis, settings.key_prefix)
    finally:
        if worker is not None:
            worker.stop()
        remove_everything(client, instance)
        for name in (local, ref):
            if name:
                forget(client, name)
        redis_server.stop()

    cold, burst = results["cold"], results["burst"]
    print(
        f"\ncold spawn of a {args.megabytes} MB image only in the registry (median of {args.rounds}): "
        f"ours {ms(cold['ours']['median'])}, raw pull+create+start+probe {ms(cold['raw']['median'])}, "
        f"ratio {cold['ratio_median']:.2f}"
    )
    print(
        f"burst of {args.burst} spawns of it: ours {burst['ours_seconds']:.2f} s ({burst['ours_manifest_reads']} "
        f"manifest reads), raw {burst['raw_seconds']:.2f} s ({burst['raw_manifest_reads']} manifest reads), "
        f"ratio {burst['ratio']:.2f}"
    )
    out = RESULTS / f"pulls-{args.tag}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()

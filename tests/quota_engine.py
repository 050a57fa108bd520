"""A Docker engine whose storage can cap a container's writable layer, for tests: btrfs on a loop file.

Docker limits a writable layer (``storage_opt`` size, NOTEBOOK_DISK_LIMIT) only on some storage:
overlay2 on xfs mounted with ``pquota``, btrfs, zfs, devicemapper. The test machines' engine is
overlay2 on ext4, which refuses such a container, and their kernel has no XFS quotas
(``CONFIG_XFS_QUOTA`` is off: ``mount -o pquota`` fails with "quota support not available"), so
the limit is proved on btrfs, whose quota groups the kernel has. What the ``quota_engine``
fixture builds (module scope) and always tears down:

- a folder ``/tmp/smq-<hex>`` (with the ``owner`` file of testkit/netns.py) holding a sparse 1 GiB
  file formatted with ``mkfs.btrfs`` and loop-mounted on ``data/``;
- a network namespace ``smq<hex>`` (veth in a random ``10.76.<n>.0/24``): a second dockerd in the
  host's namespace would fight the main engine over ``docker0`` (testkit/netns.py);
- ``dockerd --storage-driver btrfs`` with that ``data/`` as its data-root, in the namespace;
- the busybox test image, copied from the main engine.

Teardown: the engine's containers, the dockerd, the mounts under the folder (the loop device is
released with the file system), the namespace and the folder. Leftovers of runs that died
without their teardown (same prefix, owner gone) are removed first.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest

from testkit import netns

PREFIX = "smq"
SUBNETS = "10.76"  # 10.78.x: the TLS engine (testkit/tls_engine.py); 10.79.x: the Swarm worker
REQUIRED_TOOLS = ("ip", "nsenter", "dockerd", "docker", "mount", "umount", "truncate", "mkfs.btrfs")
FS_SIZE = "1G"  # sparse: it takes only what the test writes


@dataclass
class QuotaEngine:
    base: Path
    client: docker.DockerClient  # on the engine's own unix socket
    image: str  # the busybox test image, loaded into it


def _destroy(tag: str, base: Path, pid: int | None = None) -> None:
    """Everything one run made, in reverse: dockerd and its children, mounts, namespace, folder."""
    name = f"{PREFIX}{tag}"
    netns.stop_dockerd(base, pid, netns=name)
    netns.unmount_under(base)
    netns.remove_namespace(name, base)


@contextlib.contextmanager
def running_quota_engine(image: str) -> Iterator[QuotaEngine]:
    netns.require_tools(REQUIRED_TOOLS, "the disk limit tests", "iproute2, util-linux, docker.io, btrfs-progs")
    netns.cleanup_leftovers(PREFIX, _destroy)
    tag = secrets.token_hex(3)
    name = f"{PREFIX}{tag}"
    base = netns.TMP / f"{PREFIX}-{tag}"
    netns.claim(base)
    proc: subprocess.Popen[bytes] | None = None
    client: docker.DockerClient | None = None
    try:
        disk = base / "fs.img"
        netns.run("truncate", "-s", FS_SIZE, str(disk))
        netns.run("mkfs.btrfs", "-q", str(disk))
        (base / "data").mkdir()
        netns.run("mount", "-o", "loop", str(disk), str(base / "data"))
        netns.make_namespace(name, netns.free_subnet(SUBNETS))
        proc = netns.start_dockerd(name, base, ["--storage-driver", "btrfs"])
        try:
            client = netns.wait_dockerd(proc, base)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- dockerd log ---\n{netns.log_tail(base, 30)}") from None
        netns.load_image(f"unix://{base}/docker.sock", image, base / "cli")
        yield QuotaEngine(base=base, client=client, image=image)
    finally:
        try:
            if client is not None:
                # Removed first: a running notebook would hold dockerd's shutdown for its stop timeout.
                with contextlib.suppress(docker.errors.DockerException, OSError):
                    for container in client.containers.list(all=True):
                        with contextlib.suppress(docker.errors.DockerException):
                            container.remove(force=True)
                client.close()
        finally:
            _destroy(tag, base, proc.pid if proc else None)
            netns.reap(proc)


@pytest.fixture(scope="module")
def quota_engine(images: dict[str, str]) -> Iterator[QuotaEngine]:
    try:
        with running_quota_engine(images["httpd"]) as engine:
            yield engine
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"could not start the btrfs engine: {exc}", pytrace=False)

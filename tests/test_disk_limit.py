"""NOTEBOOK_DISK_LIMIT enforced for real: on an engine whose storage can cap a writable layer.

The engine the other tests use (overlay2 on ext4) refuses the limit; that refusal, and the spawn
failing at once over it, is tested in tests/test_hardening.py. Here a second engine stores its
containers on btrfs (tests/quota_engine.py), and a notebook that writes past its limit is stopped
by the kernel while one without a limit writes the same on the same file system.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from shared.settings import Settings
from testkit.support import unique_instance
from tests.quota_engine import QuotaEngine, quota_engine  # noqa: F401
from worker.containers import ContainerEngine
from worker.engine import NotebookSpec

MIB = 1024 * 1024
LIMIT = 20 * MIB
WRITE_MIB = 40  # twice the limit
# What the kernel answers a write past the limit: EDQUOT on btrfs, ENOSPC on xfs project quotas.
REFUSED = (b"Disk quota exceeded", b"No space left on device")


def fill(container: Any, mib: int) -> tuple[int, bytes, int]:
    """Write ``mib`` MiB to /fill inside ``container``: (dd's exit code, its output, bytes written)."""
    code, out = container.exec_run(["/bin/busybox", "dd", "if=/dev/zero", "of=/fill", "bs=1M", f"count={mib}"])
    size_code, size = container.exec_run(["/bin/busybox", "stat", "-c", "%s", "/fill"])
    assert size_code == 0, size
    return code, out, int(size.decode().strip())


@pytest.fixture
def engines(quota_engine: QuotaEngine) -> Iterator[tuple[ContainerEngine, ContainerEngine]]:  # noqa: F811
    """The worker's engine on the btrfs dockerd, with NOTEBOOK_DISK_LIMIT and without."""
    instance = unique_instance("quota")
    base = {"INSTANCE": instance, "ENGINE_BACKEND": "containers", "KILL_GRACE": "0"}  # busybox ignores SIGTERM
    limited = Settings.from_env({**base, "NOTEBOOK_DISK_LIMIT": "20m"})
    free = Settings.from_env(base)
    yield ContainerEngine(quota_engine.client, limited), ContainerEngine(quota_engine.client, free)


def test_a_notebook_cannot_write_past_its_disk_limit(
    engines: tuple[ContainerEngine, ContainerEngine],
    quota_engine: QuotaEngine,  # noqa: F811
) -> None:
    limited, free = engines
    capped = NotebookSpec("quota0000001", quota_engine.image, "disk", "nb.test", 8888, limited.settings.instance)
    control = NotebookSpec("quota0000002", quota_engine.image, "disk", "nb.test", 8888, free.settings.instance)
    try:
        limited.start(capped)
        container = quota_engine.client.containers.get(capped.name)
        assert container.attrs["HostConfig"]["StorageOpt"] == {"size": str(LIMIT)}
        code, out, written = fill(container, WRITE_MIB)
        assert code != 0 and any(words in out for words in REFUSED), (code, out)
        assert written <= LIMIT, written

        # The same write without a limit succeeds on the same file system: the limit stopped it.
        free.start(control)
        code, out, written = fill(quota_engine.client.containers.get(control.name), WRITE_MIB)
        assert code == 0 and written == WRITE_MIB * MIB, (code, out, written)
    finally:
        for engine, spec in ((limited, capped), (free, control)):
            with contextlib.suppress(Exception):
                engine.remove(spec)

"""Hardened notebook containers (worker/hardening.py), inspected on the real engine.

A notebook runs whatever its user types, so what the engine was asked for is checked where the
engine says what it did (``docker inspect``), and from inside the running container
(``/proc/1/status``: the capability sets and ``NoNewPrivs`` the kernel really applied).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import pytest

from shared.errors import EngineError
from shared.settings import Settings
from shared.status import Status
from testkit.support import unreachable_client, wait_for
from tests.swarm_cluster import SwarmCluster, swarm  # noqa: F401
from worker.engine import NotebookSpec
from worker.hardening import container_options, service_resources
from worker.services import ServiceEngine

FINAL = {Status.ACTIVE, Status.FAILED}
MIB = 1024 * 1024
GIB = 1024 * MIB
DEFAULT_CAPS = {"CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"}
# Capability bit numbers (linux/capability.h) of the default set.
CAP_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "SETGID": 6, "SETUID": 7}
# NOTEBOOK_LOG_MAX_SIZE / NOTEBOOK_LOG_MAX_FILES as the engine is given them, by default.
DEFAULT_LOGS = {"max-size": "10m", "max-file": "3"}
# The "chatty" test image's last line, once its 30 MB are written.
CHATTY_DONE = b"chatty: wrote 30 MB"


def caps(values: list[str] | None) -> set[str]:
    return {v.upper().removeprefix("CAP_") for v in values or []}


def proc_status(container: Any) -> dict[str, str]:
    code, out = container.exec_run(["cat", "/proc/1/status"])
    assert code == 0, out
    return dict(line.split(":\t", 1) for line in out.decode().splitlines() if ":\t" in line)


def assert_hardened(attrs: dict[str, Any], *, memory: int, nano_cpus: int, pids: int = 512) -> None:
    host = attrs["HostConfig"]
    assert host["Privileged"] is False
    assert host["NetworkMode"] not in ("host",) and not host["NetworkMode"].startswith("container:")
    assert host["PidMode"] in ("", "private"), host["PidMode"]
    assert host.get("IpcMode") != "host" and host.get("UTSMode") in ("", None)
    assert not host.get("Binds") and not host.get("Mounts") and not host.get("VolumesFrom")
    assert attrs["Mounts"] == []  # nothing at all: no engine socket, no host path, no volume
    assert host["CapDrop"] == ["ALL"] or caps(host["CapDrop"]) == {"ALL"}
    assert caps(host["CapAdd"]) == DEFAULT_CAPS
    assert "no-new-privileges" in (host.get("SecurityOpt") or []) or "no-new-privileges:true" in (
        host.get("SecurityOpt") or []
    )
    assert host["PidsLimit"] == pids
    assert host["Memory"] == memory
    assert host["NanoCpus"] == nano_cpus
    assert not host.get("Devices") and not host.get("DeviceCgroupRules")
    assert host["LogConfig"] == {"Type": "json-file", "Config": DEFAULT_LOGS}  # its output log is rotated
    assert not host.get("StorageOpt")  # NOTEBOOK_DISK_LIMIT is empty by default


def assert_log_bounded(container: Any, max_size: int, max_files: int) -> int:
    """The container's output log (its LogPath and the rotated files beside it) is at most
    ``max_files`` files of ``max_size`` bytes, each plus one message (the engine rotates once a
    file has reached max-size, so the last message may cross it); return its size."""
    wait_for(lambda: CHATTY_DONE in container.logs(tail=3), 30, "the notebook's 30 MB to reach its log")
    container.reload()
    log_path = Path(container.attrs["LogPath"])
    files = sorted(log_path.parent.glob(log_path.name + "*"))
    sizes = {f.name: f.stat().st_size for f in files}
    total = sum(sizes.values())
    assert len(files) <= max_files, sizes
    assert total <= max_files * (max_size + 64 * 1024), sizes
    assert total >= max_size, sizes  # it did write, and the log was rotated rather than cut short
    return total


# -- plain containers, through the whole stack -------------------------------------------------------
def test_spawned_container_is_hardened(stack: Any, images: dict[str, str]) -> None:
    h = stack.spawn(images["httpd"], user="hardy")
    record = stack.wait(h, FINAL, timeout=60)
    assert record.status == Status.ACTIVE, record.error
    container = stack.docker.containers.get(record.container_id)
    assert_hardened(container.attrs, memory=2 * GIB, nano_cpus=1_000_000_000)

    # What the kernel applied to the notebook's process.
    status = proc_status(container)
    assert status["NoNewPrivs"].strip() == "1"
    expected = sum(1 << bit for bit in CAP_BITS.values())
    assert int(status["CapEff"], 16) == expected, status["CapEff"]
    assert int(status["CapBnd"], 16) == expected, status["CapBnd"]  # dropped for good, not just now
    stack.kill(h)
    assert stack.wait(h, {Status.REMOVED}, timeout=30).status == Status.REMOVED


def test_profile_limits_and_settings_replace_the_defaults(
    stack_factory: Any, images: dict[str, str], tmp_path: Path
) -> None:
    profiles = tmp_path / "profiles.yml"
    profiles.write_text(
        "profiles:\n  - name: small\n    images: ['swarm-manager-test/httpd:*']\n"
        "    mem_limit: 256m\n    cpu_limit: 0.5\n"
    )
    stack = stack_factory(
        "hardprof", PROFILES_FILE=str(profiles), PIDS_LIMIT=64, NOTEBOOK_CAP_ADD="", DEFAULT_MEM_LIMIT="1g"
    )
    h = stack.spawn(images["httpd"], user="prof")
    record = stack.wait(h, FINAL, timeout=60)
    assert record.status == Status.ACTIVE, record.error
    container = stack.docker.containers.get(record.container_id)
    host = container.attrs["HostConfig"]
    assert host["Memory"] == 256 * MIB and host["NanoCpus"] == 500_000_000  # the profile's, not the defaults
    assert host["PidsLimit"] == 64
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert int(proc_status(container)["CapEff"], 16) == 0

    # Another image: no profile, so the defaults (DEFAULT_MEM_LIMIT=1g, DEFAULT_CPU_LIMIT=1).
    h2 = stack.spawn(images["slow3"], user="prof")
    record2 = stack.wait(h2, FINAL, timeout=60)
    assert record2.status == Status.ACTIVE, record2.error
    host2 = stack.docker.containers.get(record2.container_id).attrs["HostConfig"]
    assert host2["Memory"] == GIB and host2["NanoCpus"] == 1_000_000_000


def test_notebook_output_log_is_rotated(stack_factory: Any, images: dict[str, str]) -> None:
    # 1 MB x 2 files: a notebook that prints 30 MB keeps at most about 2 MB of it on the engine's disk.
    stack = stack_factory("logs", NOTEBOOK_LOG_MAX_SIZE="1m", NOTEBOOK_LOG_MAX_FILES="2")
    h = stack.spawn(images["chatty"], user="chatty")
    record = stack.wait(h, FINAL, timeout=60)
    assert record.status == Status.ACTIVE, record.error
    container = stack.docker.containers.get(record.container_id)
    assert container.attrs["HostConfig"]["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "1m", "max-file": "2"},
    }
    assert_log_bounded(container, 1_000_000, 2)  # json-file reads k, m, g as powers of 1000


def test_disk_limit_the_engine_cannot_apply_fails_the_spawn_at_once(
    stack_factory: Any, images: dict[str, str], docker_client: docker.DockerClient
) -> None:
    info = docker_client.info()
    backing = dict(info.get("DriverStatus") or []).get("Backing Filesystem", "")
    # overlay2 limits a writable layer on xfs with pquota only; the test machines' engine is on ext4.
    refuses = info["Driver"] == "overlay2" and backing != "xfs"
    stack = stack_factory("disk", NOTEBOOK_DISK_LIMIT="64m")  # START_TIMEOUT 20: retries would take that long
    began = time.monotonic()
    h = stack.spawn(images["httpd"], user="disk")
    record = stack.wait(h, FINAL, timeout=60)
    if not refuses and record.status == Status.ACTIVE:  # storage that can: the limit is on the container
        host = stack.docker.containers.get(record.container_id).attrs["HostConfig"]
        assert host["StorageOpt"] == {"size": str(64 * MIB)}
        return
    assert record.status == Status.FAILED, (info["Driver"], backing, record)
    assert time.monotonic() - began < 10, "the refusal was retried instead of failing the spawn at once"
    assert "NOTEBOOK_DISK_LIMIT" in record.error and "pquota" in record.error, record.error
    assert "--storage-opt" in record.error, record.error  # the engine's own words
    assert stack.containers() == []


def test_bad_hardening_settings_stop_start_up() -> None:
    for env in (
        {"NOTEBOOK_NETWORK": "host"},
        {"NOTEBOOK_CAP_ADD": "ALL"},
        {"NOTEBOOK_CAP_ADD": "SYS_ADMINN"},
        {"PIDS_LIMIT": "-1"},
        {"DEFAULT_MEM_LIMIT": "1k"},
        {"DEFAULT_CPU_LIMIT": "lots"},
        {"NOTEBOOK_LOG_MAX_SIZE": "ten"},
        {"NOTEBOOK_LOG_MAX_SIZE": "0.1"},
        {"NOTEBOOK_LOG_MAX_FILES": "0"},
        {"NOTEBOOK_DISK_LIMIT": "lots"},
        {"NOTEBOOK_DISK_LIMIT": "10g", "ENGINE_BACKEND": "services"},  # a service cannot carry it
        {"NOTEBOOK_ISOLATION": "maybe"},
    ):
        with pytest.raises(Exception, match=next(iter(env))):
            Settings.from_env(env)
    s = Settings.from_env({"NOTEBOOK_CAP_ADD": "cap_chown, setuid", "DEFAULT_MEM_LIMIT": "0", "PIDS_LIMIT": "0"})
    assert s.notebook_cap_add == ("CHOWN", "SETUID") and s.default_mem_limit is None and s.pids_limit == 0
    options = container_options(NotebookSpec("h00000000001", "i", "u", "d", 8888, "x"), s)
    assert "mem_limit" not in options and "pids_limit" not in options and options["cap_drop"] == ["ALL"]
    # NOTEBOOK_LOG_MAX_SIZE empty: the engine's own log driver and options (its daemon.json) apply.
    engine_logs = container_options(
        NotebookSpec("h00000000001", "i", "u", "d", 8888, "x"), Settings.from_env({"NOTEBOOK_LOG_MAX_SIZE": ""})
    )
    assert "log_config" not in engine_logs and "storage_opt" not in engine_logs


# -- Swarm services ---------------------------------------------------------------------------------
def test_service_spec_is_hardened_without_an_engine() -> None:
    settings = Settings.from_env({})
    spec = NotebookSpec("h00000000001", "img", "u", "d", 8888, "x", mem_limit=96 * MIB)
    assert service_resources(spec, settings) == {
        "Limits": {"NanoCPUs": 1_000_000_000, "MemoryBytes": 96 * MIB, "Pids": 512}
    }
    none = replace(settings, default_mem_limit=None, default_cpu_limit=None, pids_limit=0)
    assert service_resources(replace(spec, mem_limit=None), none) is None


def test_service_spawn_with_a_disk_limit_fails_at_once() -> None:
    settings = Settings.from_env({"NOTEBOOK_DISK_LIMIT": "10g"})
    engine = ServiceEngine(unreachable_client(), settings)  # the limit is refused before any engine call
    with pytest.raises(EngineError, match=r"NOTEBOOK_DISK_LIMIT .* StorageOpt"):
        engine.start(NotebookSpec("h00000000001", "img", "u", "d", 8888, "x"))


@pytest.fixture
def service_engine(swarm: SwarmCluster, stack: Any) -> Iterator[tuple[ServiceEngine, Any]]:  # noqa: F811
    # No NOTEBOOK_NETWORK: the stack's is a local bridge (tests/conftest.py), which services cannot join.
    settings = replace(
        stack.settings, engine_backend="services", publish_ip="0.0.0.0", start_timeout=60, notebook_network=""
    )
    yield ServiceEngine(swarm.client, settings), swarm.client


def test_service_and_its_container_are_hardened(
    service_engine: tuple[ServiceEngine, Any], stack: Any, images: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    engine, client = service_engine
    spec = NotebookSpec("hardsvc00001", images["httpd"], "hardy", "nb.test", 8888, stack.settings.instance)
    try:
        with caplog.at_level(logging.WARNING, logger="worker.services"):
            placement = engine.start(spec)
        # Tasks join the node's default bridge; this engine's lets containers reach each other.
        assert any('"icc": false' in r.getMessage() for r in caplog.records), caplog.text
        service = client.api.inspect_service(spec.name)
        template = service["Spec"]["TaskTemplate"]
        container_spec = template["ContainerSpec"]
        assert container_spec["CapabilityDrop"] == ["ALL"]
        assert caps(container_spec["CapabilityAdd"]) == DEFAULT_CAPS
        assert not container_spec.get("Mounts")
        assert template["Resources"]["Limits"] == {"NanoCPUs": 1_000_000_000, "MemoryBytes": 2 * GIB, "Pids": 512}
        assert template["LogDriver"] == {"Name": "json-file", "Options": DEFAULT_LOGS}
        # The engine under test (Docker 20.10, API 1.41) has no NoNewPrivileges for services and
        # drops the field; newer engines keep it (and then apply it to the container).
        nnp = (container_spec.get("Privileges") or {}).get("NoNewPrivileges")

        [task] = client.api.tasks(filters={"service": placement.object_id})
        container = client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
        host = container.attrs["HostConfig"]
        assert host["Privileged"] is False and host["NetworkMode"] != "host" and host["PidMode"] in ("", "private")
        assert caps(host["CapDrop"]) == {"ALL"} and caps(host["CapAdd"]) == DEFAULT_CAPS
        assert host["PidsLimit"] == 512 and host["Memory"] == 2 * GIB and host["NanoCpus"] == 1_000_000_000
        assert host["LogConfig"] == {"Type": "json-file", "Config": DEFAULT_LOGS}
        assert container.attrs["Mounts"] == []
        status = proc_status(container)
        assert int(status["CapEff"], 16) == sum(1 << bit for bit in CAP_BITS.values())
        assert status["NoNewPrivs"].strip() == ("1" if nnp else "0")
    finally:
        with contextlib.suppress(Exception):
            engine.remove(spec)


def test_service_output_log_is_rotated(
    service_engine: tuple[ServiceEngine, Any], stack: Any, images: dict[str, str]
) -> None:
    engine, client = service_engine
    engine = ServiceEngine(client, replace(engine.settings, notebook_log_max_size="1m", notebook_log_max_files=2))
    spec = NotebookSpec("chattysvc001", images["chatty"], "chatty", "nb.test", 8888, stack.settings.instance)
    try:
        placement = engine.start(spec)
        assert client.api.inspect_service(spec.name)["Spec"]["TaskTemplate"]["LogDriver"] == {
            "Name": "json-file",
            "Options": {"max-size": "1m", "max-file": "2"},
        }
        [task] = client.api.tasks(filters={"service": placement.object_id})
        container = client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
        assert_log_bounded(container, 1_000_000, 2)
    finally:
        with contextlib.suppress(Exception):
            engine.remove(spec)

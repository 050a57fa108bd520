"""Hardened notebook containers (worker/hardening.py), inspected on the real engine.

A notebook runs whatever its user types, so what the engine was asked for is checked where the
engine says what it did (``docker inspect``), and from inside the running container
(``/proc/1/status``: the capability sets and ``NoNewPrivs`` the kernel really applied).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from shared.settings import Settings
from shared.status import Status
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


def test_bad_hardening_settings_stop_start_up() -> None:
    for env in (
        {"NOTEBOOK_NETWORK": "host"},
        {"NOTEBOOK_CAP_ADD": "ALL"},
        {"NOTEBOOK_CAP_ADD": "SYS_ADMINN"},
        {"PIDS_LIMIT": "-1"},
        {"DEFAULT_MEM_LIMIT": "1k"},
        {"DEFAULT_CPU_LIMIT": "lots"},
    ):
        with pytest.raises(Exception, match=next(iter(env))):
            Settings.from_env(env)
    s = Settings.from_env({"NOTEBOOK_CAP_ADD": "cap_chown, setuid", "DEFAULT_MEM_LIMIT": "0", "PIDS_LIMIT": "0"})
    assert s.notebook_cap_add == ("CHOWN", "SETUID") and s.default_mem_limit is None and s.pids_limit == 0
    options = container_options(NotebookSpec("h00000000001", "i", "u", "d", 8888, "x"), s)
    assert "mem_limit" not in options and "pids_limit" not in options and options["cap_drop"] == ["ALL"]


# -- Swarm services ---------------------------------------------------------------------------------
def test_service_spec_is_hardened_without_an_engine() -> None:
    settings = Settings.from_env({})
    spec = NotebookSpec("h00000000001", "img", "u", "d", 8888, "x", mem_limit=96 * MIB)
    assert service_resources(spec, settings) == {
        "Limits": {"NanoCPUs": 1_000_000_000, "MemoryBytes": 96 * MIB, "Pids": 512}
    }
    none = replace(settings, default_mem_limit=None, default_cpu_limit=None, pids_limit=0)
    assert service_resources(replace(spec, mem_limit=None), none) is None


@pytest.fixture
def service_engine(swarm: SwarmCluster, stack: Any) -> Iterator[tuple[ServiceEngine, Any]]:  # noqa: F811
    settings = replace(stack.settings, engine_backend="services", publish_ip="0.0.0.0", start_timeout=60)
    yield ServiceEngine(swarm.client, settings), swarm.client


def test_service_and_its_container_are_hardened(
    service_engine: tuple[ServiceEngine, Any], stack: Any, images: dict[str, str]
) -> None:
    engine, client = service_engine
    spec = NotebookSpec("hardsvc00001", images["httpd"], "hardy", "nb.test", 8888, stack.settings.instance)
    try:
        placement = engine.start(spec)
        service = client.api.inspect_service(spec.name)
        template = service["Spec"]["TaskTemplate"]
        container_spec = template["ContainerSpec"]
        assert container_spec["CapabilityDrop"] == ["ALL"]
        assert caps(container_spec["CapabilityAdd"]) == DEFAULT_CAPS
        assert not container_spec.get("Mounts")
        assert template["Resources"]["Limits"] == {"NanoCPUs": 1_000_000_000, "MemoryBytes": 2 * GIB, "Pids": 512}
        # The engine under test (Docker 20.10, API 1.41) has no NoNewPrivileges for services and
        # drops the field; newer engines keep it (and then apply it to the container).
        nnp = (container_spec.get("Privileges") or {}).get("NoNewPrivileges")

        [task] = client.api.tasks(filters={"service": placement.object_id})
        container = client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
        host = container.attrs["HostConfig"]
        assert host["Privileged"] is False and host["NetworkMode"] != "host" and host["PidMode"] in ("", "private")
        assert caps(host["CapDrop"]) == {"ALL"} and caps(host["CapAdd"]) == DEFAULT_CAPS
        assert host["PidsLimit"] == 512 and host["Memory"] == 2 * GIB and host["NanoCpus"] == 1_000_000_000
        assert container.attrs["Mounts"] == []
        status = proc_status(container)
        assert int(status["CapEff"], 16) == sum(1 << bit for bit in CAP_BITS.values())
        assert status["NoNewPrivs"].strip() == ("1" if nnp else "0")
    finally:
        with contextlib.suppress(Exception):
            engine.remove(spec)

"""What every notebook container is denied, for both backends, in one place.

A notebook runs code its user types, so its container gets as little as a notebook server
needs: never privileged; the engine's own network and PID namespaces (never the host's:
NOTEBOOK_NETWORK=host is refused at start-up); nothing mounted (no engine socket, no host
path: neither backend passes any mount); every Linux capability dropped except
NOTEBOOK_CAP_ADD; ``no-new-privileges`` (setuid binaries such as sudo cannot raise
privileges); at most PIDS_LIMIT processes; and memory and CPU limits (the profile's, or
DEFAULT_MEM_LIMIT / DEFAULT_CPU_LIMIT).

Swarm services (API 1.41, Docker 20.10) carry capabilities and memory/CPU limits in the
service spec. The PID limit goes in ``Resources.Limits.Pids`` and ``no-new-privileges`` in
``ContainerSpec.Privileges.NoNewPrivileges``; engines whose API predates those fields ignore
them (then set ``"no-new-privileges": true`` and ``default-pids-limit`` in each node's
daemon.json). There is no way to make a service privileged or give it the host's PID
namespace, and we never attach one to the host network.
"""

from __future__ import annotations

from typing import Any

from shared.settings import Settings
from worker.engine import NotebookSpec

NO_NEW_PRIVILEGES = "no-new-privileges"


def limits(spec: NotebookSpec, settings: Settings) -> tuple[int | None, float | None]:
    """(memory bytes, cores) for ``spec``: its profile's, else the defaults; None for no limit."""
    return spec.mem_limit or settings.default_mem_limit, spec.cpu_limit or settings.default_cpu_limit


def container_options(spec: NotebookSpec, settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``containers.create`` that harden the notebook's container."""
    mem, cpus = limits(spec, settings)
    options: dict[str, Any] = {
        "privileged": False,
        "cap_drop": ["ALL"],
        "cap_add": list(settings.notebook_cap_add) or None,
        "security_opt": [NO_NEW_PRIVILEGES],
        # No "network_mode", "pid_mode", "ipc_mode", "volumes" or "mounts": the engine's private defaults.
    }
    if settings.pids_limit:
        options["pids_limit"] = settings.pids_limit
    if mem:
        options["mem_limit"] = mem
    if cpus:
        options["nano_cpus"] = int(cpus * 1_000_000_000)
    return options


def service_container_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``docker.types.ContainerSpec`` (capabilities)."""
    return {"cap_drop": ["ALL"], "cap_add": list(settings.notebook_cap_add) or None}


def harden_container_spec(container_spec: dict[str, Any]) -> dict[str, Any]:
    """Add ``Privileges.NoNewPrivileges`` to a service's ContainerSpec (a dict)."""
    privileges = dict(container_spec.get("Privileges") or {})
    privileges["NoNewPrivileges"] = True
    container_spec["Privileges"] = privileges
    return container_spec


def service_resources(spec: NotebookSpec, settings: Settings) -> dict[str, Any] | None:
    """``TaskTemplate.Resources``: memory, CPU and PID limits; None when there are none."""
    mem, cpus = limits(spec, settings)
    found: dict[str, Any] = {}
    if cpus:
        found["NanoCPUs"] = int(cpus * 1_000_000_000)
    if mem:
        found["MemoryBytes"] = mem
    if settings.pids_limit:
        found["Pids"] = settings.pids_limit
    return {"Limits": found} if found else None

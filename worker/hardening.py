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

What a notebook may take from the engine host, and whom it may reach:

- its output log is rotated (json-file ``max-size`` x ``max-file``, NOTEBOOK_LOG_MAX_SIZE and
  NOTEBOOK_LOG_MAX_FILES), on containers (``HostConfig.LogConfig``) and services
  (``TaskTemplate.LogDriver``): an unbounded json-file log fills the host's disk;
- its writable layer is capped at NOTEBOOK_DISK_LIMIT (``storage_opt`` size) when that is set.
  Only some storage can do it (overlay2 on xfs mounted with pquota, btrfs, zfs, devicemapper);
  an engine that cannot refuses the container, and the spawn fails at once saying which setting
  and why (:func:`disk_limit_refused`) instead of retrying what can never work. The service API
  has no such field: a service spawn with a limit set fails the same way;
- with NOTEBOOK_ISOLATION on, notebook containers join a bridge network without traffic between
  its containers (:data:`ICC_OPTION` false): the worker's own ``<INSTANCE>-notebooks`` unless
  NOTEBOOK_NETWORK names one. The engine host still reaches them (published ports, or their
  address through the bridge), so do the worker and a proxy on the host; containers on the same
  network (a proxy in a container) do not. Swarm tasks join each node's default bridge (or
  NOTEBOOK_NETWORK, an overlay, which has no such switch): only ``"icc": false`` in each node's
  daemon.json isolates them; the worker warns when the manager's own bridge allows it.
"""

from __future__ import annotations

from typing import Any

from docker.types import DriverConfig, LogConfig

from shared.settings import Settings
from worker.engine import NotebookSpec

NO_NEW_PRIVILEGES = "no-new-privileges"

#: The engine's default log driver, which ``docker logs`` (and our error messages) read back.
LOG_DRIVER = "json-file"

#: The bridge driver's option for traffic between containers on one network ("inter-container
#: communication"); the engine reads it as a Go bool.
ICC_OPTION = "com.docker.network.bridge.enable_icc"
_GO_FALSE = frozenset({"0", "f", "false"})


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
    logs = log_options(settings)
    if logs:
        options["log_config"] = LogConfig(type=LOG_DRIVER, config=logs)
    if settings.notebook_disk_limit:
        # In bytes, so the engine reads our (binary) units rather than its own spelling of them.
        options["storage_opt"] = {"size": str(settings.notebook_disk_limit)}
    return options


def log_options(settings: Settings) -> dict[str, str] | None:
    """json-file rotation options; None when NOTEBOOK_LOG_MAX_SIZE leaves logging to the engine."""
    if not settings.notebook_log_max_size:
        return None
    return {"max-size": settings.notebook_log_max_size, "max-file": str(settings.notebook_log_max_files)}


def service_log_driver(settings: Settings) -> DriverConfig | None:
    """``TaskTemplate.LogDriver``: the same rotation for a service's containers."""
    logs = log_options(settings)
    return DriverConfig(LOG_DRIVER, logs) if logs else None


def refuses_disk_limit(explanation: str) -> bool:
    """Whether an engine's refusal to create a container is about the writable-layer size.

    Each storage driver words it its own way ("--storage-opt is supported only for overlay over
    xfs with 'pquota' mount option", "... not supported for aufs", quota errors); all name the
    storage option or quotas.
    """
    text = explanation.lower()
    return any(word in text for word in ("storage-opt", "storage opt", "storageopt", "quota"))


def disk_limit_refused(settings: Settings, why: str) -> str:
    """The error of a spawn whose NOTEBOOK_DISK_LIMIT the engine cannot apply."""
    return (
        f"NOTEBOOK_DISK_LIMIT ({settings.notebook_disk_limit} bytes) cannot be applied: {why}. A writable-layer "
        "limit needs plain containers on storage that supports it (overlay2 on xfs mounted with pquota, btrfs, "
        "zfs, devicemapper); set NOTEBOOK_DISK_LIMIT= (empty) for this engine, or move its data-root to such storage"
    )


def isolated_network_name(settings: Settings) -> str:
    """The bridge network the worker makes for notebooks when NOTEBOOK_NETWORK names none."""
    return f"{settings.instance}-notebooks"


def isolated_network_options() -> dict[str, str]:
    """Driver options of that network: no traffic between its containers."""
    return {ICC_OPTION: "false"}


def isolates(network: dict[str, Any]) -> bool:
    """Whether a network (the engine's inspect or list answer) keeps its containers apart.

    Only a bridge network with inter-container traffic off does. An overlay has no such switch:
    every task on it reaches every other.
    """
    if network.get("Driver") != "bridge":
        return False
    return str((network.get("Options") or {}).get(ICC_OPTION, "true")).strip().lower() in _GO_FALSE


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

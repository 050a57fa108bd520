"""The plain-containers backend: one container per notebook on one engine."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from shared.errors import EngineError, EngineUnavailable
from shared.settings import Settings
from worker.engine import (
    ENGINE_ERRORS,
    LABEL_HOSTNAME,
    LABEL_INSTANCE,
    EngineObject,
    EngineState,
    LazyClient,
    NotebookSpec,
    Placement,
    classify,
    engine_call,
    probe_host,
)
from worker.hardening import container_options

log = logging.getLogger(__name__)


class ContainerEngine:
    """Notebooks as containers.

    Takes a Docker client, or a function that makes one: connecting asks the engine for its
    API version, and an engine that is down (or fails TLS) must surface as an engine error
    inside a spawn, where it becomes a retry or a FAILED record, not at worker start-up.
    """

    def __init__(self, client: docker.DockerClient | Callable[[], docker.DockerClient], settings: Settings) -> None:
        self._client = LazyClient(client)
        self.settings = settings
        self._probe_host = probe_host(settings)

    @property
    def client(self) -> docker.DockerClient:
        return self._client.get()

    # -- Engine interface ------------------------------------------------------
    def start(self, spec: NotebookSpec) -> Placement:
        # Create first: a new spawn (nearly every one) makes no lookup by name before it; a
        # redelivered one meets a 409 and takes the container an earlier attempt made.
        container = self._create(spec)
        if container.status != "running":
            with engine_call(f"starting {spec.name}"):
                container.start()
        with engine_call(f"inspecting {spec.name}"):
            container.reload()
        if container.status != "running":  # it already exited: say why, with its last words
            tail = self.logs_tail(spec, lines=5)
            raise EngineError(
                f"the container {_state_of(container).reason} before answering"
                + (f"; last output: {tail[-400:]}" if tail else "")
            )
        return Placement(object_id=container.id or "", address=self._address(container, spec), node=self._node())

    def state(self, spec: NotebookSpec) -> EngineState | None:
        container = self._find(spec)
        return None if container is None else _state_of(container)

    def inventory(self) -> dict[str, EngineObject]:
        with engine_call("listing notebooks"):
            # sparse: one /containers/json call, no inspect per container.
            found = self.client.containers.list(
                all=True, sparse=True, filters={"label": f"{LABEL_INSTANCE}={self.settings.instance}"}
            )
        out = {}
        for c in found:
            hostname = (c.attrs.get("Labels") or {}).get(LABEL_HOSTNAME, "")
            if hostname:
                out[hostname] = EngineObject(
                    hostname=hostname,
                    running=c.attrs.get("State") == "running",
                    created=float(c.attrs.get("Created") or 0),
                )
        return out

    def remove(self, spec: NotebookSpec) -> None:
        container = self._find(spec)
        if container is None:
            return
        try:
            if container.status == "running":
                container.stop(timeout=self.settings.kill_grace)
            container.remove(force=True)
        except docker.errors.NotFound:
            return  # removed by someone else meanwhile: the goal is reached
        except docker.errors.APIError as exc:
            if exc.status_code == 409 and "already in progress" in str(exc.explanation or ""):
                return  # another kill is removing it
            raise classify(exc, f"removing {spec.name}") from exc
        except ENGINE_ERRORS as exc:
            raise classify(exc, f"removing {spec.name}") from exc
        log.info("%s: container %s removed", spec.hostname, spec.name)

    def logs_tail(self, spec: NotebookSpec, lines: int = 20) -> str:
        try:
            container = self.client.containers.get(spec.name)
            raw: bytes = container.logs(tail=lines)
        except (*ENGINE_ERRORS, EngineError, EngineUnavailable):  # the last two: making the client failed
            return ""
        return raw.decode("utf-8", "replace").strip()

    # -- helpers ---------------------------------------------------------------
    def _find(self, spec: NotebookSpec) -> Container | None:
        try:
            return self.client.containers.get(spec.name)
        except docker.errors.NotFound:
            return None
        except ENGINE_ERRORS as exc:
            raise classify(exc, f"looking up {spec.name}") from exc

    def _create(self, spec: NotebookSpec) -> Container:
        port_key = f"{spec.port}/tcp"
        kwargs: dict[str, Any] = {
            "name": spec.name,
            "hostname": spec.hostname,
            "domainname": spec.domain,
            "labels": spec.labels,
            "detach": True,
            "environment": spec.environment or None,
            "ports": {port_key: (self.settings.publish_ip,)} if self.settings.publish_ip else None,
            # Remove nothing automatically: kill and the reconciler decide, and an exited
            # container's state and logs explain a failure.
            "auto_remove": False,
        }
        if self.settings.notebook_network:
            kwargs["network"] = self.settings.notebook_network
        if spec.command:
            kwargs["command"] = spec.command
        # Unprivileged, capabilities dropped, no-new-privileges, PID/memory/CPU limits, nothing mounted.
        kwargs.update(container_options(spec, self.settings))
        # spec.constraints are Swarm placement rules: one engine has nowhere else to place it.
        try:
            return self.client.containers.create(spec.image, **kwargs)
        except docker.errors.ImageNotFound as exc:
            # (An earlier attempt may have made the container before the image was removed.)
            found = self._find(spec)
            if found is not None:
                return found
            raise EngineError(f"image {spec.image!r} is not present on the engine") from exc
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                # Created by an earlier attempt of this spawn (redelivery): use that one.
                found = self._find(spec)
                if found is not None:
                    return found
            raise classify(exc, f"creating {spec.name}") from exc
        except ENGINE_ERRORS as exc:
            raise classify(exc, f"creating {spec.name}") from exc

    def _address(self, container: Container, spec: NotebookSpec) -> str:
        settings = container.attrs.get("NetworkSettings", {})
        if self.settings.publish_ip:
            bindings = (settings.get("Ports") or {}).get(f"{spec.port}/tcp") or []
            if not bindings:
                raise EngineError(f"{spec.name}: the engine published no port for {spec.port}/tcp")
            return f"http://{self._probe_host}:{bindings[0]['HostPort']}"
        networks: dict[str, Any] = settings.get("Networks") or {}
        net = networks.get(self.settings.notebook_network) if self.settings.notebook_network else None
        net = net or next(iter(networks.values()), None)
        ip = (net or {}).get("IPAddress")
        if not ip:
            raise EngineError(f"{spec.name}: the container has no network address")
        return f"http://{ip}:{spec.port}"

    def _node(self) -> str:
        try:
            return self._engine_name
        except ENGINE_ERRORS:
            return ""  # the node name is informative only; not worth failing a spawn over

    @functools.cached_property
    def _engine_name(self) -> str:
        # One engine: every notebook's node is the engine's own name; asked once per process.
        return str(self.client.info().get("Name", ""))


def _state_of(container: Container) -> EngineState:
    st: dict[str, Any] = container.attrs.get("State", {})
    if st.get("Running"):
        return EngineState(running=True)
    if st.get("OOMKilled"):
        return EngineState(running=False, reason="was killed for exceeding its memory limit (OOM)")
    if st.get("Status") == "created":
        return EngineState(running=False, reason="was created but not started")
    reason = f"exited with code {st.get('ExitCode')}"
    if st.get("Error"):
        reason += f" ({st['Error']})"
    return EngineState(running=False, reason=reason)

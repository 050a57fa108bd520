"""The plain-containers backend: one container per notebook on one engine."""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from shared.errors import EngineError, EngineUnavailable
from shared.registries import NEVER
from shared.settings import Settings
from worker.engine import (
    ENGINE_ERRORS,
    LABEL_HOSTNAME,
    LABEL_INSTANCE,
    EngineObject,
    EngineState,
    NotebookSpec,
    Placement,
    classify,
    engine_call,
    probe_host,
)
from worker.hardening import (
    ICC_OPTION,
    container_options,
    disk_limit_refused,
    isolated_network_name,
    isolated_network_options,
    isolates,
    refuses_disk_limit,
)
from worker.pulls import Puller, Report

log = logging.getLogger(__name__)

#: The engine's events after which a running notebook may be running no longer.
WATCHED_EVENTS = ("die", "oom", "destroy")
# How long the finding that the engine's default bridge keeps containers apart is trusted: an engine
# restarted with inter-container traffic on must not get isolated notebooks there for long.
BRIDGE_RECHECK = 30.0


class ContainerEngine:
    """Notebooks as containers, on the engine ``client`` talks to (``make_client``'s asks it nothing
    until the first call)."""

    def __init__(self, client: docker.DockerClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self._probe_host = probe_host(settings)
        # The network notebooks join, found (or made) on the first spawn; "" for the engine's default.
        self._network: str | None = None
        self._network_lock = threading.Lock()
        self._bridge_checked_at: float | None = None  # when the default bridge was found isolating
        # Pulls images as PULL_POLICY says, one pull per image at a time in this process.
        self.puller = Puller(lambda: self.client.api, settings.registry_auth)

    # -- Engine interface ------------------------------------------------------
    def pull(self, spec: NotebookSpec, report: Report) -> NotebookSpec:
        """The image pulled first when the policy says so: create never waits on a registry."""
        self.puller.ensure(spec.image, spec.pull_policy, report)
        return spec

    def start(self, spec: NotebookSpec) -> Placement:
        # Create first: a new spawn (nearly every one) makes no lookup by name before it; a
        # redelivered one meets a 409 and takes the container an earlier attempt made.
        container = self._create(spec)
        if container.status != "running":
            with engine_call(f"starting {spec.name}"):
                try:
                    container.start()
                except docker.errors.APIError as exc:
                    self._retry_if_our_network_moved(spec, exc, container)
                    raise
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

    def changes(self, since: float, until: float) -> Iterator[tuple[str, float]]:
        """From the engine's event stream: a notebook container's ``die``, ``oom`` or ``destroy``.

        The engine replays what happened since ``since`` (from its own short history) before it
        streams, so a watcher that reconnects from the time it last saw loses nothing in between.
        """
        filters = {
            "type": ["container"],
            "event": list(WATCHED_EVENTS),
            "label": [f"{LABEL_INSTANCE}={self.settings.instance}"],
        }
        with engine_call("following the engine's events"):
            stream = self.client.api.events(since=f"{since:.9f}", until=f"{until:.9f}", filters=filters, decode=True)
            try:
                for event in stream:
                    attributes = (event.get("Actor") or {}).get("Attributes") or {}
                    hostname = attributes.get(LABEL_HOSTNAME, "")
                    when = int(event.get("timeNano") or 0) / 1e9 or float(event.get("time") or 0)
                    if hostname:
                        yield hostname, when
            finally:
                stream.close()

    def remove(self, spec: NotebookSpec, grace: float | None = None) -> None:
        # By name, with no lookup first: a kill is one engine call without a grace (SIGKILL and
        # remove), two with one; "no such container" at either step means the goal is reached.
        grace = self.settings.kill_grace if grace is None else grace
        try:
            if grace > 0:
                self.client.api.stop(spec.name, timeout=int(grace))  # a container not running: no-op
            self.client.api.remove_container(spec.name, force=True)
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
        except ENGINE_ERRORS:
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
        network = self._notebook_network()
        if network:
            kwargs["network"] = network
        if spec.command:
            kwargs["command"] = spec.command
        # Unprivileged, capabilities dropped, no-new-privileges, PID/memory/CPU limits, nothing mounted.
        kwargs.update(container_options(spec, self.settings))
        # spec.constraints are Swarm placement rules: one engine has nowhere else to place it.
        create = self._create_args({**kwargs, "image": spec.image})
        for attempt in (1, 2):
            try:
                created = self.client.api.create_container(**create)
                break
            except docker.errors.ImageNotFound as exc:
                # (An earlier attempt may have made the container before the image was removed.)
                found = self._find(spec)
                if found is not None:
                    return found
                # The pull step took the image as present from what it saw a moment ago
                # (PRESENT_TTL), and it was removed since (a prune): pull it now, as the pull step
                # would have, and create again, rather than a task retry a second later. Otherwise
                # the retry asks the engine again and pulls it, or says why not.
                if attempt == 1 and self.puller.forget(spec.image) and spec.pull_policy != NEVER:
                    self.puller.pull(spec.image, lambda *_: None)
                    continue
                raise EngineUnavailable(f"image {spec.image!r} was removed from the engine meanwhile") from exc
            except docker.errors.APIError as exc:
                if exc.status_code == 409:
                    # Created by another attempt of this spawn (a redelivery, or a copy that overlaps
                    # this one): use that one. Gone again (being removed): try again shortly, as the
                    # record's current attempt decides what happens to it; never a failure.
                    found = self._find_created_by_another(spec)
                    if found is not None:
                        return found
                    raise EngineUnavailable(f"the name {spec.name} is taken by a container being removed") from exc
                explanation = str(exc.explanation or exc)
                self._retry_if_our_network_moved(spec, exc)
                if self.settings.notebook_disk_limit and refuses_disk_limit(explanation):
                    # The engine answers 500, which would read as "retry later": it never will.
                    raise EngineError(
                        disk_limit_refused(self.settings, f"the engine refused it ({explanation})")
                    ) from exc
                raise classify(exc, f"creating {spec.name}") from exc
            except ENGINE_ERRORS as exc:
                raise classify(exc, f"creating {spec.name}") from exc
        # Not inspected here (the SDK's containers.create would): a container just made is only
        # "created", and start() inspects it once it runs, when its published port is known.
        return self.client.containers.prepare_model({"Id": created["Id"], "State": {"Status": "created"}})

    def _create_args(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The low-level create's arguments for the SDK's ``containers.create`` keywords (its own
        translation, so both spell every option alike)."""
        from docker.models.containers import _create_container_args

        args: dict[str, Any] = _create_container_args({**kwargs, "version": self.client.api._version})
        return args

    def _retry_if_our_network_moved(
        self, spec: NotebookSpec, exc: docker.errors.APIError, created: Container | None = None
    ) -> None:
        """EngineUnavailable (a retry, never a failure) when the engine refused the worker's own
        notebooks' network: removed since it was found (by hand, or as the twin another worker made
        at the same moment, see :meth:`_isolated_network`), or ambiguous (two of that name, for the
        moment it takes the workers to remove the twin). The next try finds it again.

        ``created``: the container this attempt made and could not start. Made on a network that
        is gone, it can never start: it is removed, so the next try makes it again on the one kept.
        """
        text = str(exc.explanation or exc)
        # Not by this process's remembered ID: another of its threads may have forgotten it
        # already (it met the same refusal a moment earlier). The worker's own network is the
        # only one its notebooks join.
        ours = not self.settings.notebook_network and self.settings.notebook_isolation
        if ours and "network" in text and ("not found" in text or "ambiguous" in text or exc.status_code == 404):
            with self._network_lock:
                self._network = None
            if created is not None and "not found" in text:
                try:
                    created.remove(force=True)
                except ENGINE_ERRORS as gone:  # removed already: the next create makes it
                    log.info("could not remove %s made on a removed network: %s", spec.name, gone)
            raise EngineUnavailable(f"{spec.name}: the notebooks' network changed under us ({text})") from exc

    def _find_created_by_another(self, spec: NotebookSpec) -> Container | None:
        """The container another attempt holds the name for. The engine reserves a name before it
        has the container to show, so one being created right now is looked for a few more times."""
        for _ in range(10):
            found = self._find(spec)
            if found is not None:
                return found
            time.sleep(0.1)
        return None

    def _notebook_network(self) -> str | None:
        """The network a notebook joins; None for the engine's default bridge. Found once per process
        (the default bridge's isolation is looked at again each BRIDGE_RECHECK).

        NOTEBOOK_NETWORK as named (with NOTEBOOK_ISOLATION on, a WARNING once if containers on it
        can reach each other); else, with isolation on, the default bridge if it keeps containers
        apart, or the worker's own isolated bridge, made if missing (its ID); else the default bridge.
        """
        with self._network_lock:
            checked = self._bridge_checked_at
            if checked is not None and time.monotonic() - checked > BRIDGE_RECHECK:
                self._network = self._isolating_network()  # look again: one engine call each BRIDGE_RECHECK
            if self._network is None:
                if self.settings.notebook_isolation and self.settings.publish_ip in ("0.0.0.0", "::"):
                    # Published on every host address, a port is also on the bridge's gateway, which
                    # every notebook reaches: the port of each notebook is open to all the others.
                    log.warning(
                        "PUBLISH_IP %s publishes every notebook's port on all host addresses, the notebooks' "
                        "gateway included: notebooks can reach each other there (their tokens still guard "
                        "them). Publish on an address notebooks cannot reach, such as 127.0.0.1",
                        self.settings.publish_ip,
                    )
                if self.settings.notebook_network:
                    if self.settings.notebook_isolation:
                        self._warn_unless_isolated(self.settings.notebook_network)
                    self._network = self.settings.notebook_network
                elif self.settings.notebook_isolation:
                    self._network = self._isolating_network()
                else:
                    self._network = ""
            return self._network or None

    def _isolating_network(self) -> str:
        """The default bridge ("") when it keeps containers apart (dockerd --icc=false): notebooks
        are isolated there already, and a container starts on it faster (a network of one's own
        costs each start the engine's embedded DNS set-up). Else the worker's own network."""
        if self._default_bridge_isolates():
            self._bridge_checked_at = time.monotonic()
            return ""
        self._bridge_checked_at = None
        return self._isolated_network()

    def _default_bridge_isolates(self) -> bool:
        with engine_call("looking up the default bridge"):
            found = self._networks_named("bridge")
        if found and isolates(found[0]):
            if self._bridge_checked_at is None:  # said once, not at every look again
                log.info("the engine's default bridge keeps containers apart (icc false): notebooks join it")
            return True
        if self._bridge_checked_at is not None:
            log.warning("the engine's default bridge lets containers talk now: notebooks join a network of their own")
        return False

    def _networks_named(self, name: str) -> list[dict[str, Any]]:
        # The engine's name filter matches parts of names too.
        found: list[dict[str, Any]] = self.client.api.networks(names=[name])
        return [n for n in found if n.get("Name") == name]

    def _warn_unless_isolated(self, name: str) -> None:
        with engine_call(f"looking up network {name}"):
            found = self._networks_named(name)
        if found and not any(isolates(n) for n in found):
            # The operator's choice is respected (compose's workers reach notebooks on it by address).
            log.warning(
                "NOTEBOOK_NETWORK %s lets containers on it reach each other (driver %s, %s not false): "
                "notebooks are not isolated from each other. Use a bridge network created with "
                "-o %s=false, or leave NOTEBOOK_NETWORK empty for the worker's own",
                name,
                found[0].get("Driver"),
                ICC_OPTION,
                ICC_OPTION,
            )

    def _isolated_network(self) -> str:
        """The ID of ``<INSTANCE>-notebooks``, a bridge without traffic between its containers.

        Made when missing. Two workers making it at once can make two networks of that name
        (the engine's duplicate check is not atomic), and the engine then refuses to start any
        container on either ("ambiguous"): each worker keeps the one made first and removes the
        others. Made first, because a worker that saw only its own network at once may already
        run notebooks on it, and any later twin is one nobody can have started anything on yet. A network of that name
        that lets containers talk fails the spawn: it is ours by name, and using it would
        silently undo the isolation.
        """
        name = isolated_network_name(self.settings)
        with engine_call(f"making network {name}"):
            found = self._networks_named(name)
            if not found:
                try:
                    self.client.api.create_network(
                        name,
                        driver="bridge",
                        options=isolated_network_options(),
                        labels={LABEL_INSTANCE: self.settings.instance},
                        check_duplicate=True,
                    )
                    log.info("created network %s for notebooks (no traffic between its containers)", name)
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:  # 409: another worker made it first
                        raise
                found = self._networks_named(name)
        if not found:
            raise EngineUnavailable(f"network {name} vanished right after it was made")
        network = min(found, key=_made_first)
        for twin in found:
            if twin is not network:
                try:
                    self.client.api.remove_network(twin["Id"])
                    log.info(
                        "removed network %s %s, made at the same moment as %s",
                        name,
                        twin["Id"][:12],
                        network["Id"][:12],
                    )
                except (docker.errors.NotFound, docker.errors.APIError) as exc:  # gone already, or in use
                    log.info("could not remove duplicate network %s %s: %s", name, twin["Id"][:12], exc)
        if not isolates(network):
            raise EngineError(
                f"network {name} lets containers on it reach each other ({ICC_OPTION} is not false), so "
                "notebooks on it would not be isolated: remove it (the worker makes it again without), "
                "or set NOTEBOOK_ISOLATION=off"
            )
        return str(network["Id"])

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


def _made_first(network: dict[str, Any]) -> tuple[str, str, str]:
    """Sorts networks by when the engine made them (its RFC 3339 time, whose fraction of a second
    drops trailing zeros, so it is padded before comparing), then by ID."""
    created = str(network.get("Created") or "")
    whole, _, rest = created.partition(".")
    digits = "".join(itertools.takewhile(str.isdigit, rest))
    return whole, digits.ljust(9, "0"), str(network.get("Id"))

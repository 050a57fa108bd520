"""The Swarm services backend: one single-replica service per notebook, on a Swarm manager.

What goes on the service (and why):

- name ``<INSTANCE>-<hostname>`` (``NotebookSpec.name``), so a redelivered spawn finds it;
- one replica and restart condition ``none``: a notebook that exits stays exited and the
  record says why, instead of the Swarm restarting it in a loop behind the record's back;
- the notebook's labels on the service (where Swarm-aware proxies read them) and on its
  container spec (so ``docker ps`` on any node shows whose container it is);
- the notebook port published in host mode without a fixed port: the node's engine picks a
  free port, and ``http://<node address>:<that port>`` reaches the notebook directly. The
  ingress routing mesh and service VIPs need IPVS on every node and add a hop a single
  replica does not need, so they are not used;
- memory and CPU limits and placement constraints from the spec, when it has them, and the
  hardening every notebook gets (``worker/hardening.py``): capabilities dropped, a PID limit,
  no-new-privileges where the engine's API has it, a rotated output log. NOTEBOOK_DISK_LIMIT
  cannot be carried (a service has no StorageOpt): a spawn with it set fails at once.

The task's state is the notebook's state. The Swarm reports what it cannot do in the task
(``rejected`` with the engine's error, ``pending`` with "no suitable node"), and ``start``
turns that into an :class:`EngineError` carrying the Swarm's own words within seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import docker
import docker.errors
import requests
from docker.types import (
    ContainerSpec,
    EndpointSpec,
    RestartPolicy,
    ServiceMode,
    TaskTemplate,
)
from docker.types import (
    Placement as SwarmPlacement,
)

from shared.errors import EngineError, EngineUnavailable
from shared.registries import ALWAYS, NEVER, pinned
from shared.settings import Settings
from worker.engine import (
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
    disk_limit_refused,
    harden_container_spec,
    isolates,
    service_container_options,
    service_log_driver,
    service_resources,
)
from worker.pulls import Puller, Report
from worker.readiness import Pace, ProbePacer

log = logging.getLogger(__name__)

#: Task states on the way to ``running`` (swarmkit's TaskState order).
STARTING_STATES = frozenset({"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting"})

#: How long a task may stay pending with "no suitable node" before start gives up. The
#: scheduler retries at once when nodes change, so a few seconds covers a node that is just
#: joining or being relabelled, while a constraint nothing satisfies fails fast.
NO_NODE_GRACE = 3.0

#: Seconds between task polls while a service starts.
POLL_INTERVAL = 0.15
#: Once its task is ``starting`` (its node is starting the container, the last step before
#: ``running``), the task is polled START_FIRST apart, then at START_SHARE of the time it has been
#: starting, up to POLL_INTERVAL, so its start is noticed soon after it happens. Before that the
#: task waits on the scheduler and its node, which nothing here can hurry, and is polled
#: POLL_INTERVAL apart as before; a ProbePacer bounds how many starts poll fast at once.
START_FIRST = 0.02
START_SHARE = 0.1
#: Seconds between two readings of the services and their tasks when watching for stopped
#: notebooks (changes()): three list calls to a manager per reading.
TASK_POLL = 0.5

#: Node addresses that mean "this machine" (a manager may report its listen address).
LOCAL_ADDRESSES = frozenset({"", "0.0.0.0", "127.0.0.1", "::", "::1"})


class ServiceEngine:
    """Notebooks as Swarm services; ``client`` talks to a manager."""

    def __init__(
        self,
        client: docker.DockerClient,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        self._probe_host = probe_host(settings)
        self._isolation_checked = False
        self._isolation_lock = threading.Lock()
        # What changes() read last: a stop between two of its calls is still seen.
        self._last_seen: dict[str, EngineObject] | None = None
        # Bounds how many starts of this process poll their task fast at once (a burst polls as before).
        self._pacer = ProbePacer()
        # Asks the registry for a tag's digest (and hands REGISTRY_AUTH to the nodes with each service).
        self.puller = Puller(lambda: self.api, settings.registry_auth)

    @property
    def api(self) -> docker.APIClient:
        return self.client.api

    # -- Engine interface ------------------------------------------------------
    def changes(self, since: float, until: float) -> Iterator[tuple[str, float]]:
        """Services whose task stopped running, or which vanished, seen by reading the services and
        their tasks every TASK_POLL seconds: the Swarm has no event for a task's state (its events
        are the managers' changes to services, nodes and the like, not what tasks do).
        ``since`` is not needed: the last reading is kept between calls."""
        while True:
            now = time.time()
            current = self.inventory()
            for hostname, obj in (self._last_seen or {}).items():
                if obj.running and not (hostname in current and current[hostname].running):
                    yield hostname, now
            self._last_seen = current
            if now >= until:
                return
            self.sleep(min(TASK_POLL, max(0.0, until - now)))

    def pull(self, spec: NotebookSpec, report: Report) -> NotebookSpec:
        """Nodes pull for themselves, each when a task lands on it (with the credentials the service
        carries). First the manager asks the registry which digest the tag names and pins the
        spec to it, so a refusal (unknown, unauthorized, unreachable) fails the spawn within
        seconds, and a node that has that content runs it without pulling: ``always`` on every
        spawn, ``if-not-present`` when the manager lacks the image, ``never`` not at all."""
        if spec.pull_policy == NEVER or (spec.pull_policy != ALWAYS and self.puller.present(spec.image)):
            return spec
        return replace(spec, image=pinned(spec.image, self.puller.resolve(spec.image)))

    def start(self, spec: NotebookSpec) -> Placement:
        """Create the service unless it exists, wait until its task runs, say where it is.

        Waits at most START_TIMEOUT. Raises EngineError as soon as the Swarm shows it cannot
        run the task (rejected, failed, no suitable node), with the Swarm's own error text.
        """
        if self.settings.notebook_disk_limit:
            raise EngineError(
                disk_limit_refused(
                    self.settings,
                    "a Swarm service has no writable-layer size (the service API has no StorageOpt; set "
                    "storage-opts such as overlay2.size in each node's daemon.json instead)",
                )
            )
        self._check_isolation()
        # Create first, as ContainerEngine.start does: a new spawn makes no lookup by name before
        # it; a redelivered one meets a 409 and takes the service an earlier attempt made.
        service = self._create(spec)
        service_id = str(service["ID"])
        deadline = self.clock() + self.settings.start_timeout
        unplaceable_since: float | None = None
        last = "no task yet"
        pace: Pace | None = None  # from the task's "starting" on: see START_FIRST
        starting_since = 0.0
        try:
            while True:
                task = self._latest_task(service_id)
                now = self.clock()
                if task is None:
                    # No task yet, or the service is gone: a kill removed it while we waited.
                    if self._inspect(spec) is None:
                        raise EngineError(f"the service {spec.name} was removed while it was starting")
                else:
                    status: dict[str, Any] = task.get("Status") or {}
                    state = str(status.get("State", ""))
                    err = str(status.get("Err") or "")
                    last = f"{state}: {err or status.get('Message', '')}"
                    if state == "running" and task.get("DesiredState") == "running":
                        return self._placement(spec, service_id, task)
                    if state == "pending" and "no suitable node" in err:
                        unplaceable_since = unplaceable_since if unplaceable_since is not None else now
                        if now - unplaceable_since >= NO_NODE_GRACE:
                            raise EngineError(f"the swarm cannot place the notebook: {err}")
                    else:
                        unplaceable_since = None
                    if state == "rejected":
                        raise EngineError(
                            f"the swarm rejected the notebook's task: {err or status.get('Message', '')}"
                            + ("" if spec.pull_policy == NEVER else self.pull_refusal(spec.image, err))
                        )
                    if state not in STARTING_STATES:  # ended, or running but being stopped (node down, removal)
                        reason = self._describe(task).reason
                        raise EngineError(f"the container {reason} before answering" + self._tail_for(spec, task))
                    if state == "starting" and pace is None:
                        pace, starting_since = self._pacer.pace(POLL_INTERVAL, START_FIRST, START_SHARE), now
                if now >= deadline:
                    raise EngineError(
                        f"the swarm did not start the notebook's task within "
                        f"{self.settings.start_timeout:g}s (last task state {last})"
                    )
                self.sleep(pace.gap(now - starting_since) if pace is not None else POLL_INTERVAL)
        finally:
            if pace is not None:
                pace.close()

    def state(self, spec: NotebookSpec) -> EngineState | None:
        """From the service's latest task; a task on a node that is down is not running."""
        service = self._inspect(spec)
        if service is None:
            return None
        task = self._latest_task(str(service["ID"]))
        if task is None:
            return EngineState(running=False, reason="has no task (the swarm has not scheduled it)")
        return self._describe(task)

    def inventory(self) -> dict[str, EngineObject]:
        """Every service labelled with this instance: one list call each for services, tasks and nodes.

        A service's own ``ServiceStatus.RunningTasks`` still counts a task whose node went
        down, so "running" is judged from the tasks and nodes instead.
        """
        label = f"{LABEL_INSTANCE}={self.settings.instance}"
        with engine_call("listing notebook services", _classify):
            services: list[dict[str, Any]] = self.api.services(filters={"label": label})
            if not services:
                return {}
            tasks: list[dict[str, Any]] = self.api.tasks(filters={"label": label})
            down = {n["ID"] for n in self.api.nodes() if (n.get("Status") or {}).get("State") == "down"}
        latest: dict[str, dict[str, Any]] = {}
        for task in tasks:
            sid = str(task.get("ServiceID", ""))
            if sid not in latest or _task_order(task) > _task_order(latest[sid]):
                latest[sid] = task
        out = {}
        for service in services:
            hostname = (service.get("Spec", {}).get("Labels") or {}).get(LABEL_HOSTNAME, "")
            if not hostname:
                continue
            newest = latest.get(str(service["ID"]))
            running = bool(
                newest
                and (newest.get("Status") or {}).get("State") == "running"
                and newest.get("DesiredState") == "running"
                and newest.get("NodeID") not in down
            )
            out[hostname] = EngineObject(
                hostname=hostname, running=running, created=_epoch(str(service.get("CreatedAt", "")))
            )
        return out

    def remove(self, spec: NotebookSpec, grace: float | None = None) -> None:
        """Remove the service; the Swarm stops its task with the service's stop grace period
        (set when the service was made: ``grace`` cannot change it now)."""
        try:
            self.api.remove_service(spec.name)
        except docker.errors.NotFound:
            return  # never created, or removed by someone else: the goal is reached
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise _classify(exc, f"removing {spec.name}") from exc
        log.info("%s: service %s removed", spec.hostname, spec.name)

    def logs_tail(self, spec: NotebookSpec, lines: int = 20) -> str:
        try:
            service = self._inspect(spec)
            task = self._latest_task(str(service["ID"])) if service else None
        except (EngineError, EngineUnavailable):
            return ""
        return self._logs(spec, task, lines) if task else ""

    # -- helpers ---------------------------------------------------------------
    def _inspect(self, spec: NotebookSpec) -> dict[str, Any] | None:
        try:
            service: dict[str, Any] = self.api.inspect_service(spec.name)
        except docker.errors.NotFound:
            return None
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise _classify(exc, f"looking up {spec.name}") from exc
        # The engine resolves the reference as an ID, a name, then an ID prefix: only the name counts.
        if (service.get("Spec") or {}).get("Name") != spec.name:
            return None
        return service

    def _create(self, spec: NotebookSpec) -> dict[str, Any]:
        container = ContainerSpec(
            spec.image,
            args=spec.command or None,  # a service's "command" is the entrypoint; args is CMD
            env=spec.environment or None,
            hostname=spec.hostname,
            labels=spec.labels,
            stop_grace_period=int(self.settings.kill_grace * 1_000_000_000),
            **service_container_options(self.settings),  # capabilities dropped but NOTEBOOK_CAP_ADD
        )
        harden_container_spec(container)  # no-new-privileges (see worker/hardening.py for engine support)
        resources = service_resources(spec, self.settings)
        template = TaskTemplate(
            container_spec=container,
            resources=resources,
            restart_policy=RestartPolicy(condition="none"),
            log_driver=service_log_driver(self.settings),  # the output log rotated, as for containers
            placement=SwarmPlacement(constraints=list(spec.constraints)) if spec.constraints else None,
            networks=[self.settings.notebook_network] if self.settings.notebook_network else None,
        )
        endpoint = None
        if self.settings.publish_ip:
            # Host mode, no PublishedPort: the node's engine picks a free port.
            endpoint = EndpointSpec(ports=[{"Protocol": "tcp", "TargetPort": spec.port, "PublishMode": "host"}])
        self.puller.install()  # REGISTRY_AUTH goes with the service, for the nodes' pulls
        try:
            created: dict[str, Any] = self.api.create_service(
                template,
                name=spec.name,
                labels=spec.labels,
                mode=ServiceMode("replicated", replicas=1),
                endpoint_spec=endpoint,
            )
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                # Created by another attempt of this spawn (a redelivery, or an overlapping copy):
                # use that one; gone again meanwhile: try again shortly, never a failure.
                found = self._inspect(spec)
                if found is not None:
                    return found
                raise EngineUnavailable(f"the name {spec.name} is taken by a service being removed") from exc
            raise _classify(exc, f"creating service {spec.name}") from exc
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise _classify(exc, f"creating service {spec.name}") from exc
        log.info("%s: service %s created", spec.hostname, spec.name)
        return created

    def _check_isolation(self) -> None:
        """With NOTEBOOK_ISOLATION on, warn once per process when notebooks can reach each other.

        The service API cannot ask for a network without traffic between containers: a task joins
        NOTEBOOK_NETWORK (an overlay, which has no such switch) or, without one, its node's default
        bridge, which keeps containers apart only when that node's daemon runs with ``"icc": false``.
        The manager sees its own bridge only; other nodes are the operator's to configure alike.
        Informative: a lookup that fails is tried again on the next spawn, never fails this one.
        """
        if self._isolation_checked or not self.settings.notebook_isolation:
            return
        with self._isolation_lock:
            if self._isolation_checked:
                return
            name = self.settings.notebook_network or "bridge"
            try:
                network: dict[str, Any] = self.api.inspect_network(name)
            except (docker.errors.DockerException, requests.exceptions.RequestException):
                return
            self._isolation_checked = True
        if isolates(network):
            return
        if self.settings.notebook_network:
            log.warning(
                "NOTEBOOK_NETWORK %s (driver %s) lets the notebooks on it reach each other; Swarm services "
                "cannot be isolated on a shared overlay network",
                name,
                network.get("Driver"),
            )
        else:
            log.warning(
                "notebook tasks join each Swarm node's default bridge, and this manager's lets containers "
                "reach each other (%s is not false): set %s in every node's daemon.json so notebooks on "
                "one node cannot reach each other",
                ICC_OPTION,
                '"icc": false',
            )

    def pull_refusal(self, image: str, err: str) -> str:
        """Why a node could not pull ``image``, when the registry says so; else empty.

        A node whose pull failed rejects its task (a notebook's, or a pre-pull job's) with
        "No such image" only: its engine logs the registry's answer, the task does not carry it.
        That happens when the reference was not pinned (``if-not-present`` and the manager has the
        image, so pull() asked nothing; a pre-pull job whose digest the manager could not learn),
        e.g. with wrong REGISTRY_AUTH credentials. The manager then asks the registry, with the
        credentials the service carried, so the error says "unauthorized", not only "No such image".
        """
        if "no such image" not in err.lower():
            return ""
        try:
            self.puller.resolve(image)
        except EngineError as exc:
            return f"; asked from the manager, the registry says: {exc}"
        except EngineUnavailable:
            pass  # the manager itself did not answer: the Swarm's words stand alone
        return ""

    def _latest_task(self, service: str) -> dict[str, Any] | None:
        """The service's newest task; None if it has none yet, or the service is gone."""
        try:
            with engine_call(f"listing the tasks of {service}", _classify):
                tasks: list[dict[str, Any]] = self.api.tasks(filters={"service": service})
        except EngineError:
            # The engine refuses a filter naming a service that no longer exists (404).
            if self._exists(service):
                raise
            return None
        return max(tasks, key=_task_order) if tasks else None

    def _exists(self, service: str) -> bool:
        try:
            self.api.inspect_service(service)
        except docker.errors.NotFound:
            return False
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise _classify(exc, f"looking up {service}") from exc
        return True

    def _node(self, node_id: str) -> dict[str, Any]:
        with engine_call(f"inspecting node {node_id}", _classify):
            node: dict[str, Any] = self.api.inspect_node(node_id)
        return node

    def _placement(self, spec: NotebookSpec, service_id: str, task: dict[str, Any]) -> Placement:
        node = self._node(str(task.get("NodeID", "")))
        node_name = str((node.get("Description") or {}).get("Hostname", ""))
        if not self.settings.publish_ip:
            return Placement(object_id=service_id, address=self._network_address(spec, task), node=node_name)
        ports = ((task.get("Status") or {}).get("PortStatus") or {}).get("Ports") or []
        published = next(
            (p.get("PublishedPort") for p in ports if p.get("TargetPort") == spec.port and p.get("PublishedPort")), None
        )
        if not published:
            raise EngineError(f"{spec.name}: the swarm published no host port for {spec.port}/tcp")
        addr = str((node.get("Status") or {}).get("Addr", ""))
        host = self._probe_host if addr in LOCAL_ADDRESSES else addr
        return Placement(object_id=service_id, address=f"http://{host}:{published}", node=node_name)

    def _network_address(self, spec: NotebookSpec, task: dict[str, Any]) -> str:
        """Nothing published: the task's address on NOTEBOOK_NETWORK (an attachable overlay)."""
        wanted = self.settings.notebook_network
        for attachment in task.get("NetworksAttachments") or []:
            network = attachment.get("Network") or {}
            if wanted in (network.get("ID"), (network.get("Spec") or {}).get("Name")):
                for cidr in attachment.get("Addresses") or []:
                    return f"http://{str(cidr).split('/')[0]}:{spec.port}"
        raise EngineError(f"{spec.name}: the task has no address on network {wanted!r}")

    def _describe(self, task: dict[str, Any]) -> EngineState:
        """The task's state, worded to follow "the container ..."."""
        status: dict[str, Any] = task.get("Status") or {}
        state = str(status.get("State", ""))
        err = str(status.get("Err") or "")
        if state == "running":
            node = self._node(str(task.get("NodeID", "")))
            node_status = node.get("Status") or {}
            if node_status.get("State") == "down":
                name = (node.get("Description") or {}).get("Hostname") or task.get("NodeID")
                why = node_status.get("Message") or "no heartbeat"
                return EngineState(running=False, reason=f"was lost: its node {name} is down ({why})")
            if task.get("DesiredState") != "running":
                return EngineState(
                    running=False, reason=f"is being shut down by the swarm (desired state {task.get('DesiredState')})"
                )
            return EngineState(running=True)
        if state == "orphaned":
            return EngineState(
                running=False, reason=f"was lost: its node {self._node_name(task)} is down (task orphaned)"
            )
        if state in ("failed", "complete"):
            code = ((status.get("ContainerStatus") or {}).get("ExitCode")) or 0
            return EngineState(running=False, reason=f"exited with code {code}" + (f" ({err})" if err else ""))
        if state == "rejected":
            return EngineState(running=False, reason=f"was rejected by the swarm ({err})")
        if state in ("shutdown", "remove"):
            return EngineState(running=False, reason="was shut down by the swarm" + (f" ({err})" if err else ""))
        return EngineState(running=False, reason=f"is not running yet (task {state}" + (f": {err})" if err else ")"))

    def _node_name(self, task: dict[str, Any]) -> str:
        try:
            node = self._node(str(task.get("NodeID", "")))
        except (EngineError, EngineUnavailable):
            return str(task.get("NodeID", ""))
        return str((node.get("Description") or {}).get("Hostname") or task.get("NodeID", ""))

    def _tail_for(self, spec: NotebookSpec, task: dict[str, Any]) -> str:
        tail = self._logs(spec, task, 5)
        return f"; last output: {tail[-400:]}" if tail else ""

    def _logs(self, spec: NotebookSpec, task: dict[str, Any], lines: int) -> str:
        """The service's last output; empty if its task never had a container or its node is down."""
        if not ((task.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID"):
            return ""
        try:
            node = self._node(str(task.get("NodeID", "")))
            if (node.get("Status") or {}).get("State") == "down":
                return ""  # the manager would wait for logs a down node cannot send
            raw = b"".join(self.api.service_logs(spec.name, stdout=True, stderr=True, tail=lines, is_tty=False))
        except (EngineError, EngineUnavailable, docker.errors.DockerException, requests.exceptions.RequestException):
            return ""
        return raw.decode("utf-8", "replace").strip()


def _classify(exc: Exception, doing: str) -> EngineError | EngineUnavailable:
    """:func:`classify`, except that an engine that is no Swarm manager is a lasting error.

    The engine answers 503 for it, which would otherwise read as "retry later"; it is a
    setting to fix (ENGINE_BACKEND or DOCKER_HOST), not something waiting will cure.
    """
    if isinstance(exc, docker.errors.APIError) and "not a swarm manager" in str(exc.explanation or exc):
        return EngineError(
            f"ENGINE_BACKEND=services needs a Swarm manager, but while {doing} the engine said: "
            f"{exc.explanation or exc}"
        )
    return classify(exc, doing)


def _task_order(task: dict[str, Any]) -> tuple[str, int]:
    return str(task.get("CreatedAt", "")), int((task.get("Version") or {}).get("Index", 0))


def _epoch(value: str) -> float:
    """Epoch seconds of an engine timestamp (nanosecond precision, trailing Z); 0.0 if unparsable."""
    try:
        head, _, frac = value.rstrip("Z").partition(".")
        return datetime.fromisoformat(f"{head}.{(frac or '0')[:6]:0<6}+00:00").timestamp()
    except ValueError:
        return 0.0

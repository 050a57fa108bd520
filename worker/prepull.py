"""Images pulled onto every engine or node ahead of demand, and what each node has (GET /nodes).

The images are the warm pool's and those of profiles marked ``prepull: true``
(``shared/nodes.py``). Each reconcile pass, and once when a worker starts, looks at every node:

- plain containers (one engine): an image the engine lacks is pulled in the background by the
  engine's own puller (the spawns' single flight, so a spawn of it meanwhile waits for the same pull);
- Swarm services: the manager cannot pull onto other nodes, so each node that lacks an image gets a
  one-shot job pinned to it (a ``replicated-job`` service with ``node.id==<node>``, labelled
  ``swarm-manager.prepull``): the node pulls the image to run it (with REGISTRY_AUTH's credentials,
  as for notebooks), and the job's task says how that went. A task that got a container means the
  node has the image, whatever its command did; a rejected one carries the node's pull error. The
  next pass records it and removes the job. A node that joins later has no entry yet, so it gets
  its jobs on the next pass; a node's ``present`` is trusted for RECHECK seconds, then checked again
  (a job on a node that has the image pulls nothing).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import docker.errors
from docker.types import ContainerSpec, RestartPolicy, ServiceMode, TaskTemplate
from docker.types import Placement as SwarmPlacement

from shared.errors import EngineError, EngineUnavailable
from shared.nodes import FAILED, MISSING, PRESENT, PULLING, NodeBook
from shared.record import now_rfc3339, parse_rfc3339
from shared.registries import pinned
from shared.settings import Settings
from worker.backends import AutoEngine
from worker.containers import ContainerEngine
from worker.engine import ENGINE_ERRORS, LABEL_INSTANCE, LABEL_PREFIX, Engine, classify
from worker.services import ServiceEngine

log = logging.getLogger(__name__)

LABEL_PREPULL = f"{LABEL_PREFIX}.prepull"
LABEL_NODE = f"{LABEL_PREFIX}.node"
#: Seconds a node's ``present`` is trusted before a job checks it again (Swarm nodes).
RECHECK = 3600.0
#: Seconds before a pull that failed is tried again, and after which one still ``pulling`` with no
#: job or thread behind it (its worker died) is started again.
RETRY_AFTER = 300.0


def job_name(instance: str, node_id: str, image: str) -> str:
    digest = hashlib.sha256(image.encode()).hexdigest()[:10]
    return f"{instance}-prepull-{node_id[:12]}-{digest}"


class Prepuller:
    def __init__(
        self,
        engine: Engine,
        book: NodeBook,
        images: list[str],
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.book = book
        self.images = images
        self.settings = settings
        self.clock = clock
        self._pulling: set[str] = set()  # images this process pulls in the background now
        self._lock = threading.Lock()

    def run(self) -> dict[str, dict[str, Any]]:
        """One look at every node: record what it has, start what it lacks. Returns the entries."""
        engine = self.engine.engine if isinstance(self.engine, AutoEngine) else self.engine
        if isinstance(engine, ServiceEngine):
            return self._swarm(engine)
        if isinstance(engine, ContainerEngine):
            return self._one_engine(engine)
        return {}

    # -- one engine ------------------------------------------------------------------------
    def _one_engine(self, engine: ContainerEngine) -> dict[str, dict[str, Any]]:
        try:
            info: dict[str, Any] = engine.client.info()
        except ENGINE_ERRORS as exc:
            raise classify(exc, "asking the engine who it is") from exc
        node_id = str(info.get("ID") or info.get("Name") or "engine")
        entry: dict[str, Any] = {
            "id": node_id,
            "hostname": str(info.get("Name", "")),
            "state": "ready",
            "availability": "active",
            "role": "engine",
            "address": self.settings.docker_host or "local",
            "images": {},
        }
        missing = []
        old = self.book.read()
        before = (old.get(node_id) or {}).get("images") or {}
        for image in self.images:
            prev = before.get(image) or {}
            if engine.puller.present(image, fresh=True):
                entry["images"][image] = _state(PRESENT)
            elif prev.get("state") == FAILED and self.clock() - _epoch(str(prev.get("at", ""))) < RETRY_AFTER:
                entry["images"][image] = prev
            else:
                entry["images"][image] = _state(PULLING)
                missing.append(image)
        self.book.write({node_id: entry}, gone=[n for n in old if n != node_id])
        for image in missing:
            with self._lock:
                if image in self._pulling:
                    continue
                self._pulling.add(image)
            threading.Thread(target=self._pull, args=(engine, node_id, image), name="prepull", daemon=True).start()
        return {node_id: entry}

    def _pull(self, engine: ContainerEngine, node_id: str, image: str) -> None:
        try:
            engine.puller.pull(image, lambda *_: None)
        except (EngineError, EngineUnavailable) as exc:
            log.warning("pre-pulling %s failed: %s", image, exc)
            self.book.mark(node_id, image, FAILED, str(exc))
        else:
            self.book.mark(node_id, image, PRESENT)
        finally:
            with self._lock:
                self._pulling.discard(image)

    # -- Swarm nodes -----------------------------------------------------------------------
    def _swarm(self, engine: ServiceEngine) -> dict[str, dict[str, Any]]:
        api = engine.api
        instance = self.settings.instance
        try:
            nodes: list[dict[str, Any]] = api.nodes()
            jobs: list[dict[str, Any]] = api.services(
                filters={"label": [f"{LABEL_INSTANCE}={instance}", LABEL_PREPULL]}
            )
        except ENGINE_ERRORS as exc:
            raise classify(exc, "listing nodes and pre-pull jobs") from exc
        by_key = {
            (
                (j["Spec"].get("Labels") or {}).get(LABEL_NODE, ""),
                (j["Spec"].get("Labels") or {}).get(LABEL_PREPULL, ""),
            ): j
            for j in jobs
        }
        old = self.book.read()
        entries: dict[str, dict[str, Any]] = {}
        now = self.clock()
        for node in nodes:
            node_id = str(node["ID"])
            status, spec = node.get("Status") or {}, node.get("Spec") or {}
            entry: dict[str, Any] = {
                "id": node_id,
                "hostname": str((node.get("Description") or {}).get("Hostname", "")),
                "state": str(status.get("State", "")),
                "availability": str(spec.get("Availability", "")),
                "role": str(spec.get("Role", "")),
                "address": str(status.get("Addr", "")),
                "images": {},
            }
            usable = entry["state"] == "ready" and entry["availability"] == "active"
            before = (old.get(node_id) or {}).get("images") or {}
            for image in self.images:
                job = by_key.pop((node_id, image), None)
                if job is not None:
                    entry["images"][image] = self._job_outcome(engine, job)
                    continue
                prev = before.get(image) or {}
                age = now - _epoch(str(prev.get("at", "")))
                if (prev.get("state") == PRESENT and age < RECHECK) or (
                    prev.get("state") == FAILED and age < RETRY_AFTER
                ):
                    entry["images"][image] = prev
                elif usable:
                    entry["images"][image] = self._start_job(engine, node_id, image)
                else:
                    entry["images"][image] = prev or _state(
                        MISSING, f"the node is {entry['state']}/{entry['availability']}"
                    )
            entries[node_id] = entry
        for job in by_key.values():  # images no longer listed, or nodes that left
            self._remove_job(engine, job)
        self.book.write(entries, gone=[n for n in old if n not in entries])
        return entries

    def _start_job(self, engine: ServiceEngine, node_id: str, image: str) -> dict[str, Any]:
        try:
            ref = pinned(image, engine.puller.resolve(image))
        except EngineError:
            ref = image  # not in a registry the manager reaches: the node uses its own copy, or says why not
        engine.puller.install()  # the node pulls with REGISTRY_AUTH's credentials
        template = TaskTemplate(
            container_spec=ContainerSpec(ref, command=["sh", "-c", "exit 0"]),
            restart_policy=RestartPolicy(condition="none"),
            placement=SwarmPlacement(constraints=[f"node.id=={node_id}"]),
        )
        labels = {LABEL_INSTANCE: self.settings.instance, LABEL_PREPULL: image, LABEL_NODE: node_id}
        try:
            engine.api.create_service(
                template,
                name=job_name(self.settings.instance, node_id, image),
                labels=labels,
                mode=ServiceMode("replicated-job", replicas=1),
            )
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: made by a pass running at the same moment
                return _state(FAILED, f"could not start a pre-pull job: {exc.explanation or exc}")
        except ENGINE_ERRORS as exc:
            return _state(FAILED, f"could not start a pre-pull job: {classify(exc, 'starting a pre-pull job')}")
        log.info("pre-pulling %s on node %s", image, node_id)
        return _state(PULLING)

    def _job_outcome(self, engine: ServiceEngine, job: dict[str, Any]) -> dict[str, Any]:
        try:
            tasks: list[dict[str, Any]] = engine.api.tasks(filters={"service": job["ID"]})
        except ENGINE_ERRORS:
            return _state(PULLING)
        if not tasks:
            return _state(PULLING)
        task = max(tasks, key=lambda t: str(t.get("CreatedAt", "")))
        status = task.get("Status") or {}
        state = str(status.get("State", ""))
        started = bool((status.get("ContainerStatus") or {}).get("ContainerID"))
        if state in ("running", "complete") or (state in ("failed", "shutdown") and started):
            self._remove_job(engine, job)
            return _state(PRESENT)
        if state in ("rejected", "failed", "shutdown", "orphaned"):
            self._remove_job(engine, job)
            err = str(status.get("Err") or status.get("Message") or state)
            image = str((job["Spec"].get("Labels") or {}).get(LABEL_PREPULL, ""))
            return _state(FAILED, err + (engine.pull_refusal(image, err) if image else ""))
        return _state(PULLING)

    def _remove_job(self, engine: ServiceEngine, job: dict[str, Any]) -> None:
        try:
            engine.api.remove_service(job["ID"])
        except ENGINE_ERRORS as exc:  # gone already, or the next pass removes it
            log.info("could not remove pre-pull job %s: %s", job.get("ID"), exc)


def _state(state: str, reason: str = "") -> dict[str, Any]:
    return {"state": state, "reason": reason, "at": now_rfc3339()}


def _epoch(value: str) -> float:
    try:
        return parse_rfc3339(value) if value else 0.0
    except ValueError:
        return 0.0

"""Which engine backend runs notebooks: ENGINE_BACKEND, or what the engine says it is.

``auto`` asks the engine (``docker info``) on first use: an active Swarm manager gets Swarm
services, anything else (a plain engine, a Swarm worker node) plain containers. The answer
is kept for the life of the process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import docker
import docker.errors
import requests

from shared.settings import Settings
from worker.containers import ContainerEngine
from worker.engine import Engine, EngineObject, EngineState, NotebookSpec, Placement, classify
from worker.pulls import Report
from worker.services import ServiceEngine

log = logging.getLogger(__name__)

ClientFactory = Callable[[], docker.DockerClient]


def detect_backend(client: docker.DockerClient) -> str:
    """``services`` if the engine is an active Swarm manager, else ``containers``."""
    try:
        info = client.info()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise classify(exc, "asking the engine whether it is a Swarm manager") from exc
    swarm = info.get("Swarm") or {}
    if swarm.get("LocalNodeState") == "active" and swarm.get("ControlAvailable"):
        return "services"
    return "containers"


def make_engine(settings: Settings, client_factory: ClientFactory) -> Engine:
    """The engine for ENGINE_BACKEND. Nothing talks to the engine until the first call."""
    if settings.engine_backend == "containers":
        return ContainerEngine(client_factory, settings)
    if settings.engine_backend == "services":
        return ServiceEngine(client_factory, settings)
    return AutoEngine(settings, client_factory)


class AutoEngine:
    """Decides containers or services on first use, then hands every call to that engine.

    An engine that is down at the first call raises the usual classified error (a retried
    EngineUnavailable) and the question is asked again on the next call.
    """

    def __init__(self, settings: Settings, client_factory: ClientFactory) -> None:
        self.settings = settings
        self._factory = client_factory
        self._client: docker.DockerClient | None = None
        self._engine: Engine | None = None
        self._backend = ""
        self._lock = threading.Lock()

    @property
    def backend(self) -> str:
        """``containers`` or ``services`` (asks the engine if not decided yet)."""
        self.engine  # noqa: B018 - decides
        return self._backend

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    if self._client is None:
                        self._client = self._factory()
                    backend = detect_backend(self._client)
                    engine: Engine
                    if backend == "services":
                        engine = ServiceEngine(self._client, self.settings)
                    else:
                        engine = ContainerEngine(self._client, self.settings)
                    self._backend = backend
                    self._engine = engine
                    log.info("engine backend: %s (ENGINE_BACKEND=auto)", backend)
        return self._engine

    def inventory(self) -> dict[str, EngineObject]:
        return self.engine.inventory()

    def pull(self, spec: NotebookSpec, report: Report) -> NotebookSpec:
        return self.engine.pull(spec, report)

    def start(self, spec: NotebookSpec) -> Placement:
        return self.engine.start(spec)

    def state(self, spec: NotebookSpec) -> EngineState | None:
        return self.engine.state(spec)

    def remove(self, spec: NotebookSpec, grace: float | None = None) -> None:
        self.engine.remove(spec, grace)

    def logs_tail(self, spec: NotebookSpec, lines: int = 20) -> str:
        return self.engine.logs_tail(spec, lines)

    def changes(self, since: float, until: float) -> Iterator[tuple[str, float]]:
        return self.engine.changes(since, until)

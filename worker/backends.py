"""Which engine backend runs notebooks: ENGINE_BACKEND, or what the engine says it is.

``auto`` asks the engine (``docker info``) on first use: an active Swarm manager gets Swarm
services, anything else (a plain engine, a Swarm worker node) plain containers. The answer
is kept for the life of the process.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import docker

from shared.settings import Settings
from worker.containers import ContainerEngine
from worker.engine import Engine, engine_call
from worker.services import ServiceEngine

log = logging.getLogger(__name__)


def detect_backend(client: docker.DockerClient) -> str:
    """``services`` if the engine is an active Swarm manager, else ``containers``."""
    with engine_call("asking the engine whether it is a Swarm manager"):
        info = client.info()
    swarm = info.get("Swarm") or {}
    if swarm.get("LocalNodeState") == "active" and swarm.get("ControlAvailable"):
        return "services"
    return "containers"


def make_engine(settings: Settings, client: docker.DockerClient) -> Engine:
    """The engine for ENGINE_BACKEND. Nothing talks to the engine until the first call."""
    if settings.engine_backend == "containers":
        return ContainerEngine(client, settings)
    if settings.engine_backend == "services":
        return ServiceEngine(client, settings)
    return AutoEngine(client, settings)


#: What AutoEngine hands on: the Engine protocol's methods, and nothing else (not ``copy``'s or
#: ``pickle``'s probes, which must not ask the engine anything).
_ENGINE_METHODS = frozenset(name for name in vars(Engine) if not name.startswith("_"))


class AutoEngine:
    """The engine ``detect_backend`` picks on first use; every :class:`Engine` call goes to it.

    An engine that is down at the first call raises the usual classified error (a retried
    EngineUnavailable) and the question is asked again on the next call.
    """

    def __init__(self, client: docker.DockerClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self._engine: ContainerEngine | ServiceEngine | None = None
        self._lock = threading.Lock()

    @property
    def engine(self) -> ContainerEngine | ServiceEngine:
        with self._lock:  # one engine per process: its puller's single flight covers every spawn
            if self._engine is None:
                backend = detect_backend(self.client)
                log.info("engine backend: %s (ENGINE_BACKEND=auto)", backend)
                cls = ServiceEngine if backend == "services" else ContainerEngine
                self._engine = cls(self.client, self.settings)
            return self._engine

    @property
    def backend(self) -> str:
        """``containers`` or ``services`` (asks the engine if not decided yet)."""
        return "services" if isinstance(self.engine, ServiceEngine) else "containers"

    def __getattr__(self, name: str) -> Any:
        if name not in _ENGINE_METHODS:
            raise AttributeError(name)
        return getattr(self.engine, name)

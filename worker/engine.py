"""The engine boundary: what the spawner needs from Docker, the client factory, error mapping.

One class per backend implements :class:`Engine` (``worker/containers.py`` for plain
containers, ``worker/services.py`` for Swarm services; ``worker/backends.py`` picks one).
The spawner only sees :class:`NotebookSpec`, :class:`Placement`, :class:`EngineState` and
the two error classes from ``shared.errors``.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import docker
import docker.errors
import docker.utils
import requests

from shared.errors import EngineError, EngineUnavailable
from shared.settings import Settings

log = logging.getLogger(__name__)

LABEL_PREFIX = "swarm-manager"
LABEL_INSTANCE = f"{LABEL_PREFIX}.instance"
LABEL_HOSTNAME = f"{LABEL_PREFIX}.hostname"
LABEL_USER = f"{LABEL_PREFIX}.user"


@dataclass(frozen=True)
class NotebookSpec:
    """Everything needed to create one notebook's engine object."""

    hostname: str
    image: str
    user: str
    domain: str
    port: int
    instance: str
    command: list[str] | None = None
    # Kept out of repr: it carries the notebook's token (JUPYTER_TOKEN), which is never logged.
    environment: dict[str, str] = field(default_factory=dict, repr=False)
    # Per-image limits and placement (from an operator's profile); the defaults change nothing.
    mem_limit: int | None = None  # bytes
    cpu_limit: float | None = None  # cores, e.g. 0.5
    constraints: list[str] = field(default_factory=list)  # Swarm placement, e.g. "node.labels.gpu==true"
    token: str = field(default="", repr=False)  # the notebook's own secret (shared/notebook_token.py)
    pull_policy: str = "if-not-present"  # PULL_POLICY, or the profile's (shared/registries.py)

    @property
    def name(self) -> str:
        """Deterministic engine object name: how a retried spawn finds what it made before."""
        return f"{self.instance}-{self.hostname}"

    @property
    def public_host(self) -> str:
        """``<hostname>.<DOMAIN>``: the name proxies route to this notebook (the record's ``url``)."""
        return f"{self.hostname}.{self.domain}"

    @property
    def labels(self) -> dict[str, str]:
        # Traefik's router and service names are label path segments: no dots in them.
        router = re.sub(r"[^A-Za-z0-9-]", "-", self.name)
        return {
            LABEL_INSTANCE: self.instance,
            LABEL_HOSTNAME: self.hostname,
            LABEL_USER: self.user,
            # Interlock (the first API's proxy) routes <hostname>.<domain> to this port.
            "interlock.hostname": self.hostname,
            "interlock.domain": self.domain,
            "interlock.port": str(self.port),
            # Traefik (Docker and Swarm providers) routes Host(<hostname>.<domain>) to this port.
            "traefik.enable": "true",
            f"traefik.http.routers.{router}.rule": f"Host(`{self.public_host}`)",
            f"traefik.http.routers.{router}.service": router,
            f"traefik.http.services.{router}.loadbalancer.server.port": str(self.port),
        }


@dataclass(frozen=True)
class Placement:
    """Where a started notebook is and how to reach it."""

    object_id: str
    address: str  # http://host:port of the notebook server as seen from the worker
    node: str


@dataclass(frozen=True)
class EngineState:
    running: bool
    reason: str = ""  # why it is not running (exit code, OOM), empty while running


@dataclass(frozen=True)
class EngineObject:
    """One notebook object found on the engine by its labels."""

    hostname: str
    running: bool
    created: float  # epoch seconds


class Engine(Protocol):
    def inventory(self) -> dict[str, EngineObject]:
        """Every object labelled with this instance, by notebook hostname, in one list call."""

    def pull(self, spec: NotebookSpec, report: Callable[[str, str, Mapping[str, Any]], None]) -> NotebookSpec:
        """Make the spec's image available as its ``pull_policy`` says, before :meth:`start`; return the
        spec to start (its image pinned to a digest where the backend needs that). ``report`` gets
        (stage, message, detail) as it goes: ``pulling`` with bytes and layers, then ``pulled``.
        Raises EngineError with the registry's refusal within seconds of it."""

    def start(self, spec: NotebookSpec) -> Placement:
        """Create the notebook's object unless one with its name exists, start it, say where it is.

        Idempotent: a second call for the same spec finds and reuses the first one's object.
        """

    def state(self, spec: NotebookSpec) -> EngineState | None:
        """The object's state, or None if it does not exist."""

    def remove(self, spec: NotebookSpec, grace: float | None = None) -> None:
        """Stop (with ``grace`` seconds, default KILL_GRACE; 0: kill at once) and remove the object;
        a missing object is success."""

    def logs_tail(self, spec: NotebookSpec, lines: int = 20) -> str:
        """The last lines of the notebook's output, for error messages; empty if unavailable."""

    def changes(self, since: float, until: float) -> Iterator[tuple[str, float]]:
        """Notebooks whose object may have stopped or vanished between ``since`` and ``until``
        (epoch seconds), as (hostname, when), from the engine's own events where it has them;
        returns at ``until``. A hint only: what happened is asked with :meth:`state`."""


#: The Docker API version the client speaks (Docker 20.10's; later engines still accept it).
#: Fixed rather than asked for (docker-py's ``version="auto"``), so making a client sends no
#: request: an engine that is down or fails TLS surfaces at the first call, inside a spawn
#: (a retry or a FAILED record), not when a worker process starts, and ``trust_env`` is off
#: before the first request.
ENGINE_API_VERSION = "1.41"


def make_client(settings: Settings) -> docker.DockerClient:
    """A Docker client for DOCKER_HOST / DOCKER_TLS_VERIFY / DOCKER_CERT_PATH; asks the engine nothing.

    Built by docker-py's ``kwargs_from_env`` from the validated settings. TLS, when configured
    (either variable set), always verifies the engine against ``ca.pem`` and presents the client
    certificate. The client ignores REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE and proxy variables
    (``trust_env = False``): requests would otherwise let those override the engine's CA, and
    verification against the wrong bundle fails (or, worse, passes).
    """
    environment = {
        "DOCKER_HOST": settings.docker_host,
        # docker-py verifies only when DOCKER_TLS_VERIFY is set; a certificate path alone means TLS with it on.
        "DOCKER_TLS_VERIFY": "1" if settings.tls else "",
        "DOCKER_CERT_PATH": settings.docker_cert_path,
    }
    with engine_call("configuring the engine client"):
        client = docker.DockerClient(
            **docker.utils.kwargs_from_env(environment=environment),
            version=ENGINE_API_VERSION,
            timeout=int(settings.engine_timeout),
            max_pool_size=settings.worker_concurrency + 4,
        )
    client.api.trust_env = False
    return client


def probe_host(settings: Settings) -> str:
    """The host a worker uses to reach ports the engine published."""
    if settings.probe_host:
        return settings.probe_host
    if settings.docker_host.startswith(("tcp://", "http://", "https://")):
        return urlsplit(settings.docker_host).hostname or "127.0.0.1"
    if settings.publish_ip and settings.publish_ip not in {"0.0.0.0", "::"}:
        return settings.publish_ip
    return "127.0.0.1"


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


# Certificates and keys never reach a record, a log line or an API answer: error texts are
# scrubbed of PEM blocks and of paths to certificate files before they are used.
_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(?:-----END [A-Z0-9 ]+-----|$)", re.S)
_CERT_FILE = re.compile(r"(?:[A-Za-z]:)?[\\/]?(?:[\w.@~+-]+[\\/])*[\w.@~+-]+\.(?:pem|crt|cer|key|p12|pfx)\b", re.I)


def scrub(text: str) -> str:
    """``text`` without PEM blocks and without certificate/key file paths."""
    return _CERT_FILE.sub("<certificate file>", _PEM.sub("<PEM data>", text))


def _tls_reason(text: str) -> str:
    """What a TLS failure means, in words an operator can act on."""
    low = text.lower()
    if "certificate has expired" in low or "certificate_expired" in low:
        return "a certificate has expired (the engine's, or its CA's)"
    if "alert_certificate_expired" in low or "alert certificate expired" in low:
        return "the engine refused our client certificate: it has expired"
    if "alert_bad_certificate" in low or "alert bad certificate" in low or "alert_unknown_ca" in low:
        return "the engine refused our client certificate (expired, or not signed by a CA the engine trusts)"
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        return "the engine's certificate did not verify against DOCKER_CERT_PATH/ca.pem"
    return "the TLS handshake failed"


def classify(exc: Exception, doing: str) -> EngineError | EngineUnavailable:
    """Map a docker/requests exception to a permanent EngineError or a transient EngineUnavailable.

    TLS failures (a wrong CA, an expired or untrusted certificate) are permanent: the spawn
    fails at once rather than retrying a connection that can never be trusted (fail closed).
    """
    chain = _chain(exc)
    text = scrub(" ".join(str(e) for e in chain))
    if any(isinstance(e, (ssl.SSLError, requests.exceptions.SSLError)) for e in chain) or (
        "CERTIFICATE_VERIFY_FAILED" in text or "SSLError" in text
    ):
        return EngineError(
            f"TLS to the engine failed while {doing}: {_tls_reason(text)} (check DOCKER_CERT_PATH "
            f"and the engine's CA): {_short(text)}"
        )
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code or 0
        explanation = scrub(str(exc.explanation or exc))
        if status >= 500 or status == 0:
            return EngineUnavailable(f"engine error while {doing}: {explanation}")
        return EngineError(f"engine refused {doing}: {explanation}")
    if any(
        isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError, TimeoutError))
        for e in chain
    ):
        return EngineUnavailable(f"engine unreachable while {doing}: {_short(text)}")
    if isinstance(exc, docker.errors.DockerException):
        return EngineUnavailable(f"engine error while {doing}: {_short(text)}")
    return EngineError(f"unexpected error while {doing}: {_short(text)}")


#: What a docker-py call can raise about the engine. docker-py wraps HTTP error answers in
#: DockerException subclasses but lets requests' own errors through unwrapped: an engine that
#: is unreachable or too slow raises ``requests.exceptions.ConnectionError``/``ReadTimeout``.
ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


@contextmanager
def engine_call(
    doing: str, classifier: Callable[[Exception, str], EngineError | EngineUnavailable] = classify
) -> Iterator[None]:
    """Run a Docker call, turning any :data:`ENGINE_ERRORS` into EngineError/EngineUnavailable.

    ``classifier`` is :func:`classify` unless a backend words some errors its own way. Handle
    an expected error (``NotFound``, a 409) inside the block: everything else leaves it mapped.
    """
    try:
        yield
    except ENGINE_ERRORS as exc:
        raise classifier(exc, doing) from exc


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""A real container registry for tests: Debian's ``docker-registry`` (the CNCF distribution registry 2.8).

No public registry is reachable on the test machines; this one runs as a process of the test run,
with its own configuration, storage, log and (optionally) TLS certificate and htpasswd users, all
under ``/tmp/smreg-<hex>/``. What it offers:

- loopback mode (``running_registry()``, the ``registry`` and ``registry_factory`` fixtures): plain
  HTTP on a free 127.0.0.1 port, which every engine accepts without TLS (127.0.0.0/8 is an insecure
  registry by default);
- another address, e.g. a Swarm manager's veth address that a node in a network namespace reaches
  (``running_registry(host=..., tls=True)``, the ``swarm_registry`` fixture): TLS with a CA of its
  own, which the engines trust through ``/etc/docker/certs.d/<host:port>/ca.crt`` (every dockerd on
  this machine reads that folder; the entry is removed on stop);
- htpasswd authentication (``auth=True``; users made with Debian's ``htpasswd -B``):
  ``Registry.username``/``password``, ``auth_config()`` for docker-py, ``docker_config()`` for the CLI;
- ``push(local_ref, repository, tag)`` of an image from the main engine (docker CLI), and the
  registry's own log: ``log_text()``, ``requests(method, path_pattern)`` (its access log, one line
  per HTTP request) and ``pulls(repository, tag)`` (reads of the tag's manifest: one per pull).

The packages (``docker-registry``, ``apache2-utils`` for ``htpasswd``) are installed when missing
(``make test`` installs them first); without root that is a failure saying so. Leftovers of a run
that died (same ``smreg`` prefix, owner process gone) are removed first; a live run's never.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from testkit import netns
from testkit.support import wait_for

PREFIX = "smreg"
CERTS_D = Path("/etc/docker/certs.d")
#: tool -> the Debian package that has it
TOOLS = {"docker-registry": "docker-registry", "htpasswd": "apache2-utils"}
START_TIMEOUT = 30


def ensure_packages(tools: dict[str, str], who: str) -> None:
    """Install the Debian packages of the tools that are missing (``tools``: tool -> package)."""
    missing = sorted({package for tool, package in tools.items() if not shutil.which(tool)})
    if not missing:
        return
    if os.geteuid() != 0:
        pytest.fail(f"{who} need the Debian packages {', '.join(missing)}; `make test` installs them", pytrace=False)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300", *missing]
    proc = subprocess.run(install, capture_output=True, text=True, timeout=600, env=env, check=False)
    if proc.returncode != 0:  # maybe a stale package list
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300, env=env, check=False)
        proc = subprocess.run(install, capture_output=True, text=True, timeout=600, env=env, check=False)
    if proc.returncode != 0 or any(not shutil.which(tool) for tool in tools):
        pytest.fail(f"{who}: could not install {', '.join(missing)}: {proc.stderr.strip()[-500:]}", pytrace=False)


@dataclass
class Registry:
    """A running registry and what tests do with it."""

    host: str
    port: int
    base: Path  # /tmp/smreg-<hex>: config, storage, log, certificates, htpasswd
    ca: Path | None = None  # the CA of its TLS certificate; None: plain HTTP
    username: str | None = None
    password: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    pushed: list[str] = field(default_factory=list)  # local tags push() made, removed on stop

    @property
    def address(self) -> str:
        """``host:port``, as image references and ``certs.d`` name it."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://{self.address}"

    @property
    def log(self) -> Path:
        return self.base / "registry.log"

    def ref(self, repository: str, tag: str = "latest") -> str:
        return f"{self.address}/{repository}:{tag}"

    def auth_config(self) -> dict[str, str] | None:
        """docker-py's ``auth_config`` for pulls and pushes; None without authentication."""
        if self.username is None:
            return None
        return {"username": self.username, "password": str(self.password)}

    def docker_config(self, folder: Path | None = None) -> Path:
        """A DOCKER_CONFIG folder (``config.json`` as ``docker login`` writes it) for the docker CLI."""
        folder = folder or self.base / "docker-config"
        folder.mkdir(mode=0o700, exist_ok=True)
        auths = {}
        if self.username is not None:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            auths[self.address] = {"auth": token}
        (folder / "config.json").write_text(json.dumps({"auths": auths}) + "\n")
        (folder / "config.json").chmod(0o600)
        return folder

    def docker(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """The docker CLI on the main engine, with this registry's credentials."""
        env = {**netns.engine_env(), "DOCKER_CONFIG": str(self.docker_config())}
        proc = subprocess.run(
            ["docker", "-H", netns.MAIN_ENGINE, *args], capture_output=True, text=True, timeout=timeout, env=env
        )
        if proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def push(self, local_ref: str, repository: str, tag: str = "latest") -> str:
        """Push an image of the main engine as ``repository:tag``; returns the registry reference."""
        ref = self.ref(repository, tag)
        self.docker("tag", local_ref, ref)
        self.pushed.append(ref)
        self.docker("push", "-q", ref, timeout=600)
        return ref

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def requests(self, method: str | None = None, path: str | re.Pattern[str] | None = None) -> list[str]:
        """Access-log lines (``... "GET /v2/... HTTP/1.1" 200 ...``), by method and path regex."""
        pattern = re.compile(path) if isinstance(path, str) else path
        out = []
        for line in self.log_text().splitlines():
            m = re.search(r'"([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3})', line)
            if not m or (method and m.group(1) != method):
                continue
            if pattern and not pattern.search(m.group(2)):
                continue
            out.append(line)
        return out

    def pulls(self, repository: str, reference: str | None = None) -> int:
        """Reads of ``repository``'s manifests the registry answered 200 (GET or HEAD).

        An engine reads the manifest of the tag (or digest) it pulls once per pull; one that lacks the
        image then also reads it by digest. ``reference`` (a tag, or ``sha256:...``) counts only the
        reads of that one: with a tag, one per pull.
        """
        ref = re.escape(reference) if reference else r"[^/\s]+"
        lines = self.requests(None, rf"^/v2/{re.escape(repository)}/manifests/{ref}$")
        return sum(1 for line in lines if re.search(r'"(GET|HEAD) \S+ HTTP/[0-9.]+" 200 ', line))

    def answers(self) -> bool:
        """``GET /v2/`` answers (200, or 401 when it asks for credentials)."""
        context = ssl.create_default_context(cafile=str(self.ca)) if self.ca else None
        try:
            with urllib.request.urlopen(f"{self.url}/v2/", timeout=2, context=context) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError as exc:
            return exc.code == 401 and self.username is not None

    def trusted_by_engines(self) -> Path | None:
        """The ``certs.d`` folder through which every engine on this machine trusts it (TLS only)."""
        return CERTS_D / self.address if self.ca else None

    def stop(self) -> None:
        for ref in self.pushed:
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                self.docker("rmi", ref, timeout=60)  # only the tag: the image stays under its own name
        self.pushed.clear()
        _destroy_base(self.base, self.proc)
        self.proc = None


# -- making one ------------------------------------------------------------------------------
def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _tls(base: Path, host: str) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate for ``host`` (an IP address or a name) signed by it."""
    from testkit.tls_engine import _make_ca, _make_leaf

    folder = base / "tls"
    folder.mkdir(mode=0o700)
    _make_ca(folder, "ca")
    san = f"IP:{host}" if re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+", host) else f"DNS:{host}"
    _make_leaf(folder, "server", "ca", host, f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    return folder / "ca.pem", folder / "server-cert.pem", folder / "server-key.pem"


def _config(base: Path, address: str, tls: tuple[Path, Path] | None, htpasswd: Path | None) -> Path:
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(base / "data")},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": {"addr": address, "secret": secrets.token_hex(16), "headers": {"X-Content-Type-Options": ["nosniff"]}},
    }
    if tls:
        config["http"]["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    if htpasswd:
        config["auth"] = {"htpasswd": {"realm": "swarm-manager-tests", "path": str(htpasswd)}}
    path = base / "config.yml"
    path.write_text(json.dumps(config, indent=1) + "\n")  # JSON is YAML
    return path


def _destroy_base(base: Path, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Stop the registry of ``base`` (by its process, and anything else using the folder), untrust it."""
    pids = netns.pids_using(base)
    if proc is not None and proc.poll() is None and proc.pid not in pids:
        pids.append(proc.pid)
    netns.terminate(pids, term_timeout=10)
    netns.reap(proc)
    with contextlib.suppress(OSError, ValueError):
        address = (base / "address").read_text().strip()
        trusted = CERTS_D / address / "ca.crt"
        # Only our own entry: a later run may have been given the same address.
        if address and "/" not in address and trusted.read_bytes() == (base / "tls" / "ca.pem").read_bytes():
            shutil.rmtree(CERTS_D / address, ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)


def cleanup_leftovers() -> list[str]:
    """Remove what runs that died left behind; never touch a live run's registry."""
    return netns.cleanup_leftovers(PREFIX, lambda tag, base: _destroy_base(base))


@contextlib.contextmanager
def running_registry(host: str = "127.0.0.1", *, tls: bool = False, auth: bool = False) -> Iterator[Registry]:
    """A registry on a free port of ``host`` (an address of this machine), stopped and removed on exit.

    ``tls``: serve HTTPS with a certificate of its own CA, trusted by every engine here (certs.d).
    ``auth``: htpasswd authentication with a generated user and password.
    """
    ensure_packages(TOOLS, "the registry tests")
    cleanup_leftovers()
    tag = secrets.token_hex(3)
    base = netns.TMP / f"{PREFIX}-{tag}"
    netns.claim(base)
    registry: Registry | None = None
    try:
        port = _free_port(host)
        registry = Registry(host=host, port=port, base=base)
        (base / "address").write_text(registry.address + "\n")  # for the cleanup of a run that dies
        cert_key = None
        if tls:
            ca, cert, key = _tls(base, host)
            registry.ca, cert_key = ca, (cert, key)
            folder = CERTS_D / registry.address
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(ca, folder / "ca.crt")
        htpasswd = None
        if auth:
            registry.username, registry.password = f"user{tag}", secrets.token_urlsafe(18)
            htpasswd = base / "htpasswd"
            made = subprocess.run(
                ["htpasswd", "-Bbn", registry.username, registry.password],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            htpasswd.write_text(made.stdout)
        config = _config(base, registry.address, cert_key, htpasswd)
        with registry.log.open("ab") as log:
            registry.proc = subprocess.Popen(
                ["docker-registry", "serve", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

        def up() -> bool:
            assert registry is not None and registry.proc is not None
            if registry.proc.poll() is not None:
                raise AssertionError(
                    f"docker-registry exited with {registry.proc.returncode}:\n{registry.log_text()[-2000:]}"
                )
            return registry.answers()

        wait_for(up, START_TIMEOUT, f"the registry at {registry.url}", 0.1)
        yield registry
    finally:
        if registry is not None:
            registry.stop()
        else:
            _destroy_base(base)


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def registry_factory() -> Iterator[Callable[..., Registry]]:
    """``make(host="127.0.0.1", tls=False, auth=False)``: registries that live until the session ends."""
    with contextlib.ExitStack() as stack:

        def make(host: str = "127.0.0.1", *, tls: bool = False, auth: bool = False) -> Registry:
            return stack.enter_context(running_registry(host, tls=tls, auth=auth))

        yield make


@pytest.fixture(scope="session")
def registry(registry_factory: Callable[..., Registry]) -> Registry:
    """A plain-HTTP registry on loopback, without authentication, for the whole session."""
    return registry_factory()


@pytest.fixture(scope="module")
def swarm_registry(swarm: Any) -> Iterator[Registry]:
    """A TLS registry on the Swarm manager's veth address (tests/swarm_cluster.py's ``swarm``), which
    the manager and the node in the namespace both pull from; stopped before the Swarm goes."""
    with running_registry(swarm.manager_ip, tls=True) as reg:
        yield reg

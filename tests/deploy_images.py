"""swarm-manager's own images (api, worker, proxy) for the deployment tests, built once and cached.

The ``deploy_images`` fixture (session scope) builds them with scripts/build-images.sh, the way an
operator on a machine without a reachable registry does: on the official base images when the
engine has them, else on the stand-ins scripts/build-base-image.sh makes from Debian packages
(about a minute, once per machine), with pip and npm trusting the host's CA bundle in the builder
stages. The images are tagged ``swarm-manager-test/<name>:<hash>``, the hash covering everything
that goes into them (the Dockerfiles, the lock files, the scripts, the code they copy, the base
images): a session whose tree and bases are unchanged finds them and builds nothing, and a change
of any input builds anew (Docker's layer cache keeps that to the changed layers: the virtualenv and
configurable-http-proxy are rebuilt only when the lock files, the Dockerfiles or the base change).
Older tags of these test images are removed, so the machine keeps one set.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest

ROOT = Path(__file__).resolve().parent.parent
REPO = "swarm-manager-test"
NAMES = ("api", "worker", "proxy")
#: Files and folders whose content is in the images (or decides how they are built).
INPUTS = (
    "Dockerfile.api",
    "Dockerfile.worker",
    "Dockerfile.proxy",
    ".dockerignore",
    "requirements.txt",
    "scripts/build-images.sh",
    "scripts/build-base-image.sh",
    "scripts/healthcheck.py",
    "scripts/chp",
    "shared",
    "api",
    "worker",
    "cli",
)
#: The official base images and the stand-in for each (scripts/build-base-image.sh's kinds).
BASES = {"BASE_IMAGE": ("python:3.11-slim", "python"), "DEBIAN_IMAGE": ("debian:bookworm-slim", "debian")}
REDIS = ("redis:7", "redis")
BUILD_TIMEOUT = 1500


@dataclass(frozen=True)
class DeployImages:
    api: str
    worker: str
    proxy: str
    redis: str
    bases: dict[str, str]  # BASE_IMAGE / DEBIAN_IMAGE -> the image used
    tag: str

    def env(self) -> dict[str, str]:
        """What docker-compose.yml and stack.yml read to find the images (and the build, its bases)."""
        return {
            "API_IMAGE": self.api,
            "WORKER_IMAGE": self.worker,
            "PROXY_IMAGE": self.proxy,
            "REDIS_IMAGE": self.redis,
            **self.bases,
        }


def build_ca_file() -> str:
    """The CA bundle this host's pip trusts, as scripts/build-images.sh picks it ("" for none)."""
    for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if os.environ.get(name):
            return os.environ[name]
    return ""


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(
        p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc",)
    )


def content_hash(bases: dict[str, str], client: docker.DockerClient) -> str:
    digest = hashlib.sha256()
    for name in INPUTS:
        for path in _files(ROOT / name):
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    for ref in sorted(bases.values()):
        digest.update(ref.encode() + b"\0" + str(client.images.get(ref).id).encode() + b"\0")
    return digest.hexdigest()[:16]


def _present(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def _base(client: docker.DockerClient, official: str, kind: str) -> str:
    """The official image when the engine has it, else the Debian stand-in (made on first use)."""
    if _present(client, official):
        return official
    proc = subprocess.run(
        [str(ROOT / "scripts/build-base-image.sh"), kind], capture_output=True, text=True, timeout=BUILD_TIMEOUT
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/build-base-image.sh {kind} failed:\n{proc.stderr[-3000:]}", pytrace=False)
    return proc.stdout.strip().splitlines()[-1]


def _remove_stale(client: docker.DockerClient, tag: str) -> None:
    """Untag this module's images of other hashes (an image a container still uses stays)."""
    for name in NAMES:
        for image in client.images.list(name=f"{REPO}/{name}"):
            for ref in image.tags:
                if ref.startswith(f"{REPO}/{name}:") and ref != f"{REPO}/{name}:{tag}":
                    try:
                        client.images.remove(ref)
                    except docker.errors.APIError:
                        pass


def build_deploy_images(client: docker.DockerClient, logfile: Path) -> DeployImages:
    bases = {var: _base(client, official, kind) for var, (official, kind) in BASES.items()}
    redis = _base(client, *REDIS)
    tag = content_hash(bases, client)
    refs = {name: f"{REPO}/{name}:{tag}" for name in NAMES}
    if not all(_present(client, ref) for ref in refs.values()):
        began = time.monotonic()
        env = {**os.environ, **bases, "REDIS_IMAGE": redis, "BUILD_CA_FILE": build_ca_file()}
        for name in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
            env.pop(name, None)
        with logfile.open("w") as log:
            proc = subprocess.run(
                [str(ROOT / "scripts/build-images.sh"), "--prefix", f"{REPO}/", "--tag", tag],
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT,
                cwd=ROOT,
                env=env,
            )
        if proc.returncode != 0:
            tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-40:])
            pytest.fail(f"scripts/build-images.sh failed ({proc.returncode}); log {logfile}:\n{tail}", pytrace=False)
        print(f"built {', '.join(refs.values())} in {time.monotonic() - began:.0f} s")
    _remove_stale(client, tag)
    return DeployImages(api=refs["api"], worker=refs["worker"], proxy=refs["proxy"], redis=redis, bases=bases, tag=tag)


@pytest.fixture(scope="session")
def deploy_images(docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> DeployImages:
    """api, worker and proxy images of this tree (built on first use, then cached by content)."""
    return build_deploy_images(docker_client, tmp_path_factory.mktemp("images") / "build-images.log")

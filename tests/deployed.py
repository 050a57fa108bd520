"""A deployed swarm-manager (compose project or Swarm stack), used over HTTP as its clients use it.

Shared by tests/test_compose_deploy.py and tests/test_stack_deploy.py: the admin's API calls on the
published API port, notebooks opened at their public URL through the published proxy port (all on
loopback or a namespace address the test made), and the secrets and certificates a deployment reads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from testkit.support import ROOT, wait_for

#: The images' user (Dockerfile.api, Dockerfile.worker, Dockerfile.proxy).
APP_UID = 10001
SECRET_NAMES = ("admin_token", "secret_key", "proxy_auth_token", "flower_basic_auth", "registry_auth")
DOCKER_COMPOSE = "/usr/bin/docker-compose"


def docker_compose() -> str:
    """Debian's docker-compose 1.29 (a failure, not a skip, when it is missing)."""
    found = DOCKER_COMPOSE if os.access(DOCKER_COMPOSE, os.X_OK) else shutil.which("docker-compose")
    if not found:
        pytest.fail(
            f"docker-compose not found at {DOCKER_COMPOSE} or on PATH; install Debian's package: "
            "apt-get install docker-compose",
            pytrace=False,
        )
    return found


def make_secrets(folder: Path) -> dict[str, str]:
    """scripts/make-secrets.sh into ``folder``; name -> value."""
    subprocess.run([str(ROOT / "scripts/make-secrets.sh"), str(folder)], check=True, capture_output=True, timeout=60)
    return {name: (folder / name).read_text().strip() for name in SECRET_NAMES}


def engine_certs(source: Path, folder: Path) -> Path:
    """A copy of a client certificate folder (ca.pem, cert.pem, key.pem) the images' user can read."""
    folder.mkdir(mode=0o700)
    os.chown(folder, APP_UID, APP_UID)  # bind-mounted as a folder: the user must be able to enter it
    for name in ("ca.pem", "cert.pem", "key.pem"):
        shutil.copy(source / name, folder / name)
        os.chown(folder / name, APP_UID, APP_UID)
        (folder / name).chmod(0o400 if name == "key.pem" else 0o444)
    return folder


@dataclass
class Deployed:
    """The API at ``api_url`` (admin token ``token``) and the proxy's public side at ``proxy_url``."""

    api_url: str
    proxy_url: str
    token: str
    http: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.http.trust_env = False  # loopback and namespace addresses only: no proxies, no CA bundles
        self.http.headers["Authorization"] = f"Bearer {self.token}"

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.http.request(method, self.api_url + path, timeout=10, **kwargs)

    def spawn(self, image: str, user: str = "alice") -> str:
        response = self.api("POST", "/spawn", data={"image": image, "user": user})
        assert response.status_code == 202, (response.status_code, response.text)
        return str(response.json()["hostname"])

    def record(self, hostname: str) -> dict[str, Any]:
        response = self.api("GET", f"/container/{hostname}")
        assert response.status_code == 200, (response.status_code, response.text)
        return dict(response.json())

    def wait(self, hostname: str, statuses: set[str], timeout: float) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            record = self.record(hostname)
            return record if record["status"] in {*statuses, "FAILED", "REMOVED"} else None

        record = wait_for(reached, timeout, f"{hostname} to become {' or '.join(sorted(statuses))}", 0.25)
        assert record is not None  # wait_for returns only what is truthy
        assert record["status"] in statuses, f"{hostname} is {record['status']}: {record['error']}"
        return record

    def kill(self, hostname: str) -> None:
        response = self.api("DELETE", f"/container/{hostname}")
        assert response.status_code in (200, 202), (response.status_code, response.text)

    def open_notebook(self, notebook_url: str) -> requests.Response:
        """GET the notebook's public URL (``http://<hostname>.<DOMAIN>:<port>/?token=...``) as a
        browser would, its name resolved to the proxy's published address."""
        url = urlsplit(notebook_url)
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        with requests.Session() as session:
            session.trust_env = False
            return session.get(self.proxy_url + path, headers={"Host": url.netloc}, timeout=10)

"""configurable-http-proxy (CHP) as ``make run`` runs it, on free loopback ports with its own API token.

CHP is the one ``scripts/bring-up.sh`` installs into ``.state/chp`` (``make test`` does that).
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from testkit.support import ROOT, free_port, wait_for

CHP_BIN = ROOT / ".state" / "chp" / "node_modules" / ".bin" / "configurable-http-proxy"


@dataclass
class Chp:
    """A running CHP: its public and API URLs and token, and a session that talks to it directly."""

    public_url: str
    api_url: str
    token: str
    log: Path
    proc: subprocess.Popen[bytes]
    session: requests.Session

    def env(self) -> dict[str, str]:
        """The settings that point a stack at this proxy."""
        return {"PROXY_API_URL": self.api_url, "PROXY_AUTH_TOKEN": self.token, "PROXY_PUBLIC_URL": self.public_url}

    def routes(self) -> dict[str, Any]:
        response = self.session.get(f"{self.api_url}/api/routes", headers=self._auth(), timeout=5)
        response.raise_for_status()
        return dict(response.json())

    def get(self, host: str, path: str = "/") -> requests.Response:
        """A request to the public side, as a browser would send one for ``http://<host>/``."""
        return self.session.get(self.public_url + path, headers={"Host": host}, timeout=5, allow_redirects=False)

    def add(self, path: str, data: dict[str, str]) -> None:
        self.session.post(f"{self.api_url}/api/routes{path}", json=data, headers=self._auth(), timeout=5)

    def delete(self, path: str) -> None:
        self.session.delete(f"{self.api_url}/api/routes{path}", headers=self._auth(), timeout=5)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}


@contextmanager
def running_chp(logdir: Path) -> Iterator[Chp]:
    """A CHP started with ``--host-routing`` (its log in ``logdir``), stopped afterwards."""
    if not os.access(CHP_BIN, os.X_OK):
        raise RuntimeError(f"configurable-http-proxy is not installed at {CHP_BIN} (`make test` installs it)")
    port, api_port = free_port(), free_port()
    token = secrets.token_hex(16)
    log = logdir / "chp.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                *[str(CHP_BIN), "--host-routing", "--ip", "127.0.0.1", "--port", str(port)],
                *["--api-ip", "127.0.0.1", "--api-port", str(api_port)],
            ],
            env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": token},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    session = requests.Session()
    session.trust_env = False  # straight to loopback, whatever proxy variables the shell has
    proxy = Chp(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{api_port}", token, log, proc, session)
    try:

        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"CHP exited with {proc.returncode}:\n{proxy.log_tail()}")
            return proxy.routes() is not None

        wait_for(answers, 30, f"CHP's API on port {api_port}", 0.1)
        yield proxy
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        session.close()

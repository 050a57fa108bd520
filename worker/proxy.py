"""Routes in configurable-http-proxy (CHP): ``<hostname>.<DOMAIN>`` -> the notebook's address.

CHP started with ``--host-routing`` takes a request's Host header as the first path segment
when it looks a route up, so the route ``/<hostname>.<DOMAIN>`` matches every request for
that host. Its REST API (``PROXY_API_URL``, token ``PROXY_AUTH_TOKEN``) is small:
``POST /api/routes/<path>`` with ``{"target": ...}`` adds or replaces a route, ``DELETE``
removes one (404 when there is none), ``GET /api/routes`` lists them with the extra data
each was added with. Every route this deployment adds carries its ``INSTANCE`` in that data,
so the reconciler only ever sweeps its own routes from a proxy other deployments share.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import requests

from shared.errors import ProxyError
from shared.settings import Settings

log = logging.getLogger(__name__)

DATA_INSTANCE = "swarm_manager_instance"
DATA_HOSTNAME = "swarm_manager_hostname"


@dataclass(frozen=True)
class Route:
    host: str  # <hostname>.<DOMAIN>
    target: str  # http://host:port of the notebook
    hostname: str  # the record's hostname


class Proxy:
    """A client of CHP's REST API for one deployment (``instance``).

    Takes its ``requests`` session (tests and callers may pass their own); the default one
    ignores proxy and CA-bundle variables from the environment, since CHP is reached
    directly, typically on loopback. ``public_url`` is CHP's public side, used only to check
    that a route really reaches its notebook.
    """

    def __init__(
        self,
        api_url: str,
        token: str,
        session: requests.Session | None = None,
        *,
        instance: str,
        public_url: str = "",
        timeout: float = 5.0,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.public_url = public_url.rstrip("/")
        self.instance = instance
        self.timeout = timeout
        if session is None:
            session = requests.Session()
            session.trust_env = False
        self.session = session
        self._headers = {"Authorization": f"token {token}"} if token else {}

    def add(self, host: str, target: str, hostname: str) -> None:
        """Route ``host`` to ``target`` (replacing any route for it). Raises ProxyError."""
        body = {"target": target, DATA_INSTANCE: self.instance, DATA_HOSTNAME: hostname}
        self._call("POST", f"/api/routes/{host}", {201, 200}, json=body)

    def remove(self, host: str) -> None:
        """Remove the route for ``host``; one that does not exist counts as removed. Raises ProxyError."""
        self._call("DELETE", f"/api/routes/{host}", {204, 200, 404})

    def routes(self) -> dict[str, Route]:
        """This instance's routes, by the record hostname they lead to. Raises ProxyError."""
        response = self._call("GET", "/api/routes", {200})
        try:
            table: dict[str, Any] = response.json()
        except ValueError as exc:
            raise ProxyError(f"the proxy's route table is not JSON: {exc}") from None
        out = {}
        for path, data in table.items():
            if not isinstance(data, dict) or data.get(DATA_INSTANCE) != self.instance:
                continue
            hostname = str(data.get(DATA_HOSTNAME) or "")
            if hostname:
                out[hostname] = Route(host=path.lstrip("/"), target=str(data.get("target", "")), hostname=hostname)
        return out

    def reaches(self, host: str, timeout: float = 1.0) -> bool:
        """Does a request for ``host`` through the proxy's public side reach the notebook?

        CHP itself answers 404 when no route matches and 503 when the target does not
        answer (it says so in the body, with no other sign), so only a response other than
        those, and below 500, counts as the notebook's own. Never raises.
        """
        if not self.public_url:
            return False
        try:
            response = self.session.get(
                self.public_url + "/",
                headers={"Host": host, "User-Agent": "swarm-manager-readiness"},
                timeout=timeout,
                allow_redirects=False,
            )
        except requests.RequestException:
            return False
        return response.status_code < 500 and response.status_code != 404

    def _call(self, method: str, path: str, ok: set[int], **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(
                method, self.api_url + path, headers=self._headers, timeout=self.timeout, **kwargs
            )
        except requests.RequestException as exc:
            raise ProxyError(f"the proxy API at {self.api_url} is unreachable: {exc}") from exc
        if response.status_code not in ok:
            hint = " (check PROXY_AUTH_TOKEN)" if response.status_code == 403 else ""
            raise ProxyError(
                f"the proxy refused {method} {path}: {response.status_code} {response.text[:200].strip()}{hint}"
            )
        return response


def make_proxy(settings: Settings, session: requests.Session | None = None) -> Proxy | None:
    """The proxy client for PROXY_API_URL, or None when no proxy is configured."""
    if not settings.proxy_api_url:
        return None
    return Proxy(
        settings.proxy_api_url,
        settings.proxy_auth_token,
        session,
        instance=settings.instance,
        public_url=settings.proxy_public_url,
    )

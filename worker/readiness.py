"""Is the notebook server answering? One HTTP request, any HTTP response counts."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit


def answers_http(address: str, timeout: float = 1.0, path: str = "/") -> bool:
    """True if ``address`` (http://host:port) returns any HTTP status line for GET ``path``.

    Never raises: refused connections, resets (a published port whose server is not up yet
    is accepted by the engine's proxy and then closed), timeouts and garbage all mean
    "not yet".
    """
    parts = urlsplit(address)
    if not parts.hostname or not parts.port:
        return False
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "swarm-manager-readiness"})
        response = conn.getresponse()
        response.read(0)
        return True
    except (OSError, http.client.HTTPException, ValueError):
        return False
    finally:
        conn.close()

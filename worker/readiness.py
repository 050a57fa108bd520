"""Is the notebook server answering, and does it refuse requests without its token?

One HTTP request for readiness, any HTTP response counts; two for the token check, which reads
the answers of Jupyter's REST API (``/api/status``) with and without the notebook's token.
"""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

#: The path the token check asks: Jupyter Notebook, Jupyter Server and JupyterLab all serve it,
#: and answer it only with the server's token (403 without).
TOKEN_CHECK_PATH = "/api/status"
USER_AGENT = "swarm-manager-readiness"


def http_status(address: str, path: str = "/", headers: dict[str, str] | None = None, timeout: float = 1.0) -> int:
    """The HTTP status ``address`` (http://host:port) answers GET ``path`` with; 0 for no answer.

    Never raises: refused connections, resets (a published port whose server is not up yet is
    accepted by the engine's proxy and then closed), timeouts and garbage all mean 0.
    """
    parts = urlsplit(address)
    if not parts.hostname or not parts.port:
        return 0
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": USER_AGENT, **(headers or {})})
        response = conn.getresponse()
        response.read(0)
        return response.status
    except (OSError, http.client.HTTPException, ValueError):
        return 0
    finally:
        conn.close()


def answers_http(address: str, timeout: float = 1.0, path: str = "/") -> bool:
    """True if ``address`` returns any HTTP status line for GET ``path`` (readiness)."""
    return http_status(address, path, timeout=timeout) != 0


def token_problem(address: str, token: str, timeout: float = 2.0) -> str:
    """What is wrong with how the notebook at ``address`` treats ``token``, in words for the
    record's ``error``; an empty string when it refuses its API without the token and takes it
    with it, as far as can be told.

    Only what the server answers decides: a 2xx without the token means it serves anyone who
    knows its address; a 401/403 with the token means the token never reached it. A server
    that has no ``/api/status`` (404), or does not answer, proves neither: not a problem here.
    """
    without = http_status(address, TOKEN_CHECK_PATH, timeout=timeout)
    if 200 <= without < 300:
        return (
            f"the notebook ignores its token: GET {TOKEN_CHECK_PATH} without it answered {without}, so anyone "
            "who knows its address could use it. Make the image read its token (JUPYTER_TOKEN, or the "
            "profile's token_env or token_arg), or mark an image without token support with `token: false` "
            "in its profile"
        )
    if without in (401, 403):
        withit = http_status(address, TOKEN_CHECK_PATH, {"Authorization": f"token {token}"}, timeout)
        if withit in (401, 403):
            return (
                f"the notebook refuses its own token: GET {TOKEN_CHECK_PATH} with it answered {withit}, so its "
                "owner could not use it either. The token does not reach the server: check the profile's "
                "token_env or token_arg (the default is the JUPYTER_TOKEN variable)"
            )
    return ""

"""Is the notebook server answering, and does it refuse requests without its token?

One HTTP request for readiness, any HTTP response counts; two for the token check, which reads
the answers of Jupyter's REST API (``/api/status``) with and without the notebook's token.
"""

from __future__ import annotations

import http.client
import json
import threading
from urllib.parse import urlsplit

#: The path the token check asks: Jupyter Notebook, Jupyter Server and JupyterLab all serve it,
#: and answer it only with the server's token (403 without).
TOKEN_CHECK_PATH = "/api/status"
USER_AGENT = "swarm-manager-readiness"

#: The first gap between readiness probes of a notebook that just started. A server that comes up
#: a few tens of milliseconds after its container (most do) is then noticed within a few ms, where
#: PROBE_INTERVAL alone would add half an interval on average to every spawn.
FAST_FIRST = 0.005
#: After that the gap grows with the time waited (a twentieth of it) up to PROBE_INTERVAL, so
#: noticing late costs at most a twentieth of the wait, and a server that takes seconds is asked no
#: more often than before. A failed probe costs CPU here and in the engine's port proxy, so the fast
#: phase is short: it ends once the gap reaches PROBE_INTERVAL (docs/benchmarks.md has its cost).
FAST_SHARE = 0.05
#: How many waits of one worker process may be in their fast phase at once; the others probe every
#: PROBE_INTERVAL from the start. Bounds the fast probes' CPU during a burst of spawns.
FAST_SLOTS = 4


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


#: The session path thebe (0.9, thebe-core) opens its kernel at; Jupyter hands a client the session
#: that already exists at a path instead of starting another kernel.
WARM_SESSION_PATH = "/"


def start_kernel(address: str, token: str, kernel: str, timeout: float = 30.0) -> str:
    """Open the session at WARM_SESSION_PATH with a ``kernel`` kernel on the Jupyter server at
    ``address`` (its own token); return the kernel's id. Raises OSError (ConnectionError) with the
    server's answer when it does not make one."""
    parts = urlsplit(address)
    if not parts.hostname or not parts.port:
        raise ConnectionError(f"no host and port in {address!r}")
    body = json.dumps({"path": WARM_SESSION_PATH, "name": "", "type": "notebook", "kernel": {"name": kernel}}).encode()
    headers = {
        "User-Agent": USER_AGENT,
        "Authorization": f"token {token}",
        "Content-Type": "application/json",
    }
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", "/api/sessions", body=body, headers=headers)
        response = conn.getresponse()
        text = response.read(64 * 1024)
        if response.status not in (200, 201):
            raise ConnectionError(f"POST /api/sessions answered {response.status}: {text[:200]!r}")
        return str(json.loads(text)["kernel"]["id"])
    except (http.client.HTTPException, ValueError, KeyError, TypeError) as exc:
        raise ConnectionError(f"POST /api/sessions: {exc}") from exc
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


class ProbePacer:
    """Gaps between readiness probes: fast for a notebook that just started, then PROBE_INTERVAL.

    One per worker process and kind of wait (the Spawner's for HTTP, the services backend's for a
    task's start), shared by its threads: at most ``slots`` waits are in their fast phase at a
    time (see FAST_SLOTS).
    """

    def __init__(self, slots: int = FAST_SLOTS) -> None:
        self._free = slots
        self._lock = threading.Lock()

    def pace(self, steady: float, first: float = FAST_FIRST, share: float = FAST_SHARE) -> Pace:
        """The schedule of one wait: ``first`` apart, then ``share`` of the time waited, up to ``steady``
        (PROBE_INTERVAL), or ``steady`` from the start when every fast slot is taken. Close it when
        the wait ends."""
        with self._lock:
            fast = self._free > 0
            if fast:
                self._free -= 1
        return Pace(self, steady, fast, first, share)

    def _give_back(self) -> None:
        with self._lock:
            self._free += 1


class Pace:
    """One wait's probe gaps (from :meth:`ProbePacer.pace`)."""

    def __init__(
        self, pacer: ProbePacer, steady: float, fast: bool, first: float = FAST_FIRST, share: float = FAST_SHARE
    ) -> None:
        self._pacer = pacer
        self.steady = steady
        self.fast = fast
        self.first = first
        self.share = share

    def gap(self, waited: float) -> float:
        """Seconds until the next probe, ``waited`` seconds into the wait."""
        if not self.fast:
            return self.steady
        gap = min(self.steady, max(self.first, waited * self.share))
        if gap >= self.steady:
            self.close()  # steady from here on: the slot is another wait's
        return gap

    def close(self) -> None:
        if self.fast:
            self.fast = False
            self._pacer._give_back()

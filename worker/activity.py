"""What a notebook server says about its own activity (Jupyter's ``/api/status``)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from shared.record import parse_rfc3339


def last_activity(address: str, token: str = "", timeout: float = 2.0) -> float | None:
    """Epoch seconds of the server's ``last_activity``, or None if it does not report one.

    ``token`` is the notebook's own token (shared/notebook_token.py): Jupyter answers 403
    without it, so it is sent as ``Authorization: token <token>`` (never in the URL, where
    access logs would keep it).

    Jupyter Notebook and Jupyter Server answer ``GET /api/status`` with
    ``{"last_activity": "2026-11-26T04:00:00.000000Z", ...}``. Anything else (no such route,
    not JSON, unreachable) means "unknown": such notebooks are only subject to age limits.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    request = urllib.request.Request(address.rstrip("/") + "/api/status")
    if token:
        request.add_header("Authorization", f"token {token}")
    try:
        with opener.open(request, timeout=timeout) as response:
            data = json.loads(response.read(65536))
    except (OSError, urllib.error.URLError, ValueError):
        return None
    value = data.get("last_activity") if isinstance(data, dict) else None
    if not isinstance(value, str):
        return None
    epoch = parse_rfc3339(value)
    return epoch or None

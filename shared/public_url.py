"""Where people open a notebook: the ``PUBLIC_URL`` template and the addresses made from it.

The first API's ``url`` field stays ``<hostname>.<DOMAIN>`` (what a wildcard-DNS proxy routes). What a
person clicks also needs a scheme, often a port, and the notebook's token: ``PUBLIC_URL`` is a
template such as ``https://{hostname}.{domain}/`` (production, behind a TLS proxy) or
``http://{hostname}.{domain}:8000/`` (``make run``'s own proxy), and everything that hands out a
link (the records' ``notebook_url``, /manage, the ``ready`` event, the CLI) builds it here.
"""

from __future__ import annotations

import string
from urllib.parse import urlsplit

#: The placeholders a template may use: the record's hostname and the domain it was spawned under.
FIELDS = ("hostname", "domain")


def check_template(template: str) -> str:
    """``template`` if it makes http(s) URLs with the notebook's hostname in them; else ValueError."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{template!r} is not a template ({exc}); use {{hostname}} and {{domain}}") from None
    names = [name for _, name, _, _ in parsed if name is not None]
    unknown = sorted({n for n in names if n not in FIELDS})
    if unknown:
        raise ValueError(
            f"{template!r} names {', '.join('{' + n + '}' for n in unknown)}; "
            "a template may use only {hostname} and {domain}"
        )
    if any(spec or conversion for _, name, spec, conversion in parsed if name is not None):
        raise ValueError(f"{template!r}: write placeholders plainly, as {{hostname}} and {{domain}}")
    if "hostname" not in names:
        raise ValueError(f"{template!r} has no {{hostname}}: every notebook would get the same address")
    sample = public_url(template, "ki60dje40khk", "example.org")
    parts = urlsplit(sample)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in sample):
        raise ValueError(f"{template!r} is not an http:// or https:// URL, e.g. https://{{hostname}}.{{domain}}/")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise ValueError(f"{template!r}: no user, password or #fragment in a notebook's address")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError(f"{template!r} has a port that is not a number") from None
    return template


def public_url(template: str, hostname: str, domain: str) -> str:
    """The notebook's address without its token (safe to show to anyone who may see the record)."""
    return template.format(hostname=hostname, domain=domain)


def notebook_url(public: str, token: str) -> str:
    """``public`` with the notebook's token, ready to open (Jupyter signs in from ``?token=``)."""
    if not token:
        return public
    return public + ("&" if urlsplit(public).query else "?") + f"token={token}"

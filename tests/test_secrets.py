"""Secrets the deployment scripts generate: scripts/new-secret, which scripts/make-secrets.sh and
`make run` (scripts/run-local.sh) use for tokens and keys.

A token that starts with "-" cannot be given as ``--token X`` (argparse, and many tools, read it as
an option), so none may: one in 64 would with plain ``secrets.token_urlsafe``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from testkit.support import ROOT
from tests.deployed import make_secrets

SECRET = re.compile(r"[A-Za-z0-9_-]{43}")


def test_generated_secrets_never_start_with_a_dash() -> None:
    out = subprocess.run(
        ["python3", str(ROOT / "scripts/new-secret"), "3000"], check=True, capture_output=True, text=True, timeout=60
    ).stdout.split()
    assert len(out) == len(set(out)) == 3000
    assert all(SECRET.fullmatch(s) for s in out)
    assert not [s for s in out if s.startswith("-")]
    assert any("-" in s[1:] for s in out)  # only the first character is drawn again


def test_make_secrets_and_make_run_use_it(tmp_path: Path) -> None:
    made = make_secrets(tmp_path / "secrets")
    for name in ("admin_token", "secret_key", "proxy_auth_token"):
        assert SECRET.fullmatch(made[name]), name
    assert made["flower_basic_auth"].startswith("ops:") and SECRET.fullmatch(made["flower_basic_auth"][4:])
    run_local = (ROOT / "scripts/run-local.sh").read_text()
    assert run_local.count("scripts/new-secret") == 2  # the admin token, and any other secret it makes
    # Its one other draw is Flower's password, behind "admin:".
    draws = [line for line in run_local.splitlines() if "token_urlsafe" in line]
    assert len(draws) == 1 and "print('admin:' + secrets.token_urlsafe" in draws[0]

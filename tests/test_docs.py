"""The README documents every setting the code reads."""

from __future__ import annotations

from shared.settings import documented_settings
from tests.support import ROOT


def test_readme_configuration_table_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name, _, _ in documented_settings() if f"| `{name}` |" not in readme]
    assert missing == []


def test_readme_names_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci

"""The README and docs/: the two commands, every setting documented, every link leading somewhere."""

from __future__ import annotations

import re
from pathlib import Path

from cli.docs import TARGET, configuration_markdown
from shared.settings import documented_settings
from testkit.support import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_configuration_doc_is_made_from_the_settings() -> None:
    assert TARGET.read_text() == configuration_markdown(), "docs/configuration.md is stale: run `make docs`"
    text = TARGET.read_text()
    assert [name for name, _, _ in documented_settings() if f"| `{name}` |" not in text] == []


def test_readme_names_the_two_commands_and_stays_short() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert len(readme.splitlines()) < 200, "the README is the front page: details belong in docs/"


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a Markdown page's headings (outside code blocks)."""
    anchors, in_code = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"^#{1,6} (.+)$", line)):
            anchors.add(re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-"))
    return anchors


def test_every_link_between_pages_and_to_files_leads_somewhere() -> None:
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue  # http(s): and the like
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []

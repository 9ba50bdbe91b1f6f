"""Settings chosen after seeing test results (results/disclosures.yaml), rendered for the end of
chapters 03 and 04 and for the README, so that the three say the same thing.

`python -m maga.book.disclosures` rewrites the README's block between the markers below."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from maga_core.config import atomic_path
from maga_core.errors import MagaError

REPO_ROOT = Path(__file__).resolve().parents[2]
DISCLOSURES = REPO_ROOT / "results" / "disclosures.yaml"
README = REPO_ROOT / "README.md"
START, END = "<!-- disclosures: start (python -m maga.book.disclosures) -->", "<!-- disclosures: end -->"
FIELDS = {"chapter", "setting", "set_in", "seen", "status"}


def load(path: Path = DISCLOSURES) -> list[dict[str, Any]]:
    entries = yaml.safe_load(Path(path).read_text()) or []
    for i, e in enumerate(entries):
        missing = FIELDS - set(e)
        if missing:
            raise MagaError(f"entry {i + 1} lacks {', '.join(sorted(missing))}", path)
    return entries


def markdown(chapter: str | None = None, path: Path = DISCLOSURES) -> str:
    """One bullet per setting (of `chapter`, or all): what, the commit, what test result was seen, now."""
    lines = []
    for e in load(path):
        if chapter is not None and e["chapter"] != chapter:
            continue
        where = f"set in `{e['set_in']}`" + (f", test result recorded in `{e['seen_in']}`" if e.get("seen_in") else "")
        ch = "" if chapter is not None else f"(chapter {int(e['chapter'])}) "
        lines.append(f"- {ch}**{e['setting']}**: {where}; seen: {e['seen']}. Now: {e['status']}.")
    if not lines:
        raise MagaError(f"no disclosures for chapter {chapter}", path)
    return "\n".join(lines)


def readme_block(path: Path = DISCLOSURES) -> str:
    return f"{START}\n{markdown(None, path)}\n{END}"


def sync_readme(readme: Path = README, path: Path = DISCLOSURES) -> bool:
    """Rewrite the README's disclosure block from the data file; True when it changed."""
    text = Path(readme).read_text()
    if START not in text or END not in text:
        raise MagaError("no disclosure markers", readme)
    head, rest = text.split(START, 1)
    new = head + readme_block(path) + rest.split(END, 1)[1]
    if new == text:
        return False
    with atomic_path(readme) as tmp:
        tmp.write_text(new)
    return True


if __name__ == "__main__":
    print("README.md " + ("updated" if sync_readme() else "already current"))
    sys.exit(0)

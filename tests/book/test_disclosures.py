"""The disclosure of settings chosen after seeing test results: one data file, shown at the end of chapters
03 and 04 and in the README, each entry naming a commit of this repository."""

from __future__ import annotations

import json
import subprocess

import pytest

from maga.book import disclosures
from maga_core.errors import MagaError


def test_every_named_commit_exists_and_predates_head():
    entries = disclosures.load()
    assert {e["chapter"] for e in entries} == {"03", "04"}
    for e in entries:
        for key in ("set_in", "seen_in"):
            if key in e:
                done = subprocess.run(["git", "-C", str(disclosures.REPO_ROOT), "merge-base", "--is-ancestor",
                                       str(e[key]), "HEAD"], capture_output=True)
                assert done.returncode == 0, f"{e['setting']}: {key} {e[key]} is not a commit of this history"


def test_readme_block_is_rendered_from_the_data_file():
    text = disclosures.README.read_text()
    assert disclosures.readme_block() in text, "README out of date: run python -m maga.book.disclosures"


@pytest.mark.parametrize("chapter, notebook", [("03", "03_feature_quality"), ("04", "04_mil_cross_validation")])
def test_chapter_ends_with_its_disclosures(chapter, notebook):
    cells = json.loads((disclosures.REPO_ROOT / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    assert "".join(cells[-2]["source"]).startswith("## Settings chosen after seeing test results")
    assert f'disclosures.markdown("{chapter}")' in "".join(cells[-1]["source"])
    shown = disclosures.markdown(chapter)
    for e in disclosures.load():
        assert (e["setting"] in shown) == (e["chapter"] == chapter)
        assert (f"`{e['set_in']}`" in shown) or e["chapter"] != chapter


def test_an_entry_without_its_commit_is_refused(tmp_path):
    bad = tmp_path / "d.yaml"
    bad.write_text('- {chapter: "03", setting: s, seen: x, status: y}\n')
    with pytest.raises(MagaError, match="lacks set_in"):
        disclosures.load(bad)

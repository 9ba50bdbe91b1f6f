"""The README's measured numbers are rendered from records (maga.book.readme_blocks): every block is current,
and a change in a record changes the block."""

from __future__ import annotations

import copy
import json

from maga.book import readme_blocks


def test_every_readme_block_is_current():
    text = readme_blocks.README.read_text()
    assert set(readme_blocks.blocks_in(text)) == set(readme_blocks.BLOCKS)
    for name in readme_blocks.BLOCKS:
        assert readme_blocks.block(name) in text, f"README block {name} is stale: python -m maga.book.readme_blocks"


def test_reliability_table_follows_its_record():
    record = json.loads((readme_blocks.RESULTS / "reliability.json").read_text())
    changed = copy.deepcopy(record)
    changed["service"]["answered_correctly"] -= 1
    changed["totals"]["lost_or_half_written"] += 1
    before, after = readme_blocks.reliability_table(record), readme_blocks.reliability_table(changed)
    assert before != after
    n = record["service"]["uploads"]
    assert f"{n - 1} of {n} answered correctly" in after
    assert f"**{record['totals']['lost_or_half_written'] + 1}**" in after


def test_sync_rewrites_a_stale_block_and_strip_removes_it(tmp_path):
    start, end = readme_blocks.markers("reliability")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro 82%\n{start}\nold 99%\n{end}\nafter\n")
    assert readme_blocks.sync(readme) == ["reliability"]
    assert readme_blocks.block("reliability") in readme.read_text()
    assert readme_blocks.sync(readme) == []
    assert readme_blocks.strip_blocks(readme.read_text()) == "intro 82%\n\nafter\n"

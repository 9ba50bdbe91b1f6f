"""No outcome typed in prose: the README files, ARCHITECTURE.md, the book's intro and the notebooks' markdown
cells carry no percentages, AUC-like decimals, ratios, timings or throughputs (a measured or a paper's figure
is formatted from its record by `maga.book.prose` or inside a README block rendered from its record by
`maga.book.readme_blocks`, or the text points at the record). Code cells are not prose and are not read.
ALLOWED lists the numbers that are not outcomes, each with why."""

from __future__ import annotations

import json
import re
from pathlib import Path

from maga.book.readme_blocks import strip_blocks

ROOT = Path(__file__).resolve().parents[2]
PROSE = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "results" / "README.md", ROOT / "book" / "intro.md"]

OUTCOME = re.compile(
    r"(?<![\w.])(?:"
    r"[-+]?\d+(?:\.\d+)?\s?%"                    # percentages: 82%, -49 %
    r"|0\.\d{2,}(?![\d.])"                       # AUC-like decimals: 0.955 (not versions: 0.28.0)
    r"|\d+(?:\.\d+)?x(?![\w+])"                  # ratios: 10.7x, 16x
    r"|\d+(?:\.\d+)?\s?(?:min|minutes|h|hours|s|seconds)\b"  # timings: 29.9 min, 59 s
    r"|\d[\d,]*(?:\.\d+)?\s?(?:tiles|patches|slides)/s\b"  # throughputs: 2,106 tiles/s
    r"|ratio (?:of )?\d+(?:\.\d+)?"                # ratios written out: ratio 6.6
    r")")

# (pattern the number must sit in, why it is not an outcome)
ALLOWED = [
    (r"(?<![\w.])(?:20|10|5|2\.5)x\b", "a magnification, the subject of the paper"),
    (r"(?<![\w.])(?:20|10|5|2\.5)x(?=\+)", "a magnification with MAGA (5x+MAGA)"),
    (r"\b95% (?:CI|CIs|confidence)", "the confidence level of an interval, not a result"),
    (r"\[95% CI\]", "the confidence level of an interval, not a result"),
    (r"16x fewer pixels", "(256 / 64)^2: the pixel ratio of 20x to 5x patches, by construction"),
    (r"16x compute saving the paper claims", "(256 / 64)^2: the pixel ratio, by construction"),
    (r"reductions of 2x or more", "a resampling rule's threshold (area averaging), a setting"),
    (r"decaying by 0\.95 per epoch", "the learning-rate decay, a setting chosen on validation folds"),
    (r"Adam 1e-4 x0\.95 per epoch", "the learning-rate decay, a setting chosen on validation folds"),
    (r"0\.\d+ um/px", "a slide's resolution read from its file"),
    (r"\d+ s by default", "a command's default setting (a timeout), not a measurement"),
]


def prose_lines():
    for path in PROSE:
        for i, line in enumerate(strip_blocks(path.read_text()).splitlines(), 1):
            yield f"{path.relative_to(ROOT)}:{i}", line
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for c, cell in enumerate(json.loads(nb.read_text())["cells"]):
            if cell["cell_type"] == "markdown":
                for i, line in enumerate("".join(cell["source"]).splitlines(), 1):
                    yield f"{nb.relative_to(ROOT)} cell {c} line {i}", line


def typed_outcomes(line: str) -> list[str]:
    allowed = [m.span() for pat, _ in ALLOWED for m in re.finditer(pat, line)]
    return [m.group() for m in OUTCOME.finditer(line)
            if not any(a <= m.start() and m.end() <= b for a, b in allowed)]


def test_scanner_catches_each_kind_and_spares_the_allowed():
    assert typed_outcomes("LC25000 82% of the gap, AUC 0.955, 10.7x less, 29.9 min, 59 s to send") == \
        ["82%", "0.955", "10.7x", "29.9 min", "59 s"]
    assert typed_outcomes("TCGA -49% (CI -632% to 164%)") == ["-49%", "-632%", "164%"]
    assert typed_outcomes("20x 2,106 tiles/s, 5x 846 patches/s (ratio 3.2)") == ["2,106 tiles/s", "846 patches/s",
                                                                               "ratio 3.2"]
    assert typed_outcomes("at 20x and 5x+MAGA with 95% CIs; torch 2.13.0, torchvision 0.28.0; 16x fewer pixels") == []
    assert typed_outcomes("a 20x region (0.499 um/px)") == []


def test_no_outcome_number_typed_in_prose():
    found = [f"{where}: {', '.join(hits)}" for where, line in prose_lines() if (hits := typed_outcomes(line))]
    assert not found, "outcome numbers typed in prose (format them from the record):\n" + "\n".join(found)


def test_chapter_sentences_follow_the_paper_file(monkeypatch):
    from maga.book import prose
    from maga.records import paper_results

    p = paper_results()
    p["g2l_distillation"].update(inference_speedup=9.9, gpu_memory_reduction_percent=42)
    p["frozen_section_telepathology"]["transfer_s"]["x20"] = 123.4
    p["tcga_nsclc_subtyping"]["storage_gb"] = {"x20": 0.8, "x5": 0.04}
    monkeypatch.setattr(prose, "paper_results", lambda: p)
    assert "**9.9x faster** with **42% less GPU memory**" in prose.g2l_claims_text()
    assert "took 123.4 s to send" in prose.telepath_paper_text()
    assert "0.8 GB per TCGA-NSCLC slide at 20x against 0.04 GB at 5x (20.0x)" in prose.paper_storage_text()
    limits = prose.telepath_limits_text({"machine": {"cpu_count": 7, "device": "cpu"},
                                         "service": {"aggregator": "transmil", "encoder": "resnet50_trunc"}})
    assert "this run used 7 CPU cores (transmil + resnet50_trunc)" in limits

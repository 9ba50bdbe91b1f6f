"""Sentences that state a MAGA result against both baselines (plain and upsampled teacher), formatted
from records (maga.alignment.baselines) so that no number is typed into prose: README, chapters 3, 4, 9."""

from __future__ import annotations

import json
from pathlib import Path

from maga.alignment.baselines import Against, from_bench

STUDENTS = ("native", "upsample")


def fraction(a: Against, baseline: str) -> str:
    """The recovered fraction against one baseline, as a percentage; without a clear gap to 20x, the AUC
    difference instead."""
    r = a.recovered(baseline)
    return f"{r:.0%}" if r is not None else f"no clear gap (AUC difference {a.difference(baseline):+.3f})"


def verdict(a: Against) -> str:
    """Which baseline the student's AUC is not above, in plain words (point estimates: read the CIs and
    DeLong tests beside it before calling a difference real)."""
    missed = a.not_beaten()
    if not missed:
        return "its AUC is above both baselines."
    if len(missed) == 2:
        return "its AUC is above **neither baseline**."
    if missed == ["upsampled"]:
        return ("its AUC is above the plain teacher's but **not above the upsampled teacher's** (the same pixels "
                "fed at the 20x size, at the 20x compute).")
    return "its AUC is above the upsampled teacher's but **not above the plain teacher's** at its own size."


def sentence(a: Against, student: str = "MAGA") -> str:
    """One line: the four AUCs, the recovered fraction against each baseline, the verdict."""
    return (f"**{a.name}**: {student} {a.student:.3f} (20x {a.high:.3f}; plain teacher {a.plain:.3f}, "
            f"upsampled teacher {a.upsampled:.3f}); gap to 20x recovered: {fraction(a, 'plain')} against the plain "
            f"teacher, {fraction(a, 'upsampled')} against the upsampled teacher; {verdict(a)}")


def bench_text(path: str | Path) -> str:
    """Bullets for every student, magnification and task of a recorded `maga bench maga` JSON."""
    path = Path(path)
    if not path.is_file():
        return f"*{path.name} is not recorded in this checkout.*"
    record = json.loads(path.read_text())
    return "\n".join(f"- {sentence(a, f'MAGA {mode}')}" for mode in STUDENTS for a in from_bench(record, mode))



RECORDS = {"maga_bench.json": "the `maga align` defaults at 5x", "maga_mags.json": "the magnification curve"}


def readme_block(results: str | Path) -> str:
    """The README's MAGA results against both baselines, from the recorded bench JSON under `results`
    (registered as the `maga-baselines` block of maga.book.readme_blocks)."""
    parts = []
    for name, what in RECORDS.items():
        path = Path(results) / name
        if path.is_file():
            parts.append(f"`results/{name}` ({what}):\n" + bench_text(path))
    return "\n\n".join(parts)

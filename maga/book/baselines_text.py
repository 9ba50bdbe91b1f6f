"""Sentences that state a MAGA result against both baselines (plain and upsampled teacher), formatted
from records (maga.alignment.baselines) so that no number is typed into prose: README, chapters 3, 4, 9."""

from __future__ import annotations

import json
from pathlib import Path

from maga.alignment.baselines import Against, from_bench


def _fraction(a: Against, baseline: str) -> str:
    r = a.recovered(baseline)
    return "none (no gap)" if r is None else f"{r:.0%}"


def verdict(a: Against) -> str:
    """Which baseline the student does not beat, in plain words."""
    missed = a.not_beaten()
    if not missed:
        return "it beats both baselines."
    if len(missed) == 2:
        return "it beats neither baseline."
    if missed == ["upsampled"]:
        return ("it beats the plain teacher but **not the upsampled teacher** (the same pixels fed at the 20x "
                "size, at the 20x compute).")
    return "it beats the upsampled teacher but **not the plain teacher** at its own size."


def sentence(a: Against, student: str = "MAGA") -> str:
    """One line: the four AUCs, the recovered fraction against each baseline, the verdict."""
    return (f"**{a.name}**: {student} {a.student:.3f} (20x {a.high:.3f}; plain teacher {a.plain:.3f}, "
            f"upsampled teacher {a.upsampled:.3f}); gap to 20x recovered: {_fraction(a, 'plain')} against the plain "
            f"teacher, {_fraction(a, 'upsampled')} against the upsampled teacher; {verdict(a)}")


def bench_text(path: str | Path, mode: str = "native") -> str:
    """Bullets for every magnification and task of a recorded `maga bench maga` JSON."""
    path = Path(path)
    if not path.is_file():
        return f"*{path.name} is not recorded in this checkout.*"
    record = json.loads(path.read_text())
    return "\n".join(f"- {sentence(a, f'MAGA {mode}')}" for a in from_bench(record, mode))

"""MAGA against both of its baselines, from any record that holds the four AUCs.

A MAGA student is stated against two baselines, never one: the plain teacher on the low-magnification view
at its size (the same compute as the native student), and the teacher on that view resized back to the 20x
size (the same pixels, at the 20x compute: upstream's no-MAGA setting). The recovered fraction of the gap
to 20x is (student - baseline) / (20x - baseline); MAGA beats a baseline only where the student's AUC is
above it. One helper serves the tile probes (`maga bench maga`, chapter 3) and the slide-level evidence run
(chapter 4), so every sentence that compares MAGA names both baselines."""

from __future__ import annotations

from dataclasses import dataclass

from maga.alignment.probe import MIN_GAP

BASELINES = {"plain": "the teacher at the low magnification's size",
             "upsampled": "the teacher on the same view upsampled to 20x size"}


@dataclass(frozen=True)
class Against:
    """One MAGA result: AUCs of the 20x teacher, both baselines and the student, and what follows."""
    name: str
    high: float
    plain: float
    upsampled: float
    student: float

    def recovered(self, baseline: str) -> float | None:
        """Fraction of the gap between `baseline` ("plain" or "upsampled") and 20x that the student
        recovers; None where that baseline is within MIN_GAP of 20x (no gap to recover)."""
        low = getattr(self, baseline)
        gap = self.high - low
        return (self.student - low) / gap if gap >= MIN_GAP else None

    def beats(self, baseline: str) -> bool:
        return self.student > getattr(self, baseline)

    def not_beaten(self) -> list[str]:
        """The baselines whose AUC the student does not exceed."""
        return [b for b in BASELINES if not self.beats(b)]


def from_probe(task: dict, mag: float, mode: str = "native", name: str = "") -> Against:
    """From a task of `maga bench maga` (auc: {kind: [auc, lo, hi]}) or of a probe study (probe:
    {kind: {"auc": ...}})."""
    m = f"{mag:g}x"
    auc = ({k: v[0] for k, v in task["auc"].items()} if "auc" in task
           else {k: v["auc"] for k, v in task["probe"].items()})
    return Against(name, auc["teacher_20x"], auc[f"teacher_{m}"], auc[f"teacher_{m}_upsampled"],
                   auc[f"maga_{m}_{mode}"])


def from_bench(record: dict, mode: str = "native") -> list[Against]:
    """Every (magnification, task) of a `maga bench maga` record, one magnification or `--mags`."""
    runs = record["mags"] if "mags" in record else {f"{record['config']['mag']:g}": record}
    return [from_probe(t, float(mag), mode, f"{task} at {mag}x")
            for mag, run in runs.items() for task, t in run["tasks"].items()
            if f"maga_{float(mag):g}x_{mode}" in t["auc"]]


def from_settings(auc: dict[str, float], name: str) -> Against | None:
    """From chapter 4's setting names (20x, 5x, 5x upsampled, 5x+MAGA); None when one is missing."""
    keys = ("20x", "5x", "5x upsampled", "5x+MAGA")
    if not all(k in auc for k in keys):
        return None
    return Against(name, *(float(auc[k]) for k in keys))

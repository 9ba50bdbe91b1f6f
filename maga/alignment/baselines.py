"""MAGA against both of its baselines, from any record that holds the four AUCs.

A MAGA student is stated against two baselines, never one: the plain teacher on the low-magnification view
at its size (the same compute as the native student), and the teacher on that view resized back to the 20x
size (the same pixels, at the 20x compute: upstream's no-MAGA setting). The recovered fraction of the gap
to 20x is (student - baseline) / (20x - baseline), stated only where that gap is clear (the baseline below the
20x AUC's CI): a tiny gap turns a small AUC difference into an absurd fraction ("-1000%"), so there the
difference itself is stated. MAGA beats a baseline only where the student's AUC is above it. One helper
serves the tile probes (`maga bench maga`, chapter 3) and the slide-level evidence run (chapter 4), so
every sentence that compares MAGA names both baselines."""

from __future__ import annotations

from dataclasses import dataclass

from maga.alignment.probe import MIN_GAP

BASELINES = {"plain": "the teacher at the low magnification's size",
             "upsampled": "the teacher on the same view upsampled to 20x size"}


def clear_gap(high: float, low: float, high_ci_low: float | None = None) -> bool:
    """Whether a baseline at AUC `low` is clearly below 20x (`high`, its CI's lower bound `high_ci_low`)."""
    return high - low >= MIN_GAP and (high_ci_low is None or low < high_ci_low)


@dataclass(frozen=True)
class Against:
    """One MAGA result: AUCs of the 20x teacher, both baselines and the student, and what follows."""
    name: str
    high: float
    plain: float
    upsampled: float
    student: float
    high_ci_low: float | None = None  # lower bound of the 20x AUC's 95% CI, where the record has one

    def recovered(self, baseline: str) -> float | None:
        """Fraction of the gap between `baseline` ("plain" or "upsampled") and 20x that the student
        recovers; None where there is no clear gap to recover: the baseline within MIN_GAP of 20x, or inside
        the 20x AUC's CI."""
        low = getattr(self, baseline)
        return (self.student - low) / (self.high - low) if clear_gap(self.high, low, self.high_ci_low) else None

    def difference(self, baseline: str) -> float:
        """Student AUC minus the baseline's."""
        return self.student - getattr(self, baseline)

    def beats(self, baseline: str) -> bool:
        return self.student > getattr(self, baseline)

    def not_beaten(self) -> list[str]:
        """The baselines whose AUC the student does not exceed."""
        return [b for b in BASELINES if not self.beats(b)]


def from_probe(task: dict, mag: float, mode: str = "native", name: str = "") -> Against:
    """From a task of `maga bench maga` (auc: {kind: [auc, lo, hi]}) or of a probe study (probe:
    {kind: {"auc": ...}})."""
    m = f"{mag:g}x"
    if "auc" in task:
        auc, high_lo = {k: v[0] for k, v in task["auc"].items()}, task["auc"]["teacher_20x"][1]
    else:
        auc, high_lo = {k: v["auc"] for k, v in task["probe"].items()}, task["probe"]["teacher_20x"]["ci_low"]
    return Against(name, auc["teacher_20x"], auc[f"teacher_{m}"], auc[f"teacher_{m}_upsampled"],
                   auc[f"maga_{m}_{mode}"], high_lo)


def from_bench(record: dict, mode: str = "native") -> list[Against]:
    """Every (magnification, task) of a `maga bench maga` record, one magnification or `--mags`."""
    runs = record["mags"] if "mags" in record else {f"{record['config']['mag']:g}": record}
    return [from_probe(t, float(mag), mode, f"{task} at {mag}x")
            for mag, run in runs.items() for task, t in run["tasks"].items()
            if f"maga_{float(mag):g}x_{mode}" in t["auc"]]


def from_settings(auc: dict[str, float], name: str, high_ci_low: float | None = None) -> Against | None:
    """From chapter 4's setting names (20x, 5x, 5x upsampled, 5x+MAGA) and the 20x CI's lower bound;
    None when one is missing."""
    keys = ("20x", "5x", "5x upsampled", "5x+MAGA")
    if not all(k in auc for k in keys):
        return None
    return Against(name, *(float(auc[k]) for k in keys), high_ci_low)

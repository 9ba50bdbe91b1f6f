"""Sentences of the chapters that state a figure, formatted from where the figure lives: the paper's from
reference/paper_results.yaml (`maga.records.paper_results`), ours from a run's record. Chapters show
them with `Markdown(...)` in a code cell, so no outcome is typed in prose (tests/book/test_prose_numbers)."""

from __future__ import annotations

from typing import Any

from maga.records import paper_results


def _g(x: float) -> str:
    return f"{x:g}"


def paper_storage_text() -> str:
    """Chapter 1's close: the paper's storage per slide at 20x and 5x, and its headline reduction."""
    p = paper_results()
    gb = p["tcga_nsclc_subtyping"]["storage_gb"]
    return (f"The paper reports {_g(gb['x20'])} GB per TCGA-NSCLC slide at 20x against {_g(gb['x5'])} GB at 5x "
            f"({gb['x20'] / gb['x5']:.1f}x), and up to {_g(p['headline']['storage_reduction_max'])}x less "
            "storage over its datasets (reference/paper_results.yaml).")


def g2l_claims_text() -> str:
    """Chapter 6: what the G2L seed claims, in its own figures."""
    g = paper_results()["g2l_distillation"]
    return (f"The seed's student has about {g['student_fraction_of_teacher_params']:.0%} of the teacher's "
            f"parameters and learns from about {g['slides_used']:,} slides of the target cancer; it runs "
            f"**{_g(g['inference_speedup'])}x faster** with **{_g(g['gpu_memory_reduction_percent'])}% less GPU "
            "memory** (reference/paper_results.yaml).")


def telepath_paper_text() -> str:
    """Chapter 8: the paper's frozen-section case, its times and AUCs."""
    f = paper_results()["frozen_section_telepathology"]
    gp, tr, inf, auc = f["gigapixels_per_slide"], f["transfer_s"], f["inference_s"], f["auc"]
    return (f"In the paper, at 20x a TCGA frozen section is about {_g(gp['x20'])} gigapixels and took {_g(tr['x20'])} s "
            f"to send at 200 Mbps and {_g(inf['x20'])} s to analyse; at 5x it is {_g(gp['x5'])} gigapixels, "
            f"{_g(tr['x5'])} s and {_g(inf['x5'])} s, and MAGA keeps the 5x diagnosis close to the 20x one (AUC "
            f"{_g(auc['maga_gltrans_5x'])} vs {_g(auc['x20'])}; {_g(auc['x5'])} without MAGA).")


def telepath_limits_text(result: dict[str, Any]) -> str:
    """Chapter 8's limits: the paper's AUCs that need cohorts absent here, and the hardware of this run
    (from the study's record: `result["machine"]`, `result["service"]`)."""
    auc = paper_results()["frozen_section_telepathology"]["auc"]
    mach, service = result["machine"], result["service"]
    hardware = f"{mach['cpu_count']} CPU cores" if mach["device"] == "cpu" else f"one {mach['device']} device"
    return "\n".join([
        f"- **Not reproducible here:** the paper's frozen-section AUCs ({_g(auc['x20'])} at 20x, {_g(auc['x5'])} "
        f"at 5x, {_g(auc['maga_gltrans_5x'])} with MAGA) need 2,167 labelled TCGA frozen sections; we hold one "
        "unlabelled copy. The prediction shown is the service's output on that slide, not a validated "
        "diagnosis: the aggregator was trained on the real-tile cohort (benign lung vs carcinoma), not on "
        "frozen sections.",
        f"- **Hardware:** the paper timed a GPU server; this run used {hardware} ({service['aggregator']} + "
        f"{service['encoder']}), so absolute inference times differ, and the 20x/5x ratio depends on how much "
        "of the time is per-patch compute."])

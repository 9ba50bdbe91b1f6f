"""`maga bench e2e-k`: chapter 07's K sweep as one JSON (results/e2e_k_sweep.json): per K and mode (end-to-end,
frozen encoder), the final training loss and the validation AUC, their Spearman correlation with K, the
validation cohort's size and class balance, and whether the AUCs are distinguishable from chance (a slide
cohort where every K sits at chance cannot show what K does). Imports stay light here: the module is
imported whenever the `maga` parser is built."""

from __future__ import annotations

import argparse
from typing import Any

from maga.bench.registry import benchmark, machine


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="demo", help="chapter 07's preset whose cohort and settings are used")
    p.add_argument("--ks", default=None, help="comma-separated K (default: the preset's)")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--n-patients", type=int, default=None, help="override the preset's cohort size")
    p.add_argument("--workdir", default=None, help="folder for the cohort and the runs (default: temporary)")


def chance_interval(labels: list[int], n: int = 2000, seed: int = 0) -> list[float]:
    """95% interval of the AUC that scores without information reach on these validation labels."""
    import numpy as np

    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga_core import stats

    rng, y = np.random.default_rng(seed), np.asarray(labels)
    aucs = [stats.auc(y, rng.random(len(y))) for _ in range(n)]
    return [round(float(q), 4) for q in np.quantile(aucs, [0.025, 0.975])]


@benchmark("e2e-k", "end-to-end vs frozen encoder: training loss and validation AUC against K", _args)
def run(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile
    from pathlib import Path

    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga import presets
    from maga.e2e import study
    from maga_core.config import to_jsonable

    P = presets.resolve("07_end_to_end", args.preset, epochs=args.epochs, n_patients=args.n_patients,
                        ks=[int(k) for k in args.ks.split(",")] if args.ks else None)
    cfg = study.study_config(P)
    with tempfile.TemporaryDirectory(prefix="maga-e2e-") as tmp:
        root = Path(args.workdir or tmp)
        train_bags, val_bags = study.load_split(cfg, root / "cohort", progress=not args.json)
        sweep, curves = study.k_sweep(cfg, train_bags, val_bags, out_dir=root / "k_sweep", progress=not args.json)
    labels = [b.label for b in val_bags]
    chance = chance_interval(labels)
    runs = sweep.round(4).to_dict("records")
    for r in runs:  # an AUC inside the chance interval says nothing about K
        r["val_auc_within_chance_95"] = bool(chance[0] <= r["val_auc"] <= chance[1])
    return {"machine": machine(), "preset": args.preset, "config": to_jsonable(cfg),
            "n_train_slides": len(train_bags), "n_val_slides": len(val_bags),
            "val_class_counts": {str(c): labels.count(c) for c in sorted(set(labels))},
            "chance_auc_95": chance, "runs": runs,
            "curves": curves.round(4).to_dict("records"), "summary": study.summarise(sweep)}

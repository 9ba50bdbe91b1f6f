"""`maga bench maga`: train both MAGA students with the `maga align` defaults on the shared training tiles,
evaluate on the held-out splits (maga.alignment.probe) and print one JSON: probe AUCs with case/cluster bootstrap 95%
CIs for the teacher at 20x, at 5x, at 5x upsampled and the two students, the recovered fraction of the
20x-vs-5x gap, cosine similarity to the 20x features, and the training seconds. Imports stay light here:
the module is imported whenever the `maga` parser is built."""

from __future__ import annotations

import argparse
from typing import Any

from maga.bench.registry import benchmark, machine


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", default="efficientnet_lite0")
    p.add_argument("--epochs", type=int, default=None, help="epochs of both students (default: maga align's)")
    p.add_argument("--max-train-tiles", type=int, default=None, help="train on a seeded subset (quick runs)")
    p.add_argument("--workdir", default=None, help="folder for results.json, config.json, features.npz and the "
                                                   "students, reused by later runs (default: a temporary folder)")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--modes", default="native,upsample", help="students to train: native, upsample or both")
    p.add_argument("--augment", help="ablation: override maga align's augmentation (none, flips, dihedral)")
    p.add_argument("--taps", help="ablation: comma-separated taps (default: the encoder's)")
    p.add_argument("--tap-weights", help="ablation: comma-separated weights of --taps")
    p.add_argument("--pooled-weight", type=float, help="ablation: weight of the pooled feature")
    p.add_argument("--lr-decay", type=float, help="ablation: per-epoch learning-rate factor")


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The bench's view of a probe study: per task, AUC [CI] per kind, recovered fraction, cosines."""
    out = {}
    for task, t in results["tasks"].items():
        out[task] = {
            "n_test": t["n_test"], "n_cases": t["n_cases"], "px": t["px"],
            "auc": {k: [round(v["auc"], 4), round(v["ci_low"], 4), round(v["ci_high"], 4)]
                    for k, v in t["probe"].items()},
            "recovered_fraction": {k: [round(v["value"], 3), round(v["ci_low"], 3), round(v["ci_high"], 3)]
                                   for k, v in t["recovered"].items()},
            "cosine_to_20x": {k: round(v["value"], 4) for k, v in t["cosine_to_20x"].items()},
            "cosine_centered_to_20x": {k: round(v["value"], 4) for k, v in t["cosine_centered_to_20x"].items()},
        }
    return out


@benchmark("maga", "train MAGA students with the defaults; held-out AUCs, recovered gap, cosine", _args)
def run(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile
    from pathlib import Path

    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga.alignment.probe import ProbeConfig, run_probe_study
    from maga_core.align.train import AlignConfig

    epochs = args.epochs or AlignConfig().epochs
    align = {k: v for k, v in {
        "augment": args.augment, "pooled_weight": args.pooled_weight, "lr_decay": args.lr_decay,
        "taps": args.taps.split(",") if args.taps else None,
        "tap_weights": [float(w) for w in args.tap_weights.split(",")] if args.tap_weights else None}.items()
        if v is not None}
    cfg = ProbeConfig(teacher=args.teacher, epochs_native=epochs, epochs_upsample=epochs,
                      max_train_tiles=args.max_train_tiles, n_boot=args.n_boot,
                      modes=[m.strip() for m in args.modes.split(",") if m.strip()], align=align)
    with tempfile.TemporaryDirectory(prefix="maga-bench-") as tmp:
        out = Path(args.workdir or tmp)
        results = run_probe_study(cfg, out, out_dir=out, progress=not args.json)
    return {"machine": machine(), "config": results["config"],
            "train_seconds": {m: s["train_seconds"] for m, s in results["students"].items()},
            "align_config": {m: s["align_config"] for m, s in results["students"].items()},
            "tasks": summarize(results), "seconds": results["seconds"]}


def _select_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", default="efficientnet_lite0")
    p.add_argument("--candidates", default=None, help="comma-separated names of maga.select.CANDIDATES "
                                                      "(default: all)")
    p.add_argument("--max-train-tiles", type=int, default=None, help="train on a seeded subset (quick runs)")
    p.add_argument("--workdir", default=None, help="folder for the students and per-fold results, reused by "
                                                   "later runs (default: a temporary folder)")


@benchmark("maga-select", "choose maga align's settings on validation folds of the train tiles", _select_args)
def select(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile
    from pathlib import Path

    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga_core.errors import MagaError
    from maga.alignment.select import CANDIDATES, run_selection

    names = args.candidates.split(",") if args.candidates else list(CANDIDATES)
    unknown = set(names) - set(CANDIDATES)
    if unknown:
        raise MagaError(f"unknown candidates {sorted(unknown)} (has {list(CANDIDATES)})", "--candidates")
    with tempfile.TemporaryDirectory(prefix="maga-select-") as tmp:
        result = run_selection(Path(args.workdir or tmp), {n: CANDIDATES[n] for n in names},
                               progress=not args.json, teacher=args.teacher, max_train_tiles=args.max_train_tiles)
    return {"machine": machine(), **result}

"""`maga mil`: patient-level k-fold cross-validation of one MIL aggregator on per-slide feature files."""

from __future__ import annotations

import json

from maga_core.device import add_arguments as add_device_arguments


def register(sub) -> None:
    p = sub.add_parser("mil", help="cross-validate a MIL aggregator (gltrans, transmil, clam_sb, clam_mb, abmil)")
    p.add_argument("--model", default="gltrans", help="aggregator name (default gltrans)")
    p.add_argument("--features", required=True, help="folder of <slide>.h5 feature files")
    p.add_argument("--labels", help="CSV with slide,label[,patient][,fold]")
    p.add_argument("--cohort", help="use an upstream cohort's labels and 10 folds instead, NAME[:TASK] "
                   "(e.g. cohort_tcga_nsclc, cohort_tcga_glioma:idh, cohort_camelyon16)")
    p.add_argument("--splits", help="CSV fold,slide,part (train/val/test) overriding --folds")
    p.add_argument("--folds", type=int, default=10, help="number of folds, >= 3 (default 10: 80/10/10)")
    p.add_argument("--out", required=True, help="output folder (resumes finished folds)")
    p.add_argument("--seed", type=int, default=2023, help="seed of the fold assignment")
    p.add_argument("--epochs", type=int, help="maximum epochs (model default otherwise)")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs")
    p.add_argument("--min-epochs", type=int, help="no early stop before this epoch")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--train-seed", type=int, help="seed of initialisation and shuffling")
    p.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples for CIs (default 500)")
    p.add_argument("--grad-accum", type=int, help="forward passes per optimiser step (gradient accumulation; "
                   "model default)")
    p.add_argument("--bag-batch", type=int, help="bags per forward pass, of one size class, cut to the smallest "
                   "(default 1; for GPUs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga_core.device import resolve
    from maga_core.errors import MagaError
    from maga_core.mil.cv import CVConfig, run_cv

    labels, splits = args.labels, args.splits or ""
    if args.cohort:
        # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
        from maga.cohorts import load_upstream

        name, _, task = args.cohort.partition(":")
        cohort = load_upstream(name, task or None)
        labels_path, splits_path = cohort.write(Path(args.out) / "cohort")
        labels, splits = str(labels_path), splits or str(splits_path)
        for note in cohort.notes:
            print(f"maga mil: {name}: {note}")
    if not labels:
        raise MagaError("give --labels CSV or --cohort NAME")
    overrides = {"max_epochs": args.epochs, "patience": args.patience, "min_epochs": args.min_epochs,
                 "lr": args.lr, "seed": args.train_seed, "grad_accum": args.grad_accum, "bag_batch": args.bag_batch}
    for flag, value in (("--grad-accum", args.grad_accum), ("--bag-batch", args.bag_batch)):
        if value is not None and value < 1:
            raise MagaError(f"{flag} must be at least 1, got {value}")
    rt = resolve(args.device, args.precision)
    overrides.update(device=rt.device, precision=rt.precision)
    cfg = CVConfig.create(args.model, args.features, labels, args.out, train_overrides=overrides,
                          folds=args.folds, seed=args.seed, splits=splits, bootstrap=args.bootstrap)
    summary = run_cv(cfg, progress=not args.quiet)
    print(json.dumps({"out": str(Path(args.out).resolve()), "model": args.model,
                      "pooled": summary["pooled"], "mean_over_folds": summary["mean_over_folds"]}, indent=2))
    return 0

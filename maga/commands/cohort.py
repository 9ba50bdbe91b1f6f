"""`maga cohort run`: an upstream cohort's slides -> features (20x, 5x+MAGA) -> 10-fold CV of every
aggregator -> the reproduction table (maga.cohort_pipeline)."""

from __future__ import annotations

import json

from maga_core.device import add_arguments as add_device_arguments


def register(sub) -> None:
    p = sub.add_parser("cohort", help="reproduce the paper's MIL tables from a cohort's slides")
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    r = csub.add_parser("run", help="tissue, aligned grid, features at 20x and 5x+MAGA, CV of five aggregators",
                        description="Resumable; slides that fail are skipped and reported (exit 1).")
    r.add_argument("--cohort", default="cohort_tcga_nsclc", help="upstream cohort NAME[:TASK] (default %(default)s)")
    r.add_argument("--slides", required=True, help="folder of the cohort's slides, named by case id (TCGA-05-4244...)")
    r.add_argument("--out", required=True, help="output folder (resumes what it holds)")
    r.add_argument("--upstream", default="", help="folder with the upstream label/ and nfold/ files to use instead")
    r.add_argument("--encoder", default="efficientnet_lite0", help="teacher encoder (default %(default)s)")
    r.add_argument("--student", default="", help="MAGA student checkpoint (default: the shared 5x native student)")
    r.add_argument("--settings", default="20x,5x_maga",
                   help="comma-separated of 20x, 5x, 5x_maga (default %(default)s)")
    r.add_argument("--models", default="gltrans,transmil,clam_sb,clam_mb,abmil", help="aggregators (default: all five)")
    r.add_argument("--epochs", type=int, help="maximum training epochs per fold (default: each model's)")
    r.add_argument("--grad-accum", type=int, help="forward passes per optimiser step (default: each model's)")
    r.add_argument("--bag-batch", type=int, help="bags per forward pass, of one size class (default 1; for GPUs)")
    r.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples for CIs (default 500)")
    r.add_argument("--batch-size", type=int, help="patches per extraction batch (default: by patch size)")
    r.add_argument("--workers", type=int, help="reader processes (default: half the cores)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_arguments(r)
    r.set_defaults(func=run)


def run(args) -> int:
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga.cohort_pipeline import CohortRunConfig, run_cohort

    split = lambda text: [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
    cfg = CohortRunConfig(cohort=args.cohort, slides=args.slides, out=args.out, upstream=args.upstream,
                          encoder=args.encoder, student=args.student, settings=split(args.settings),
                          models=split(args.models), epochs=args.epochs, bootstrap=args.bootstrap,
                          batch_size=args.batch_size, grad_accum=args.grad_accum, bag_batch=args.bag_batch,
                          device=args.device,
                          precision=args.precision)
    if args.workers is not None:
        cfg.num_workers = args.workers
    report = run_cohort(cfg, progress=not args.quiet)
    print(json.dumps({k: report[k] for k in ("cohort", "runtime", "slides", "cases", "folds", "ratios", "table")},
                     indent=2))
    for cause in report["slides"]["failed"].values():
        print(f"failed: {cause}")
    return 1 if report["slides"]["failed"] else 0

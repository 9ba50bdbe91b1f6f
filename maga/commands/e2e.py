"""`maga e2e`: end-to-end training of a registry encoder and aggregator on K tiles per slide.

One process:        maga e2e --encoder efficientnet_lite0 --aggregator abmil --k 32 --slides s/*.tiff \\
                        --labels labels.csv --val-fold 0 --out runs/e2e
1 + N processes:    torchrun --nproc-per-node 3 -m maga.cli e2e ... (rank 0 aggregator, 1..N encoders)
Memory per tile:    maga e2e --encoder efficientnet_lite0 --measure-memory   (JSON, 20x 256 px vs 5x 64 px)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pandas as pd

from maga_core.device import add_arguments as add_device_arguments
from maga_core.errors import MagaError


def register(subparsers) -> None:
    p = subparsers.add_parser("e2e", help="end-to-end slide training (encoder + aggregator), torchrun-ready",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default="efficientnet_lite0", help="registry name or maga:<student checkpoint>")
    p.add_argument("--aggregator", default="abmil", help="registry MIL model (abmil, gltrans, transmil, clam_sb, ...)")
    p.add_argument("--k", type=int, default=32, help="tiles sampled per slide and step")
    p.add_argument("--slides", nargs="+", type=Path, help="slide files (any format maga_core.slides reads)")
    p.add_argument("--labels", type=Path, help="CSV with columns slide (file name or stem), label (int), "
                   "optional fold")
    p.add_argument("--val-fold", type=int, nargs="*", default=[], help="folds of --labels held out for validation")
    p.add_argument("--mag", type=float, default=5.0, help="magnification tiles are read at (5 -> 64 px)")
    p.add_argument("--px", type=int, default=None, help="tile size in px (default: the 128 um square at --mag)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--lr-encoder", type=float, default=1e-5)
    p.add_argument("--lr-aggregator", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amp", action="store_true", help="reduced precision on any device: with --precision auto, "
                   "bfloat16 on CPU, float16 on CUDA")
    p.add_argument("--checkpoint", action="store_true", help="activation checkpointing of the encoder")
    p.add_argument("--chunk", type=int, default=16, help="tiles per checkpointed segment")
    p.add_argument("--freeze-encoder", action="store_true", help="frozen-encoder baseline")
    p.add_argument("--bn", choices=("frozen", "train"), default="frozen")
    p.add_argument("--out", type=Path, help="output folder (config.json, metrics.json, model.pt)")
    p.add_argument("--measure-memory", action="store_true",
                   help="print peak training memory per tile at 20x/256 px and 5x/64 px as JSON, then exit")
    add_device_arguments(p)
    p.set_defaults(func=run)


def _labels(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise MagaError("labels file not found", path)
    df = pd.read_csv(path)
    missing = {"slide", "label"} - set(df.columns)
    if missing:
        raise MagaError(f"labels CSV lacks column(s) {', '.join(sorted(missing))}", path)
    return df


def _bags(args: argparse.Namespace):
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga.e2e.data import slide_bag

    if not args.slides or args.labels is None:
        raise MagaError("training needs --slides and --labels")
    table = _labels(args.labels)
    by_name = {str(s): row for s, row in zip(table["slide"], table.to_dict("records"))}
    train, val = [], []
    for path in args.slides:
        if not path.is_file():
            raise MagaError("slide not found", path)
        row = by_name.get(path.name) or by_name.get(path.stem)
        if row is None:
            raise MagaError(f"no label for this slide in {args.labels}", path)
        bag = slide_bag(path.stem, int(row["label"]), str(path), args.mag)
        (val if args.val_fold and int(row.get("fold", -1)) in args.val_fold else train).append(bag)
    if not train:
        raise MagaError("every slide is in a validation fold: nothing to train on", args.labels)
    return train, val


def run(args: argparse.Namespace) -> int:
    if args.measure_memory:
        # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
        from maga.e2e.memory import MemoryConfig, per_tile

        cfg = MemoryConfig(encoder=args.encoder, amp=args.amp, checkpoint=args.checkpoint,
                           device="cuda" if _cuda() else "cpu")
        print(json.dumps(per_tile(cfg, progress=False), indent=2))
        return 0
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga.e2e.data import BagDataset
    from maga.e2e.train import E2EConfig, train

    if args.out is None:
        raise MagaError("--out is required for training")
    train_bags, val_bags = _bags(args)
    n_classes = max(b.label for b in train_bags + val_bags) + 1
    cfg = E2EConfig(encoder=args.encoder, aggregator=args.aggregator, n_classes=max(n_classes, 2), k=args.k,
                    mag=args.mag, px=args.px, epochs=args.epochs, max_steps=args.max_steps,
                    lr_encoder=args.lr_encoder, lr_aggregator=args.lr_aggregator, seed=args.seed, amp=args.amp,
                    checkpoint=args.checkpoint, chunk=args.chunk, freeze_encoder=args.freeze_encoder, bn=args.bn,
                    device=args.device, precision=args.precision)
    tr = BagDataset(train_bags, cfg.k, cfg.mag, cfg.px, cfg.seed)
    va = BagDataset(val_bags, cfg.k, cfg.mag, cfg.px, cfg.seed + 1) if val_bags else None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun: the 1 + N process scheme
        # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
        from maga.e2e.distributed import run_from_env

        result = run_from_env(cfg, tr, va, out_dir=args.out)
        if result is None:
            return 0
    else:
        result = train(cfg, tr, va, out_dir=args.out)
    print(json.dumps({"out": str(args.out), **result.summary()}, indent=2))
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()

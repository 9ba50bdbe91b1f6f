"""`maga align`: train (or resume) a MAGA student for a teacher at a lower magnification."""

from __future__ import annotations

import json

from maga_core.device import add_arguments as add_device_arguments


def register(sub) -> None:
    p = sub.add_parser("align", help="train a MAGA magnification-aligned student (resumes an interrupted run)")
    p.add_argument("--teacher", default="efficientnet_lite0", help="registered encoder name (see encoders.table())")
    p.add_argument("--teacher-weights", default=None, help="local weight file (default: the registry's source)")
    p.add_argument("--mag", type=float, default=5.0, help="the student's magnification (5 or 10; teacher at 20)")
    p.add_argument("--mode", choices=("native", "upsample"), default="native",
                   help="native: student runs on the small patch; upsample: patch resized back to teacher size")
    p.add_argument("--tiles", required=True, nargs="+",
                   help="folders of 20x tiles (recursive) or tile datasets, e.g. uni_tcga_luadlusc:train")
    p.add_argument("--out", required=True, help="checkpoint path (rewritten after every epoch)")
    # Training settings default to None here so that AlignConfig alone holds their values (maga.alignment.select).
    p.add_argument("--epochs", type=int, default=None, help="default: AlignConfig's (30)")
    p.add_argument("--batch-size", type=int, default=None, help="default: AlignConfig's (32)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="default: AlignConfig's (1e-4, x0.95 per epoch)")
    p.add_argument("--max-tiles", type=int, default=None, help="train on a seeded subset of this many tiles")
    p.add_argument("--mpp", type=float, default=None,
                   help="the tiles' microns per pixel (0.5 for 20x); default: the tile datasets' manifests")
    p.add_argument("--augment", choices=("none", "flips", "dihedral"), default=None,
                   help="flips: each tile also in its three mirror images (teacher targets for each); "
                        "dihedral: also transposed (rotations); default: AlignConfig's")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    add_device_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga_core.align.train import AlignConfig, history_paths, train

    chosen = {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
                                 "lr": args.lr, "augment": args.augment}.items() if v is not None}
    cfg = AlignConfig(
        teacher=args.teacher, teacher_weights=args.teacher_weights, mag=args.mag, mode=args.mode,
        tiles=list(args.tiles), max_tiles=args.max_tiles, tile_mpp=args.mpp, num_workers=args.workers,
        device=args.device, precision=args.precision, **chosen)
    out = train(cfg, args.out)
    history = json.loads(history_paths(out)[1].read_text())
    print(json.dumps({"checkpoint": str(out), "epochs": len(history), "last": history[-1]}, indent=2))
    return 0

"""`maga distill`: G2L distillation of a large encoder into a small one on task-specific tiles."""

from __future__ import annotations

import argparse
from pathlib import Path

from maga_core.device import add_arguments as add_device_arguments


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "distill", help="distil a teacher encoder into a small student on task-specific tiles",
        description="Train a small student (plus a linear projection to the teacher's dimension) to reproduce a "
                    "frozen teacher's tile embeddings under stain/colour/blur/JPEG/scale augmentation. Resumes from "
                    "<out>.work/ if cut; the checkpoint loads as encoders.build('distilled', weights=OUT).")
    p.add_argument("--teacher", default="efficientnet_lite2", help="teacher encoder name (default: %(default)s)")
    p.add_argument("--teacher-weights", help="teacher weights file (default: the registry's source)")
    p.add_argument("--student", default="mobilenetv2_050", help="student architecture (default: %(default)s)")
    p.add_argument("--tiles", nargs="+", required=True, metavar="DATASET_OR_FOLDER",
                   help="tile datasets (their training split only, e.g. lc25000_lung_224_dedup uni_tcga_luadlusc) "
                        "and/or folders of tile images")
    p.add_argument("--out", required=True, help="student checkpoint to write (.pt)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--loss", default="cosine_smooth_l1", help="cosine_smooth_l1 (default), cosine, smooth_l1, l1, l2")
    p.add_argument("--teacher-px", type=int, default=0, help="teacher input size (default: its registry size)")
    p.add_argument("--input-px", type=int, default=0, help="student input size (default: the teacher's)")
    p.add_argument("--teacher-view", choices=("clean", "same"), default="clean",
                   help="teacher sees the clean tile once (cached) or the same geometric view each step")
    p.add_argument("--max-tiles", type=int, default=0, help="use a seeded subset of this many tiles (0: all)")
    p.add_argument("--no-augment", action="store_true", help="no augmentation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_device_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga_core.data import manifests
    from maga.distill.augment import AugmentConfig
    from maga.distill.train import DistillConfig, distill, work_dir_for

    known = set(manifests.names())
    datasets = [t for t in args.tiles if t in known]
    folders = [t for t in args.tiles if t not in known]
    cfg = DistillConfig(
        teacher=args.teacher, teacher_weights=args.teacher_weights, student=args.student, datasets=datasets,
        tile_dirs=folders, max_tiles=args.max_tiles, teacher_px=args.teacher_px, input_px=args.input_px,
        loss=args.loss, teacher_view=args.teacher_view, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, threads=args.threads, device=args.device, precision=args.precision,
        augment=AugmentConfig(enabled=not args.no_augment))
    result = distill(cfg, Path(args.out), progress=not args.no_progress)
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    print(f"{result.checkpoint}: {result.n_tiles} tiles, {len(result.history)} epochs, "
          f"loss {first:.4f} -> {last:.4f}; config and resume state in {work_dir_for(result.checkpoint)}")
    for item in result.skipped:
        print(f"skipped: {item}")
    return 1 if result.skipped else 0

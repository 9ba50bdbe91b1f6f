"""`maga extract`: features of a slide, a folder of slides or a folder of tiles into HDF5 files."""

from __future__ import annotations

import argparse
import logging
import sys

from maga_core.data.features import INPUT_KINDS
from maga_core.device import add_arguments as add_device_arguments


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "extract", help="extract patch features into HDF5 (one file per slide; one per tile folder)",
        description="Extract features with an encoder at a magnification, or a MAGA student at its own. "
                    "A folder batch resumes (finished slides are skipped) and skips bad slides (listed at the "
                    "end, exit 1). Under torchrun each rank takes its share of the slides.")
    p.add_argument("--encoder", required=True, help="encoder name (see encoders.table()), e.g. efficientnet_lite0")
    p.add_argument("--student", help="MAGA student checkpoint (its magnification and input pipeline are used)")
    p.add_argument("--mag", type=float, help="magnification, e.g. 20 or 5 (patches of 256 / 64 px)")
    p.add_argument("--input", required=True, help="a slide, a folder of slides, or a folder of tile images")
    p.add_argument("--out", required=True, help="output folder (or a .h5 file for one slide / one tile folder)")
    p.add_argument("--mpp", type=float, help="slides: override the level-0 MPP; tiles: their MPP (required)")
    p.add_argument("--kind", choices=INPUT_KINDS, default="auto", help="what --input holds (default: auto)")
    p.add_argument("--weights", help="encoder weights file (or 'random'); default: the encoder's own source")
    p.add_argument("--batch-size", type=int, help="patches per batch (default: 4 at 256 px on CPU, 256 on CUDA, "
                   "more for smaller patches)")
    p.add_argument("--workers", type=int, help="slides: decode threads (default: one with the network on CPU, every "
                   "core on an accelerator); tile folders: reader processes (default: every core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_device_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga.extract_job import ExtractConfig, extract_batch

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cfg = ExtractConfig(encoder=args.encoder, input=args.input, out=args.out, mag=args.mag,
                        student=args.student, weights=args.weights, mpp=args.mpp, input_kind=args.kind,
                        batch_size=args.batch_size, progress=not args.no_progress,
                        device=args.device, precision=args.precision)
    if args.workers is not None:
        cfg.num_workers = args.workers
    report = extract_batch(cfg)
    print(report.summary())
    return 0 if report.ok else 1

"""`maga tile`: tissue mask, aligned multi-magnification grid (coords HDF5), sample patches, summary."""

from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("tile", help="tile a slide (or every slide in a folder) at aligned magnifications")
    p.add_argument("slide", help="slide file, or a folder of slides (one output subfolder each)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mags", default="20,10,5", help="magnifications (default 20,10,5 = 256/128/64 px)")
    p.add_argument("--save-patches", type=int, default=0, metavar="N",
                   help="also save the first N patches of each magnification as OUT/<mag>x/<i>.png")
    p.add_argument("--mpp", type=float, default=None, help="level-0 microns per pixel when the slide lacks it")
    p.add_argument("--min-tissue", type=float, default=0.5, help="tissue share a patch square needs")
    p.add_argument("--tissue-method", choices=["otsu", "fixed"], default="otsu")
    p.add_argument("--overwrite", action="store_true", help="redo a finished output")
    p.set_defaults(func=run)


def run(args) -> int:
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga_core.errors import MagaError
    from maga_core.slides.magnification import parse_mags
    from maga.slide_tools.tiling import TileConfig, tile_folder, tile_slide
    from maga_core.slides.tissue import TissueConfig

    if args.save_patches < 0:
        raise MagaError(f"--save-patches must be >= 0, got {args.save_patches}")
    if not 0 <= args.min_tissue <= 1:
        raise MagaError(f"--min-tissue must be in [0, 1], got {args.min_tissue}")
    cfg = TileConfig(mags=parse_mags(args.mags), save_patches=args.save_patches,
                     min_tissue=args.min_tissue, mpp=args.mpp, tissue=TissueConfig(method=args.tissue_method))
    if Path(args.slide).is_dir():
        report = tile_folder(args.slide, args.out, cfg, overwrite=args.overwrite)
        print(json.dumps(report, indent=2))
        for name, err in report["failed"].items():
            print(f"maga tile: failed: {err}")
        return 1 if report["failed"] else 0
    summary = tile_slide(args.slide, args.out, cfg, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0

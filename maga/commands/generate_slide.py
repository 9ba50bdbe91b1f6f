"""`maga generate-slide`: a large seeded test slide mosaicked from real H&E tiles (for benchmarks)."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("generate-slide", help="write a large seeded test slide from real tiles (pyramidal TIFF)")
    p.add_argument("out", help="output .tif path (a <out>.json with the spec is written beside it)")
    p.add_argument("--width", type=int, default=25000)
    p.add_argument("--height", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mpp", type=float, default=0.5)
    p.add_argument("--tissue-fraction", type=float, default=0.45)
    p.add_argument("--tumour-fraction", type=float, default=0.3)
    p.add_argument("--tile-source", default="lc25000_lung_224_dedup",
                   help="tile dataset name (data manifests) or a folder of image tiles")
    p.set_defaults(func=run)


def run(args) -> int:
    import time

    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga.slide_tools.generator import generate_slide

    t0 = time.perf_counter()
    out = generate_slide(args.out, args.width, args.height, seed=args.seed, mpp=args.mpp,
                         tissue_fraction=args.tissue_fraction, tumour_fraction=args.tumour_fraction,
                         tile_source=args.tile_source, progress=True)
    print(json.dumps({"path": str(out), "bytes": out.stat().st_size, "pixels": args.width * args.height,
                      "seconds": round(time.perf_counter() - t0, 2)}, indent=2))
    return 0

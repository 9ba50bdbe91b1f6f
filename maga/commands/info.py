"""`maga info`: a slide's format, dimensions, levels, MPP and objective power."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("info", help="show a slide's format, size, pyramid levels, MPP and magnification")
    p.add_argument("slide")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--mpp", type=float, default=None, help="level-0 microns per pixel when the slide lacks it")
    p.set_defaults(func=run)


def run(args) -> int:
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga_core.slides import open_slide

    with open_slide(args.slide, mpp=args.mpp) as reader:
        info = reader.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['path']}\n  format      {info['format']}")
    print(f"  dimensions  {info['dimensions'][0]} x {info['dimensions'][1]} px")
    print(f"  mpp         {info['mpp']:.4g} um/px ({info['mpp_source']})")
    print(f"  objective   {info['objective_power']:g}x ({info['objective_source']}); "
          f"effective {info['magnification']}")
    for i, ((w, h), ds) in enumerate(zip(info["level_dimensions"], info["level_downsamples"])):
        print(f"  level {i}     {w} x {h} px, downsample {ds:g}")
    return 0

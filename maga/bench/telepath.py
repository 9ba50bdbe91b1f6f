"""`maga bench telepath`: the telepathology timing study from the command line (JSON)."""

from __future__ import annotations

import argparse
from typing import Any

from maga.bench.registry import benchmark


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--service", help="service model folder (default: build the demo one under runs/)")
    p.add_argument("--preset", default="demo", help="preset whose MAGA student and aggregator to use")
    p.add_argument("--bandwidth-mbps", type=float, default=200.0)
    p.add_argument("--mags", default="20,10,5")
    p.add_argument("--generated-size", default="25000x20000",
                   help="WxH of the generated TCGA-size slide at 20x ('0' to skip it)")


@benchmark("telepath", "frozen-section telepathology: bytes, transfer at a bandwidth cap and inference "
           "per magnification through the real loopback service", _args)
def run(args: argparse.Namespace) -> dict[str, Any]:
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga import presets
    from maga.bench.registry import machine
    from maga_core.slides import parse_mags
    from maga.telepath.study import TelepathStudyConfig, run_study
    from maga.telepath.service_model import ensure_service_model

    w, h = (0, 0) if args.generated_size in ("0", "") else map(int, args.generated_size.lower().split("x"))
    service = args.service or str(ensure_service_model(args.preset, presets.runs_dir(args.preset)))
    cfg = TelepathStudyConfig(service_dir=service, mags=parse_mags(args.mags), bandwidth_mbps=args.bandwidth_mbps,
                              generated_width=w, generated_height=h)
    return {"machine": machine(), **run_study(cfg)}

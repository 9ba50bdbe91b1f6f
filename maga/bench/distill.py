"""`maga bench distill`: parameters, FLOPs per tile, tiles/s and peak memory of a teacher vs a student at
the same batch size, each in a fresh process (see maga.distill.measure). Imports stay light here:
the module is imported whenever the `maga` parser is built."""

from __future__ import annotations

import argparse
from typing import Any

from maga.bench.registry import benchmark, machine


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", default="efficientnet_lite2")
    p.add_argument("--student", default="mobilenetv2_050", help="an architecture name, or 'distilled'")
    p.add_argument("--student-weights", help="student checkpoint (required for 'distilled')")
    p.add_argument("--teacher-px", type=int, default=0, help="teacher input size (default: its registry size)")
    p.add_argument("--student-px", type=int, default=0, help="student input size (default: the teacher's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="alternating runs per model; medians reported")
    p.add_argument("--threads", type=int, default=1)


@benchmark("distill", "teacher vs distilled student: params, FLOPs/tile, tiles/s, peak memory", _args)
def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga_core import encoders
    from maga.distill.measure import count_params, flops_per_tile, measure_run
    from maga_core.encoders import build

    tpx = args.teacher_px or encoders.spec(args.teacher).input_px
    spx = args.student_px or tpx
    models = {"teacher": (args.teacher, None, tpx), "student": (args.student, args.student_weights, spx)}
    out: dict[str, Any] = {"machine": machine(), "batch_size": args.batch_size}
    runs: dict[str, list] = {k: [] for k in models}
    for _ in range(args.repeats):
        for k, (name, weights, px) in models.items():
            runs[k].append(measure_run(name, weights, batch_size=args.batch_size, input_px=px,
                                       batches=args.batches, threads=args.threads))
    for k, (name, weights, px) in models.items():
        enc = build(name, weights)
        rs = runs[k]
        out[k] = {"encoder": name, "input_px": px, "params": count_params(enc),
                  "gflops_per_tile": flops_per_tile(enc, px) / 1e9,
                  "tiles_per_s": float(np.median([r.tiles_per_s for r in rs])),
                  "tiles_per_s_runs": [r.tiles_per_s for r in rs],
                  "rss_rise_mb": float(np.median([r.rss_rise_mb for r in rs])),
                  "cuda_peak_mb": rs[0].cuda_peak_mb, "device": rs[0].device}
    t, s = out["teacher"], out["student"]
    out["ratios"] = {"param_ratio": s["params"] / t["params"], "speedup": s["tiles_per_s"] / t["tiles_per_s"],
                     "memory_reduction": 1 - s["rss_rise_mb"] / t["rss_rise_mb"],
                     "flop_ratio": s["gflops_per_tile"] / t["gflops_per_tile"]}
    out["seed_claims"] = {"param_ratio": 0.15, "speedup": 3.2, "memory_reduction": 0.76}
    return out

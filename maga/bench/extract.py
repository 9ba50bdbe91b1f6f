"""`maga bench extract`: on one generated large slide, tiles/s of the network alone vs the whole
extraction pipeline, and the per-slide time at 20x (256 px) vs 5x (64 px, a native MAGA student's input)
for each encoder. Speed and memory are measured on this machine and printed as JSON, never asserted in tests.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from maga.bench.clam_loop import ClamStylePatches, clam_loop_settings
from maga.bench.registry import benchmark, machine

# ---------------------------------------------------------------------------------------- bench extract

PIPELINE_TARGET = 0.9  # pipeline throughput / network-only throughput
RATIO_TARGET = 14.0  # per-slide time 20x / 5x (FLOP ratio 16; the paper reports 10.7)
BASELINE_TARGET = 1.3  # our 20x tiles/s over the CLAM-style baseline's
RSS_TARGET_MB = 1024.0


@dataclass
class ExtractBenchConfig:
    size: int = 8192  # side of the generated slide, level-0 px at 0.5 um/px (8192: ~370 tissue patches)
    seed: int = 0
    slide: str | None = None  # an existing slide instead of a generated one
    encoders: list[str] = field(default_factory=lambda: ["efficientnet_lite0", "resnet50_trunc"])
    high_mag: float = 20.0
    low_mag: float = 5.0
    batch_size: int | None = None  # None: extract's default for the device (maga.extract.auto_batch_size)
    num_workers: int | None = None  # None: extract's defaults (slide_decode_threads; the baseline: every core)
    threads: int | None = None  # torch intra-op threads in the timed process (None: torch's default)
    repeats: int = 1  # each timing is repeated and the best kept (the CPU may be shared)
    channels_last: bool = True
    baseline: bool = False  # also time the CLAM-style loop (ResNet50 to layer3, 224 px; clam_loop_settings)
    ideas: bool = False  # also time variants of our pipeline (first encoder) one change at a time
    slides: int = 1  # generated slides (seeds seed..); with 2 or more the first is timed apart (warm-up)
    device: str = "cpu"  # where both pipelines run (auto | cpu | cuda[:N]); precision: the device's auto


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _network_only(model, patches, n_tiles: int) -> float:
    """Seconds the network alone takes for `n_tiles` tiles: batches of preprocessed real patches
    already on the device, the same batch size and threads as the pipeline (warm-up batches first)."""
    import torch

    x = model.preprocess(model.runtime.to(torch.from_numpy(patches)))
    for _ in range(2):
        model(x)
    _sync(model.runtime.device)
    t0 = time.perf_counter()
    for start in range(0, n_tiles, len(x)):
        model(x if model.runtime.cuda else x[: min(len(x), n_tiles - start)])  # CUDA: fixed shapes, as extract
    _sync(model.runtime.device)
    return time.perf_counter() - t0


def _steady(seconds: list[float], patches: list[int]) -> tuple[float, float]:
    """(seconds, patches) per slide: the mean over slides 2..N (the first pays the warm-up), or the one."""
    rest = slice(1, None) if len(seconds) > 1 else slice(None)
    s, n = seconds[rest], patches[rest]
    return sum(s) / len(s), sum(n) / len(n)


def _build(name: str) -> tuple[Any, str, bool]:
    """(encoder, weights description, random_init). Speed does not depend on the weights, so an encoder
    whose weights are not on this machine is timed with random initialisation, and the JSON says so."""
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga_core.encoders import build
    from maga_core.errors import MagaError

    try:
        net = build(name)
        return net, net.weights_id.get("source", "default"), False
    except MagaError as exc:
        return build(name, weights="random"), f"random init (pretrained weights unavailable: {exc})", True


class MemorySampler:
    """Peak memory of this process and its reader processes, sampled every 50 ms in a thread: this
    process's RSS plus each child's unique memory (USS: forked readers share the parent's pages, so
    their RSS would count the loaded libraries twice). Also the largest single-process RSS, the figure
    GNU time and most reports give."""

    def __init__(self, interval: float = 0.05):
        import threading

        import psutil

        self.proc, self.interval = psutil.Process(), interval
        self.total_mb = self.single_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        import psutil

        own = self.proc.memory_info().rss
        single, extra = own, 0
        for child in self.proc.children(recursive=True):
            try:
                extra += child.memory_full_info().uss
                single = max(single, child.memory_info().rss)
            except psutil.Error:  # a reader that just exited
                pass
        self.total_mb = max(self.total_mb, (own + extra) / 2**20)
        self.single_mb = max(self.single_mb, single / 2**20)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "MemorySampler":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def _child(queue, fn: str, kwargs: dict[str, Any]) -> None:
    import torch

    if kwargs.get("threads"):
        torch.set_num_threads(int(kwargs["threads"]))
    try:
        with MemorySampler() as mem:
            out = globals()[fn](**kwargs)
        out["peak_rss_mb"] = mem.total_mb
        out["peak_single_process_rss_mb"] = mem.single_mb
        out["torch_threads"] = torch.get_num_threads()
        queue.put(out)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def _isolated(fn: str, **kwargs: Any) -> dict[str, Any]:
    """Run one timed pipeline in a fresh process, so its peak RSS is its own and no warm cache or
    thread pool carries over between the runs compared."""
    import multiprocessing as mp

    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga_core.errors import MagaError

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, kwargs))
    proc.start()
    out = queue.get()
    proc.join()
    if "error" in out:
        raise MagaError(f"benchmark run {fn} failed: {out['error']}")
    return out


def _time_ours(slides: list[str], encoder: str, mag: float, batch_size: int, workers: int | None, channels_last: bool,
               out: str, threads: int | None = None, fast: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Our extract_slides on every slide (one process), then the network alone on the steady state's
    number of tiles (same process, threads and device)."""
    import numpy as np

    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga.extract import FeatureModel, extract_slides
    from maga_core.device import resolve
    from maga_core.slides import open_slide, patch_px_for_mag, read_patch

    net, weights, random_init = _build(encoder)
    px = patch_px_for_mag(mag)
    model = FeatureModel(net, net.transform, mag, px, encoder, "", channels_last, resolve(device))
    jobs = [(slide, f"{out}.{i}.h5") for i, slide in enumerate(slides)]
    runs = [res for _, res in extract_slides(jobs, model, batch_size=batch_size, num_workers=workers, progress=False,
                                             fast=fast, raise_errors=True)]
    seconds, n = _steady([r.seconds for r in runs], [r.n_patches for r in runs])
    out, slide = f"{out}.0.h5", slides[0]
    with open_slide(slide) as reader:
        # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
        from maga_core.data.features import read_features

        coords = read_features(out).coords
        patches = np.stack([read_patch(reader, tuple(c), mag) for c in coords[:batch_size]])
    model_s = _network_only(model, patches, round(n))
    return {"seconds": seconds, "stages": runs[-1].stages, "n": n, "model_only_seconds": model_s,
            "first_slide_seconds": runs[0].seconds, "first_slide_patches": runs[0].n_patches,
            "weights": weights, "random_init": random_init, "device": model.runtime.device,
            "precision": model.runtime.precision}


def _time_baseline(slides: list[str], coords_files: list[str], workers: int, out: str, threads: int | None = None,
                   device: str = "cpu") -> dict[str, Any]:
    """CLAM-style extraction: ResNet50 to layer3 (resnet50_trunc) on 224 px, `clam_loop_settings` batch and
    DataLoader processes (pinned batches on CUDA), features appended to an HDF5 per batch; no channels-last,
    fp32, under inference mode, on `device`. Every slide in one process (a new DataLoader per slide, as CLAM),
    then the network alone. Its imports are paid before the workers fork, not once per worker and slide."""
    import h5py
    import numpy as np
    import openslide  # noqa: F401 - imported before the DataLoader forks (see docstring)
    import torch
    from torch.utils.data import DataLoader
    from torchvision.transforms import functional  # noqa: F401 - same

    settings = clam_loop_settings(workers, device)
    batch_size, workers = settings["batch_size"], settings["workers"]
    net, weights, random_init = _build("resnet50_trunc")
    net.eval().to(device)
    cuda = device.startswith("cuda")
    seconds, patches = [], []
    for k, (slide, coords_file) in enumerate(zip(slides, coords_files)):
        data = ClamStylePatches(slide, np.load(coords_file))
        t0 = time.perf_counter()
        loader = DataLoader(data, batch_size=batch_size, num_workers=workers, pin_memory=cuda)
        with h5py.File(f"{out}.{k}.h5", "w") as h5:
            ds = None
            for batch in loader:
                with torch.inference_mode():
                    feats = net(batch.to(device, non_blocking=cuda)).cpu().numpy()
                if ds is None:
                    ds = h5.create_dataset("features", data=feats, maxshape=(None, feats.shape[1]), chunks=True)
                else:
                    ds.resize(ds.shape[0] + len(feats), axis=0)
                    ds[-len(feats):] = feats
        seconds.append(time.perf_counter() - t0)
        patches.append(len(data))
    per_slide, n = _steady(seconds, patches)
    x = torch.stack([data[i] for i in range(min(batch_size, len(data)))]).to(device)
    with torch.inference_mode():
        net(x)
        _sync(device)
        t1 = time.perf_counter()
        for start in range(0, round(n), len(x)):
            net(x[: min(len(x), round(n) - start)])
        _sync(device)
    return {"seconds": per_slide, "n": n, "model_only_seconds": time.perf_counter() - t1,
            "first_slide_seconds": seconds[0], "weights": weights, "random_init": random_init, **settings}


def rounded(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 4) if isinstance(v, float) else rounded(v) if isinstance(v, dict) else v)
            for k, v in d.items()}


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["model_only_seconds"] = min(r["model_only_seconds"] for r in runs)
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    best["peak_single_process_rss_mb"] = max(r["peak_single_process_rss_mb"] for r in runs)
    best["all_seconds"] = [round(r["seconds"], 4) for r in runs]
    return best


# Changes to our pipeline measured one at a time (first encoder), against the default settings.
IDEAS: dict[str, dict[str, Any]] = {
    "no_channels_last": {"channels_last": False},
    "reader_of_record": {"fast": False},
    "decode_threads_x2": {"workers_scale": 2},
    "one_torch_thread": {"threads": 1},
    "batch_x2": {"batch_scale": 2.0},
}


def run_extract_bench(cfg: ExtractBenchConfig, progress: bool = True) -> dict[str, Any]:
    import numpy as np

    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga.extract import EXTRACT_TISSUE_MPP, auto_batch_size, default_workers, slide_decode_threads
    from maga_core.device import resolve
    from maga_core.slides import TissueConfig, aligned_grid, detect_tissue, open_slide, patch_px_for_mag
    from maga.slide_tools.generator import generate_slide

    load_start = machine()
    rt = resolve(cfg.device, "auto")
    workers = cfg.num_workers or slide_decode_threads(rt)  # ours: decode threads
    baseline_workers = cfg.num_workers or default_workers()  # the CLAM-style loop: DataLoader processes
    mags = (cfg.high_mag, cfg.low_mag)
    hi, lo = f"{cfg.high_mag:g}x", f"{cfg.low_mag:g}x"
    px = {m: patch_px_for_mag(m) for m in mags}
    cuda = rt.cuda
    bs = {m: cfg.batch_size or auto_batch_size(px[m], cuda) for m in mags}
    with tempfile.TemporaryDirectory(prefix="maga-bench-") as tmp:
        if cfg.slide:
            paths, generated = [Path(cfg.slide)] * max(1, cfg.slides), None
        else:
            t0 = time.perf_counter()
            paths = [generate_slide(Path(tmp) / f"bench_{cfg.size}_{k}.tif", cfg.size, cfg.size,
                                    seed=cfg.seed + k, progress=progress) for k in range(max(1, cfg.slides))]
            generated = time.perf_counter() - t0
        coords_files = []
        for k, path in enumerate(paths):
            with open_slide(path) as reader:
                coords = aligned_grid(reader, detect_tissue(reader, TissueConfig(thumb_mpp=EXTRACT_TISSUE_MPP)), mags)
                np.save(Path(tmp) / f"coords{k}.npy", coords)
                coords_files.append(str(Path(tmp) / f"coords{k}.npy"))
                if k == 0:
                    info = {"path": str(path) if cfg.slide else "(generated, deleted after the run)",
                            "dimensions": list(reader.dimensions), "levels": reader.level_count, "mpp": reader.mpp,
                            "patches": len(coords), "slides": len(paths), "generate_seconds": generated}
        slides = [str(p) for p in paths]

        def ours(name: str, m: float, **change: Any) -> dict[str, Any]:
            kw = {"channels_last": cfg.channels_last, "workers": workers, "threads": cfg.threads, "device": cfg.device}
            scale = change.pop("batch_scale", 1.0)
            kw["workers"] *= change.pop("workers_scale", 1)
            kw.update(change)
            return _best([_isolated("_time_ours", slides=slides, encoder=name, mag=m,
                                    batch_size=int(bs[m] * scale), out=str(Path(tmp) / f"{name}_{m:g}x.h5"), **kw)
                          for _ in range(cfg.repeats)])

        results: dict[str, Any] = {}
        for name in cfg.encoders:
            runs = {m: ours(name, m) for m in mags}
            n = runs[cfg.high_mag]["n"]  # steady-state patches per slide
            row: dict[str, Any] = {"weights": runs[cfg.high_mag]["weights"],
                                   "random_init": runs[cfg.high_mag]["random_init"],
                                   "device": runs[cfg.high_mag]["device"],
                                   "precision": runs[cfg.high_mag]["precision"], "patches_per_slide": n}
            for m in mags:
                r, key = runs[m], f"{m:g}x"
                row[f"first_slide_seconds_{key}"] = r["first_slide_seconds"]
                row[f"model_only_tiles_per_s_{key}"] = r["n"] / r["model_only_seconds"]
                row[f"pipeline_tiles_per_s_{key}"] = r["n"] / r["seconds"]
                row[f"slide_seconds_{key}"] = r["seconds"]
                row[f"stages_{key}"] = r["stages"]
                row[f"all_slide_seconds_{key}"] = r["all_seconds"]
                row[f"peak_rss_mb_{key}"] = r["peak_rss_mb"]
                row[f"peak_single_process_rss_mb_{key}"] = r["peak_single_process_rss_mb"]
            row["model_only_tiles_per_s"] = row[f"model_only_tiles_per_s_{hi}"]
            row["pipeline_tiles_per_s"] = n / row[f"slide_seconds_{hi}"]
            row["pipeline_efficiency"] = row["pipeline_tiles_per_s"] / row["model_only_tiles_per_s"]
            row[f"ratio_{hi}_over_{lo}"] = row[f"slide_seconds_{hi}"] / row[f"slide_seconds_{lo}"]
            row["peak_rss_mb"] = max(row[f"peak_rss_mb_{k}"] for k in (hi, lo))
            row["meets_pipeline_target"] = row["pipeline_efficiency"] >= PIPELINE_TARGET
            row["meets_ratio_target"] = row[f"ratio_{hi}_over_{lo}"] >= RATIO_TARGET
            row["meets_rss_target"] = row["peak_rss_mb"] <= RSS_TARGET_MB
            results[name] = row

        baseline = None
        if cfg.baseline:
            b = _best([_isolated("_time_baseline", slides=slides, coords_files=coords_files, workers=baseline_workers,
                                 out=str(Path(tmp) / "baseline"), threads=cfg.threads, device=cfg.device)
                       for _ in range(cfg.repeats)])
            n = b["n"]
            baseline = {"tiles_per_s": n / b["seconds"], "model_only_tiles_per_s": n / b["model_only_seconds"],
                        "first_slide_seconds": b["first_slide_seconds"],
                        "pipeline_efficiency": b["model_only_seconds"] / b["seconds"], "slide_seconds": b["seconds"],
                        "all_slide_seconds": b["all_seconds"], "peak_rss_mb": b["peak_rss_mb"],
                        "peak_single_process_rss_mb": b["peak_single_process_rss_mb"],
                        "weights": b["weights"], "random_init": b["random_init"],
                        "batch_size": b["batch_size"], "workers": b["workers"]}
            for row in results.values():
                row["speedup_over_baseline"] = row["pipeline_tiles_per_s"] / baseline["tiles_per_s"]
                row["meets_baseline_target"] = row["speedup_over_baseline"] >= BASELINE_TARGET

        ideas = {}
        if cfg.ideas and cfg.encoders:
            name = cfg.encoders[0]
            for idea, change in IDEAS.items():
                ideas[idea] = {}
                for m in mags:
                    r = ours(name, m, **dict(change))
                    base = results[name][f"slide_seconds_{m:g}x"]
                    ideas[idea][f"{m:g}x"] = {"slide_seconds": r["seconds"], "speedup": base / r["seconds"],
                                              "peak_rss_mb": r["peak_rss_mb"]}
    return {
        "benchmark": "extract",
        "slide": info,
        "settings": {**asdict(cfg), "batch_size": {f"{m:g}x": bs[m] for m in mags},
                     "patch_px": {f"{m:g}x": px[m] for m in mags}, "num_workers": workers,
                     "baseline_workers": baseline_workers},
        "targets": {"pipeline_efficiency": PIPELINE_TARGET, "ratio_20x_over_5x": RATIO_TARGET,
                    "speedup_over_baseline": BASELINE_TARGET, "peak_rss_mb": RSS_TARGET_MB},
        "notes": [
            "every timed run is a fresh process; peak_rss_mb: its RSS plus its reader processes' unique memory "
            "(USS), sampled every 50 ms; peak_single_process_rss_mb: the largest single process (GNU time's "
            "figure); with --repeats the best time of the repeats is kept",
            "model_only: the network alone on the slide's number of tiles (real patches preprocessed in memory), "
            "same process, batch size and threads, after the pipeline run",
            "pipeline / slide_seconds: the whole extract_slides (open, tissue mask, grid, read and decode on "
            f"{workers} thread(s), preprocess, network, HDF5 write) on the slide's tissue patches",
            f"{cfg.low_mag:g}x runs the same network natively on {px[cfg.low_mag]} px patches, as a MAGA "
            "student in native mode does (same architecture as its teacher, so the same compute)",
            "baseline: a CLAM-style loop in this package's code (OpenSlide read_region per 256 px patch at level 0, "
            "PIL resize to 224 px, ResNet50 to layer3, fp32, a new DataLoader per slide; batch and reader "
            "processes in baseline.batch_size / baseline.workers: CLAM's 256 and 8 on CUDA, 64 and ours on CPU; "
            "one torch thread per reader process; features appended to HDF5), on the same patches",
        ],
        "machine_at_start": load_start,
        "machine_at_end": machine(),
        "encoders": {k: rounded(v) for k, v in results.items()},
        "baseline": rounded(baseline) if baseline else None,
        "ideas": rounded(ideas),
    }


def _extract_args(p: argparse.ArgumentParser) -> None:
    d = ExtractBenchConfig()
    p.add_argument("--size", type=int, default=d.size, help=f"generated slide side in px (default {d.size})")
    p.add_argument("--slide", help="benchmark on this slide instead of a generated one")
    p.add_argument("--encoders", default=",".join(d.encoders), help="comma-separated encoder names")
    p.add_argument("--batch-size", type=int, help="patches per batch at both magnifications (default: auto)")
    p.add_argument("--workers", type=int, help="our decode threads and the baseline's DataLoader processes "
                   "(default: extract's, one decode thread on CPU and every core on an accelerator; the baseline: "
                   "every core)")
    p.add_argument("--slides", type=int, default=d.slides, help="generated slides timed in one process; with 2 "
                   "or more the first (warm-up) is reported apart and the rest give the steady state (default 1)")
    p.add_argument("--device", default=d.device, help="device of both pipelines: cpu, cuda[:N], auto (default cpu)")
    p.add_argument("--threads", type=int, help="torch threads of the timed process (default: torch's)")
    p.add_argument("--repeats", type=int, default=d.repeats, help="repeat each timing, keep the best (default 1)")
    p.add_argument("--baseline", action="store_true", help="also time a CLAM-style extraction loop")
    p.add_argument("--ideas", action="store_true", help="also time variants of our pipeline, one change at a time")
    p.add_argument("--seed", type=int, default=d.seed)


@benchmark("extract", "network-only vs whole-pipeline tiles/s, 20x vs 5x per-slide time, vs a CLAM-style loop",
           _extract_args)
def bench_extract(args: argparse.Namespace) -> dict[str, Any]:
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga_core.errors import MagaError

    if args.size < 512 or args.repeats < 1 or args.slides < 1:
        raise MagaError(f"--size must be at least 512 px and --repeats at least 1 (got {args.size}, {args.repeats})")
    cfg = ExtractBenchConfig(size=args.size, seed=args.seed, slide=args.slide,
                             encoders=[e.strip() for e in args.encoders.split(",") if e.strip()],
                             batch_size=args.batch_size, num_workers=args.workers, threads=args.threads,
                             repeats=args.repeats, baseline=args.baseline, ideas=args.ideas, slides=args.slides,
                             device=args.device)
    return run_extract_bench(cfg, progress=not args.json)

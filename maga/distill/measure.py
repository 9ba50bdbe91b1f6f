"""Cost of an encoder: parameters, FLOPs per tile, tiles/s and peak memory at a given batch size.

Speed and memory are measured in a fresh Python process per model: a process's peak RSS is a high-water
mark that never goes down, so in one process the second model would inherit the first one's peak, and
freed memory is not always returned to the OS. The child imports everything, starts the conv backend,
resets the kernel's high-water mark (`/proc/self/clear_refs` = 5, Linux >= 4.0; else it falls back to
`ru_maxrss`, which then includes the import peak), builds the model, runs warm-up and timed batches
under `torch.inference_mode`, and reports the peak's rise over the RSS at the reset (weights +
activations + allocator slack); on CUDA it also reports `torch.cuda.max_memory_allocated`. Inputs are fixed-seed random tensors: a CNN's cost does not depend
on pixel values. One torch thread by default: on a shared, oversubscribed CPU OpenMP threads spin-wait
on each other and multi-thread timings become noise (measured here: 2 threads 3-15x slower than 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass

import torch
from torch import nn

from maga_core.encoders import build
from maga_core.errors import MagaError


@dataclass
class RunCost:
    name: str
    weights: str | None
    device: str
    batch_size: int
    input_px: int
    threads: int
    tiles_per_s: float
    ms_per_batch: float
    peak_rss_mb: float          # process high-water mark at the end
    rss_rise_mb: float          # high-water mark rise over the post-import baseline
    cuda_peak_mb: float | None  # max_memory_allocated on CUDA, else None


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_tile(model: nn.Module, input_px: int) -> int:
    """Forward FLOPs for one tile (multiply and add counted separately), by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, input_px, input_px)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        return None
    return None


def _reset_peak() -> float:
    """Reset the peak-RSS mark where the kernel allows it; return the baseline to subtract."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        rss = _status_mb("VmRSS")
        if rss is not None:
            return rss
    except OSError:
        pass
    return _peak_mb()


def _peak_mb() -> float:
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _measure_here(name: str, weights: str | None, batch_size: int, input_px: int | None, batches: int,
                  warmup: int, threads: int, device: str) -> RunCost:
    """The child's body: build, warm up, time. Runs in the fresh process."""
    import time

    import timm  # noqa: F401  (imported before the baseline so its memory is not counted)

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with torch.inference_mode():  # start the thread pool and the conv backend before the baseline
        torch.nn.functional.conv2d(torch.zeros(1, 3, 8, 8), torch.zeros(4, 3, 3, 3))
    base = _reset_peak()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = build(name, weights).to(device).eval()
    px = int(input_px or model.spec.input_px)
    x = torch.randn(batch_size, 3, px, px, device=device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        sync()
        t0 = time.perf_counter()
        for _ in range(batches):
            model(x)
        sync()
        elapsed = time.perf_counter() - t0
    peak = _peak_mb()
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return RunCost(name=name, weights=weights, device=device, batch_size=batch_size, input_px=px,
                   threads=threads, tiles_per_s=batches * batch_size / elapsed,
                   ms_per_batch=1000 * elapsed / batches, peak_rss_mb=peak, rss_rise_mb=peak - base,
                   cuda_peak_mb=cuda_peak)


def measure_run(name: str, weights: str | None = None, *, batch_size: int = 32, input_px: int | None = None,
                batches: int = 5, warmup: int = 2, threads: int = 1,
                device: str | None = None, timeout_s: float = 600) -> RunCost:
    """Measure one registry encoder in a fresh process (see the module docstring)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cmd = [sys.executable, "-m", "maga.distill.measure", name, "--batch-size", str(batch_size),
           "--batches", str(batches), "--warmup", str(warmup), "--threads", str(threads), "--device", device]
    if weights:
        cmd += ["--weights", str(weights)]
    if input_px:
        cmd += ["--input-px", str(input_px)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MagaError(f"measuring encoder {name!r} failed: {last}", weights)
    return RunCost(**json.loads(proc.stdout.strip().splitlines()[-1]))


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="measure one encoder (child process of measure_run)")
    p.add_argument("name")
    p.add_argument("--weights")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--input-px", type=int)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    cost = _measure_here(a.name, a.weights, a.batch_size, a.input_px, a.batches, a.warmup, a.threads, a.device)
    print(json.dumps(asdict(cost)))
    return 0


if __name__ == "__main__":
    sys.exit(_main())

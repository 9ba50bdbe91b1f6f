"""Peak memory per tile of encoder training, at 20x (256 px) and at 5x (64 px).

Each measurement runs one training step (forward, backward, optimizer step) of the encoder on a
batch of tiles in a FRESH Python process, so nothing measured before (allocator caches, other
batch sizes) is counted: on CPU the process's peak resident set (VmHWM; `ru_maxrss` is not used on
Linux because it carries the parent's peak across exec), on CUDA `torch.cuda.max_memory_allocated`. Per-tile memory is the slope between two batch sizes,
(peak(b2) - peak(b1)) / (b2 - b1), which cancels what does not grow with the number of tiles:
libraries, weights, gradients and optimizer state.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys
from typing import Any

from maga_core.errors import MagaError
from maga.e2e.train import E2EConfig, TileEncoder, build_encoder, set_modes


@dataclasses.dataclass
class MemoryConfig:
    """Which encoder, at which (magnification, patch px) settings, with which batch pairs."""

    encoder: str = "efficientnet_lite0"
    settings: tuple[tuple[float, int], ...] = ((20.0, 256), (5.0, 64))
    batches: tuple[int, int] = (2, 6)
    amp: bool = False
    checkpoint: bool = False
    chunk: int = 2
    device: str = "cpu"  # "cpu" or "cuda"
    threads: int = 1


def _peak_bytes(device: str) -> int:
    """Peak memory of this process. On Linux the high-water mark of the process's own address space
    (VmHWM), because ru_maxrss survives exec: a child started by a large parent (a notebook kernel)
    would report the parent's size. ru_maxrss where /proc is missing."""
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def measure_once(encoder: str, px: int, batch: int, amp: bool, checkpoint: bool, chunk: int,
                 device: str, threads: int) -> dict[str, Any]:
    """One training step on `batch` random tiles of `px` (runs in the calling process: call it
    through `measure` to get a fresh one). Frozen BatchNorm statistics, as in e2e training."""
    import torch

    torch.set_num_threads(threads)
    cfg = E2EConfig(encoder=encoder, amp=amp, checkpoint=checkpoint, chunk=chunk)
    enc = TileEncoder(build_encoder(cfg), amp, checkpoint, chunk).to(device)
    set_modes(enc, None, cfg, training=True)
    opt = torch.optim.AdamW(enc.parameters(), lr=1e-5)
    x = torch.randn(batch, 3, px, px, generator=torch.Generator().manual_seed(0)).to(device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = _peak_bytes(device)
    feats = enc(x)
    (feats.square().mean()).backward()
    opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return {"px": px, "batch": batch, "peak_bytes": _peak_bytes(device), "peak_before_step": before}


def measure(encoder: str, px: int, batch: int, amp: bool = False, checkpoint: bool = False, chunk: int = 2,
            device: str = "cpu", threads: int = 1) -> dict[str, Any]:
    """`measure_once` in a fresh subprocess (its own ru_maxrss / CUDA allocator)."""
    args = json.dumps({"encoder": encoder, "px": px, "batch": batch, "amp": amp, "checkpoint": checkpoint,
                       "chunk": chunk, "device": device, "threads": threads})
    proc = subprocess.run([sys.executable, "-m", "maga.e2e.memory", args], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MagaError(f"memory measurement failed at {px} px, batch {batch}: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def per_tile(cfg: MemoryConfig, progress: bool = True) -> list[dict[str, Any]]:
    """Per-tile training memory at every (magnification, px) of `cfg`: one row each, in MiB."""
    from tqdm.auto import tqdm

    b1, b2 = cfg.batches
    if not 0 < b1 < b2:
        raise MagaError(f"need two increasing batch sizes, got {cfg.batches}")
    rows = []
    for mag, px in tqdm(cfg.settings, desc="memory per tile", disable=not progress):
        lo, hi = (measure(cfg.encoder, px, b, cfg.amp, cfg.checkpoint, cfg.chunk, cfg.device, cfg.threads)
                  for b in (b1, b2))
        slope = (hi["peak_bytes"] - lo["peak_bytes"]) / (b2 - b1)
        rows.append({"encoder": cfg.encoder, "magnification": mag, "px": px, "pixels": px * px,
                     "amp": cfg.amp, "checkpoint": cfg.checkpoint, "device": cfg.device,
                     "batches": f"{b1},{b2}", "peak_mib_small": lo["peak_bytes"] / 2**20,
                     "peak_mib_large": hi["peak_bytes"] / 2**20, "mib_per_tile": slope / 2**20})
    return rows


if __name__ == "__main__":
    print(json.dumps(measure_once(**json.loads(sys.argv[1]))))

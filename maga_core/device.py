"""Where the networks run and at what precision, resolved once per run and recorded with its outputs.

`--device auto|cpu|cuda[:N]|mps` and `--precision auto|fp32|bf16|fp16` are shared by extract, align,
mil, distill, e2e, cohort and serve. `auto` picks CUDA when present (the GPU of this torchrun rank:
LOCAL_RANK), else Apple MPS, else the CPU; precision `auto` is bf16 on CUDA (fp16 where the GPU has no
bf16) and fp32 elsewhere, because CPU autocast is slower than fp32 on most CPUs. Reduced precision is
torch.autocast: weights and optimiser state stay fp32, outputs are returned as fp32.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

from maga_core.errors import MagaError

DEVICE_CHOICES = "auto|cpu|cuda[:N]|mps"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Runtime:
    """A resolved device ("cpu", "cuda:1", "mps") and precision ("fp32", "bf16", "fp16")."""

    device: str = "cpu"
    precision: str = "fp32"

    @property
    def torch_device(self):
        import torch

        return torch.device(self.device)

    @property
    def kind(self) -> str:
        return self.device.split(":")[0]

    @property
    def cuda(self) -> bool:
        return self.kind == "cuda"

    @property
    def pin_memory(self) -> bool:
        """Page-locked host batches make host-to-GPU copies asynchronous; useless elsewhere."""
        return self.cuda

    @property
    def dtype(self):
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager:
        """torch.autocast for this device and precision (a no-op at fp32)."""
        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.kind, dtype=self.dtype)

    def to(self, x):
        """A tensor (or None) on this device; asynchronous from pinned memory on CUDA."""
        return None if x is None else x.to(self.device, non_blocking=self.cuda)

    def record(self) -> dict[str, Any]:
        """What goes into configs and feature-file attributes."""
        return {"device": self.device, "precision": self.precision, "device_name": device_name(self.device)}


def device_name(device: str) -> str:
    import platform

    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    if device == "mps":
        return "Apple MPS"
    return platform.processor() or platform.machine() or "cpu"


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(device: str = "auto") -> str:
    """'auto' -> this rank's GPU, MPS or CPU; 'cuda' -> cuda:LOCAL_RANK; an unavailable device is an error."""
    import torch

    device = (device or "auto").strip().lower()
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif _mps_available():
            return "mps"
        else:
            return "cpu"
    if device == "cpu":
        return "cpu"
    if device == "mps":
        if not _mps_available():
            raise MagaError("--device mps: Apple MPS is not available on this machine")
        return "mps"
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise MagaError(f"--device must be {DEVICE_CHOICES}, got {device!r}")
    if not torch.cuda.is_available():
        raise MagaError(f"--device {device}: no CUDA GPU is visible (torch {torch.__version__})")
    n = int(index) if index else local % torch.cuda.device_count()
    if n >= torch.cuda.device_count():
        raise MagaError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
    return f"cuda:{n}"


def resolve_precision(precision: str | None, device: str) -> str:
    precision = (precision or "auto").strip().lower()
    if precision not in PRECISIONS:
        raise MagaError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def resolve(device: str = "auto", precision: str | None = "auto") -> Runtime:
    """The Runtime for a requested device and precision (see the module docstring)."""
    dev = resolve_device(device)
    if dev.startswith("cuda"):
        import torch

        torch.cuda.set_device(torch.device(dev))
    return Runtime(dev, resolve_precision(precision, dev))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The shared --device / --precision options."""
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help=f"{DEVICE_CHOICES} (default auto: this rank's GPU, else MPS, else CPU)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="autocast precision (default auto: bf16 on CUDA, fp32 on CPU)")


def without_runtime(d: Any) -> Any:
    """A saved config (JSON-like) without where it ran: `device` keys dropped everywhere, `precision`
    dropped when fp32/auto. For cache keys and resume checks, so that configs and cached results from
    before these options, or from another machine, still match."""
    if isinstance(d, dict):
        return {k: without_runtime(v) for k, v in d.items()
                if k != "device" and not (k == "precision" and v in ("auto", "fp32"))}
    if isinstance(d, list):
        return [without_runtime(v) for v in d]
    return d


@contextlib.contextmanager
def inference(rt: Runtime) -> Iterator[None]:
    """Inference mode plus autocast: what every feature-extraction forward runs under."""
    import torch

    with torch.inference_mode(), rt.autocast():
        yield

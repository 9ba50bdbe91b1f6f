"""The Encoder interface shared by every family: features from a normalized batch, named block taps for
MAGA, and the uint8 -> tensor transform the weights expect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maga_core.encoders.registry import EncoderSpec
from maga_core.errors import MagaError


def load_torch_file(path: str | Path, what: str, weights_only: bool = True) -> Any:
    """torch.load on CPU; an unreadable file is one user error ("cannot read <what>"), whatever broke."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise MagaError(f"cannot read {what} ({type(exc).__name__})", path) from None


class Normalize:
    """uint8 HxWx3 (or BxHxWx3) pixels -> normalized float tensor [3,H,W] (or [B,3,H,W]).

    A plain picklable callable so DataLoader workers can carry it."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, pixels: Any) -> torch.Tensor:
        if isinstance(pixels, torch.Tensor):
            x = pixels
        else:
            arr = np.ascontiguousarray(pixels)
            x = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
        if x.dtype != torch.uint8:
            raise TypeError(f"expected uint8 pixels, got {x.dtype}")
        # One conversion and two in-place passes ((x / 255 - mean) / std folded into x * a + b): this runs
        # on every patch of a slide, on the device that holds the batch.
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], device=x.device).view(3, 1, 1)
        shift = torch.tensor([-m / s for m, s in zip(self.mean, self.std)], device=x.device).view(3, 1, 1)
        return x.movedim(-1, -3).float().mul_(scale).add_(shift)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize float pixels in [0, 1], channels first."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class Encoder(nn.Module):
    """Base class: subclasses implement `_run(x, keep)` returning the requested taps plus "pooled".

    keep=None returns every tap the encoder offers; an empty set only "pooled" (plain inference)."""

    def __init__(self, spec: EncoderSpec, model: nn.Module, weights_id: dict[str, str]):
        super().__init__()
        self.model = model  # the wrapped network (timm or torchvision)
        self.spec = spec
        self.dim = spec.dim
        self.weights_id = dict(weights_id)  # {"source": ..., "sha256": ...}: the teacher identity
        self.transform = Normalize(spec.mean, spec.std)

    def _run(self, x: torch.Tensor, keep: set[str] | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, keep=set())["pooled"]

    def taps(self, x: torch.Tensor, names: list[str] | tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """Named block outputs (all, or `names`) plus "pooled"."""
        out = self._run(x, keep=None if names is None else set(names))
        if names is not None:
            missing = set(names) - set(out)
            if missing:
                raise KeyError(f"{self.spec.name} has no taps {sorted(missing)} (has {sorted(out)})")
        return out

    def tap_names(self) -> list[str]:
        raise NotImplementedError

    def identity(self) -> dict[str, str]:
        """What a checkpoint records about this encoder as a teacher."""
        return {"name": self.spec.name, **self.weights_id}

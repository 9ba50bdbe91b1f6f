"""The MAGA loss: a weighted sum of mean L1 distances between the student's and the teacher's block
outputs plus the pooled feature (paper Eq. 1). Weights default to the upstream code's [1, 5, 10, 200]
(layer1, layer2, layer3, pooled) mapped onto the encoder's equivalent taps; the paper's text instead says
layer1..layer4 + pooled with equal weights. Which taps and weights were used is recorded with each run."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maga_core.encoders.registry import UPSTREAM_BLOCK_WEIGHTS, EncoderSpec


def resolve_weights(spec: EncoderSpec, taps: list[str] | None = None, tap_weights: list[float] | None = None,
                    pooled_weight: float | None = None) -> dict[str, float]:
    """Tap -> weight. No taps: the encoder's defaults. Taps without weights: the upstream block weights in
    order (the last repeated for extra taps). "pooled" is always included (weight 0 turns it off)."""
    if taps is None:
        weights = {k: v for k, v in spec.default_weights().items() if k != "pooled"}
    else:
        if tap_weights is None:
            base = list(UPSTREAM_BLOCK_WEIGHTS)
            tap_weights = [base[min(i, len(base) - 1)] for i in range(len(taps))]
        if len(tap_weights) != len(taps):
            raise ValueError(f"{len(taps)} taps but {len(tap_weights)} weights")
        weights = {t: float(w) for t, w in zip(taps, tap_weights) if t != "pooled"}
    weights["pooled"] = float(spec.pooled_weight if pooled_weight is None else pooled_weight)
    return {k: v for k, v in weights.items() if v != 0.0}


def match_teacher(teacher_map: torch.Tensor, student_map: torch.Tensor) -> torch.Tensor:
    """Teacher map average-pooled to the student's spatial size (native mode); unchanged if equal."""
    if teacher_map.dim() == 4 and teacher_map.shape[-2:] != student_map.shape[-2:]:
        if any(t < s for t, s in zip(teacher_map.shape[-2:], student_map.shape[-2:])):
            raise ValueError(f"teacher map {tuple(teacher_map.shape)} smaller than student {tuple(student_map.shape)}")
        return F.adaptive_avg_pool2d(teacher_map, student_map.shape[-2:])
    return teacher_map


class MagaLoss(nn.Module):
    def __init__(self, weights: dict[str, float]):
        super().__init__()
        self.weights = dict(weights)

    @property
    def taps(self) -> list[str]:
        return list(self.weights)

    def forward(self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and the unweighted L1 of each tap (for logging; detached tensors, so a training
        step needs no host sync: the caller converts them once per epoch)."""
        total = 0.0
        parts = {}
        for name, w in self.weights.items():
            l1 = F.l1_loss(student[name], match_teacher(teacher[name], student[name]))
            parts[name] = l1.detach()
            total = total + w * l1
        return total, parts

"""Feature-level distillation losses, chosen by name so the loss is a run parameter.

The default follows the secondary summaries of G2L: the student's embedding, linearly projected to the
teacher's dimension, is pulled onto the teacher's embedding in direction (cosine) and in value
(smooth-L1). Every loss takes `(pred [B, D], target [B, D])` and returns a scalar.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from maga_core.errors import MagaError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity, averaged over the batch (0 when the directions agree)."""
    return (1.0 - F.cosine_similarity(pred, target, dim=1)).mean()


def smooth_l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.smooth_l1_loss(pred, target, beta=1.0)


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(pred, target)


def l2_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred, target)


def cosine_smooth_l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return cosine_loss(pred, target) + smooth_l1_loss(pred, target)


LOSSES: dict[str, LossFn] = {
    "cosine_smooth_l1": cosine_smooth_l1_loss,
    "cosine": cosine_loss,
    "smooth_l1": smooth_l1_loss,
    "l1": l1_loss,
    "l2": l2_loss,
}


def get_loss(name: str) -> LossFn:
    """The loss called `name` (see LOSSES); a clear error for an unknown name."""
    try:
        return LOSSES[name]
    except KeyError:
        raise MagaError(f"unknown distillation loss {name!r} (known: {', '.join(LOSSES)})") from None

"""Gated-attention MIL (Ilse, Tomczak & Welling, ICML 2018): the simplest attention baseline.

Linear D->512 + ReLU + dropout; gated attention 512->128 (Ilse et al.'s hidden size); softmax over
instances; attention-weighted mean; Linear 512->C. The attention weights are the instance scores.
"""

from __future__ import annotations

import torch
from torch import nn

from maga_core.mil.base import MILOutput, as_batch, per_bag, register
from maga_core.mil.layers import GatedAttention


@register("abmil")
class ABMIL(nn.Module):
    batches_bags = True

    def __init__(self, in_dim: int = 1024, n_classes: int = 2, dim: int = 512, hidden: int = 128,
                 dropout: float = 0.25):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(dim, hidden, 1, dropout)
        self.classifier = nn.Linear(dim, n_classes)

    def forward(self, features: torch.Tensor, coords: torch.Tensor | None = None) -> MILOutput:
        h = self.embed(as_batch(features))  # [B, N, dim]
        attn = self.attention(h).softmax(dim=-1)  # [B, 1, N]
        return MILOutput(logits=self.classifier(attn @ h)[:, 0], scores=per_bag(attn[:, 0]))

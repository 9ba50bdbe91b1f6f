"""CLAM-SB and CLAM-MB (Lu et al., Nature BME 2021) as their public implementation behaves.

Linear D->512 + ReLU + dropout; gated attention 512->256 (dropout 0.25) giving K pre-softmax scores per
instance (K=1 for SB, K=C for MB), softmax over instances; attention pooling; SB: one Linear 512->C,
MB: one Linear 512->1 per class on that class's pooled vector. One instance classifier (Linear 512->2)
per class drives the instance-level clustering loss, mixed with the bag loss at bag weight 0.7.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from maga_core.mil.base import MILOutput, as_batch, per_bag, register
from maga_core.mil.layers import GatedAttention


class _CLAM(nn.Module):
    multi_branch = False
    batches_bags = True  # the instance loss is taken per bag and averaged

    def __init__(self, in_dim: int = 1024, n_classes: int = 2, dim: int = 512, hidden: int = 256,
                 dropout: float = 0.25, k_sample: int = 8, bag_weight: float = 0.7,
                 subtyping: bool | None = None):
        super().__init__()
        self.n_classes = n_classes
        self.k_sample = k_sample
        self.bag_weight = bag_weight
        # Out-of-class instance terms make sense when classes are mutually exclusive subtypes; CLAM
        # turns them on for subtyping tasks, which here means more than two classes unless told.
        self.subtyping = n_classes > 2 if subtyping is None else subtyping
        self.embed = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(dim, hidden, n_classes if self.multi_branch else 1, dropout)
        self.instance_classifiers = nn.ModuleList(nn.Linear(dim, 2) for _ in range(n_classes))

    def bag_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """`[B, K, dim]` pooled vectors -> bag logits `[B, C]`."""
        raise NotImplementedError

    def forward(self, features: torch.Tensor, coords: torch.Tensor | None = None,
                label: int | torch.Tensor | None = None, instance_eval: bool | None = None) -> MILOutput:
        """`label` given (one per bag) -> `aux_loss` is the instance loss, averaged over the bags (unless
        `instance_eval=False`).

        Scores: the softmax attention of the single branch (SB) or of the predicted class's branch (MB).
        """
        h = self.embed(as_batch(features))  # [B, N, dim]
        raw = self.attention(h)  # [B, K, N]
        attn = raw.softmax(dim=-1)
        logits = self.bag_logits(attn @ h)
        branch = logits.argmax(dim=1) if self.multi_branch else torch.zeros(len(h), dtype=torch.long, device=h.device)
        if instance_eval is None:
            instance_eval = label is not None
        aux = None
        if instance_eval:
            if label is None:
                raise ValueError("instance_eval=True needs the bag label")
            labels = torch.as_tensor(label).reshape(-1).tolist()
            aux = torch.stack([self.instance_loss(hb, ab, int(y)) for hb, ab, y in zip(h, attn, labels)]).mean()
        scores = attn[torch.arange(len(h), device=h.device), branch]
        return MILOutput(logits=logits, scores=per_bag(scores), aux_loss=aux, aux_weight=1.0 - self.bag_weight,
                         extras={"attention_raw": per_bag(raw)})

    def instance_loss(self, h: torch.Tensor, attn: torch.Tensor, label: int) -> torch.Tensor:
        """CLAM's clustering loss (cross-entropy). For the bag's class: its k most attended instances
        are positive, its k least attended negative. For the other classes, when subtyping: their k
        most attended instances are negative. k = k_sample, capped so that small bags never label one
        instance both ways (upstream fails on bags under k instances)."""
        n = h.shape[0]
        total = h.new_zeros(())
        for c, clf in enumerate(self.instance_classifiers):
            a = attn[c if self.multi_branch else 0]
            if c == label:
                k = min(self.k_sample, n // 2)
                if k == 0:
                    continue
                idx = torch.cat([a.topk(k).indices, (-a).topk(k).indices])
                target = torch.cat([h.new_ones(k), h.new_zeros(k)]).long()
            elif self.subtyping:
                k = min(self.k_sample, n)
                idx, target = a.topk(k).indices, h.new_zeros(k).long()
            else:
                continue
            total = total + F.cross_entropy(clf(h[idx]), target)
        if self.subtyping:
            total = total / len(self.instance_classifiers)
        return total


@register("clam_sb")
class CLAMSB(_CLAM):
    """Single attention branch shared by all classes."""

    def __init__(self, in_dim: int = 1024, n_classes: int = 2, dim: int = 512, **kw):
        super().__init__(in_dim, n_classes, dim, **kw)
        self.classifier = nn.Linear(dim, n_classes)

    def bag_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(pooled[:, 0])


@register("clam_mb")
class CLAMMB(_CLAM):
    """One attention branch and one bag classifier per class."""

    multi_branch = True

    def __init__(self, in_dim: int = 1024, n_classes: int = 2, dim: int = 512, **kw):
        super().__init__(in_dim, n_classes, dim, **kw)
        self.classifiers = nn.ModuleList(nn.Linear(dim, 1) for _ in range(n_classes))

    def bag_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.cat([clf(pooled[:, c]) for c, clf in enumerate(self.classifiers)], dim=1)

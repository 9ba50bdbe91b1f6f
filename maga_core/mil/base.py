"""The one interface every aggregator follows, and the registry that makes models swappable by name.

A slide is a bag of instance features `[N, D]` (or `[1, N, D]`); an aggregator returns a `MILOutput`:
bag logits `[1, C]`, one score per real instance (for heatmaps; padding never gets a score) and, for
models trained with an auxiliary objective (CLAM's instance clustering), that loss and its weight.
Models whose `batches_bags` is true also take a batch `[B, N, D]` of B bags of equal size N (training
on a GPU: one forward pass for B bags): logits `[B, C]`, scores `[B, N]`, the auxiliary loss the mean
over the bags.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn

from maga_core.errors import MagaError


class _LazyTensor:
    """Data descriptor for `MILOutput.scores`: a stored zero-argument callable is called on first read
    and replaced by its result, so scores that need extra passes (integrated gradients) cost nothing in
    training loops that never read them."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: object, owner: type | None = None):
        if obj is None:
            return self
        value = obj.__dict__[self.name]
        if callable(value) and not isinstance(value, torch.Tensor):
            value = obj.__dict__[self.name] = value()
        return value

    def __set__(self, obj: object, value) -> None:
        obj.__dict__[self.name] = value


@dataclasses.dataclass
class MILOutput:
    """What a forward pass gives.

    `scores` may be given as a zero-argument callable; it is evaluated on first access.
    `aux_weight` is the share of `aux_loss` in the training objective, so the trainer needs no
    per-model knowledge: `loss = out.combine(bag_loss)`. `extras` holds model-specific tensors
    (e.g. CLAM's pre-softmax attention `attention_raw [K, N]`).
    """

    logits: torch.Tensor
    scores: torch.Tensor
    aux_loss: torch.Tensor | None = None
    aux_weight: float = 0.0
    extras: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    def combine(self, bag_loss: torch.Tensor) -> torch.Tensor:
        """The training loss: the bag loss, mixed with the auxiliary loss when the model gives one."""
        if self.aux_loss is None:
            return bag_loss
        return (1.0 - self.aux_weight) * bag_loss + self.aux_weight * self.aux_loss


MILOutput.scores = _LazyTensor()  # type: ignore[assignment]
MILOutput.scores.__set_name__(MILOutput, "scores")

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class decorator adding a model to `MODELS` under `name`."""

    def deco(cls: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = cls
        return cls

    return deco


def build(name: str, in_dim: int, n_classes: int, **kw) -> nn.Module:
    """Build the aggregator registered as `name`; keyword arguments go to its constructor."""
    if name not in MODELS:
        raise MagaError(f"unknown MIL model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](in_dim=in_dim, n_classes=n_classes, **kw)


def as_batch(features: torch.Tensor) -> torch.Tensor:
    """Accept one bag `[N, D]` or a batch of equal-sized bags `[B, N, D]`; return `[B, N, D]`."""
    if features.dim() == 2:
        features = features[None]
    if features.dim() != 3 or features.shape[0] < 1 or features.shape[1] < 1:
        raise MagaError(f"expected bag features [N, D] or [B, N, D] with N >= 1, got shape {tuple(features.shape)}")
    return features


def per_bag(values: torch.Tensor) -> torch.Tensor:
    """Drop the batch dimension of a one-bag result (`[1, ...]` -> `[...]`), as callers of one bag expect."""
    return values[0] if values.shape[0] == 1 else values

"""The one interface every aggregator follows, and the registry that makes models swappable by name.

A slide is a bag of instance features `[N, D]` (or `[1, N, D]`); an aggregator returns a `MILOutput`:
bag logits `[1, C]`, one score per real instance (for heatmaps; padding never gets a score) and, for
models trained with an auxiliary objective (CLAM's instance clustering), that loss and its weight.
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


def as_bag(features: torch.Tensor) -> torch.Tensor:
    """Accept `[N, D]` or `[1, N, D]`; return `[N, D]`. Batches of several bags are refused, because
    bags differ in size and every model here works on one bag at a time."""
    if features.dim() == 3:
        if features.shape[0] != 1:
            raise MagaError(f"expected one bag [1, N, D], got shape {tuple(features.shape)}")
        features = features[0]
    if features.dim() != 2 or features.shape[0] < 1:
        raise MagaError(f"expected bag features [N, D] with N >= 1, got shape {tuple(features.shape)}")
    return features

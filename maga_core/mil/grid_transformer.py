"""The skeleton that TransMIL and GLTrans share, and their per-instance scores.

Linear D->dim + ReLU; the bag padded to a square grid by duplicating instances; a class token in
front; Nystrom layer; a token mixer that sees the grid (subclasses: PPEG for TransMIL, local + global
branches for GLTrans); Nystrom layer; LayerNorm; the class token into Linear dim->C.
"""

from __future__ import annotations

import torch
from torch import nn

from maga_core.mil.base import MILOutput, as_bag
from maga_core.mil.layers import NystromBlock, integrated_gradients, square_index

SCORE_METHODS = ("integrated_gradients", "attention")


class GridTransformer(nn.Module):
    """Instance scores (upstream gives none), chosen by `score_method`:

    - "integrated_gradients" (default): integrated gradients of the predicted class margin
      (`layers.integrated_gradients`). Instances reach the class token by several routes - the two
      Nystrom layers and the grid convolutions (and GLTrans's global branch) - and attention of one
      layer sees only the first; attention also says where the model looks, not whether an instance
      pushes towards the class. A single gradient (gradient x input) was tried and misranked
      instances whose effect saturates; integrating fixes that. Costs `score_steps` forward and
      backward passes.
    - "attention": the class token's attention in the second Nystrom layer, averaged over heads: one
      forward pass, class-agnostic; for fast heatmaps of large bags.

    Scores are computed lazily, only when `MILOutput.scores` is read, with the same padding as the
    logits. A duplicated instance's score is the mean over its copies, so padding biases nothing.
    """

    def __init__(self, in_dim: int, n_classes: int, dim: int, dropout: float, random_padding: bool,
                 score_method: str, score_steps: int):
        super().__init__()
        if score_method not in SCORE_METHODS:
            raise ValueError(f"score_method must be one of {SCORE_METHODS}, got {score_method!r}")
        self.random_padding = random_padding
        self.score_method = score_method
        self.score_steps = score_steps
        self.embed = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.attn1 = NystromBlock(dim, dropout)
        self.attn2 = NystromBlock(dim, dropout)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def mix(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token mixer between the two Nystrom layers; `tokens` is [1, 1 + side^2, dim]."""
        raise NotImplementedError

    def _tokens(self, bag: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Tokens entering the second Nystrom layer."""
        h = self.embed(bag)[index]
        return self.mix(self.attn1(torch.cat([self.cls_token, h[None]], dim=1)))

    def logits(self, bag: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Bag logits `[1, C]`; `index` (from `layers.square_index`) fixes the padding."""
        bag = as_bag(bag)
        if index is None:
            index = square_index(bag.shape[0], self.random_padding)
        x = self.attn2(self._tokens(bag, index))
        return self.head(self.norm(x)[:, 0])

    def forward(self, features: torch.Tensor, coords: torch.Tensor | None = None,
                score_class: int | None = None) -> MILOutput:
        """`coords` are accepted for the common interface and unused: like upstream, the grid is filled
        in bag order. `score_class` picks the class the scores explain (default: the predicted one)."""
        bag = as_bag(features)
        index = square_index(bag.shape[0], self.random_padding)
        logits = self.logits(bag, index)
        return MILOutput(logits=logits, scores=lambda: self.instance_scores(bag, index, score_class))

    def instance_scores(self, bag: torch.Tensor, index: torch.Tensor, target: int | None = None) -> torch.Tensor:
        n = bag.shape[0]
        copies = torch.bincount(index, minlength=n).to(bag.dtype)
        if self.score_method == "attention":
            with torch.no_grad():
                row = self.attn2.first_token_attention(self._tokens(bag, index))[1:]
            per_instance = torch.zeros(n, dtype=row.dtype).index_add_(0, index, row)
        else:
            per_instance = integrated_gradients(lambda x: self.logits(x, index), bag, target, self.score_steps)
        return (per_instance / copies).detach()

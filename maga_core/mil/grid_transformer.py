"""The skeleton that TransMIL and GLTrans share, and their per-instance scores.

Linear D->dim + ReLU; the instances laid on a 2-D grid (`placement`): "sequence", upstream's, pads
the bag to a square by duplicating instances and folds it in row by row, so grid neighbours are
neighbours in bag order only; "coords" puts every instance at its level-0 tissue position (empty cells
zero), so the convolutions see real tissue neighbourhoods. A class token in front; Nystrom layer; a
token mixer that sees the grid (subclasses: PPEG for TransMIL, local + global branches for GLTrans);
Nystrom layer; LayerNorm; the class token into Linear dim->C.

Bags of one size share a "sequence" grid (with `random_padding`, one draw of duplicates serves them
all), so a batch of them takes one forward pass; "coords" grids differ per bag.
"""

from __future__ import annotations

import torch
from torch import nn

from maga_core.mil.base import MILOutput, as_batch, per_bag
from maga_core.mil.layers import PLACEMENTS, Layout, NystromBlock, integrated_gradients

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
                 score_method: str, score_steps: int, placement: str = "sequence"):
        super().__init__()
        if score_method not in SCORE_METHODS:
            raise ValueError(f"score_method must be one of {SCORE_METHODS}, got {score_method!r}")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        self.placement = placement
        self.random_padding = random_padding
        self.score_method = score_method
        self.score_steps = score_steps
        self.embed = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.attn1 = NystromBlock(dim, dropout)
        self.attn2 = NystromBlock(dim, dropout)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    @property
    def batches_bags(self) -> bool:
        """Several bags per forward pass only when they share one grid: sequence placement."""
        return self.placement == "sequence"

    def mix(self, tokens: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Token mixer between the two Nystrom layers; `tokens` is [B, 1 + L, dim] (class token first)."""
        raise NotImplementedError

    def layout(self, n: int, coords: torch.Tensor | None, device: torch.device | str = "cpu") -> Layout:
        """The grid placement of a bag of n instances (see the module docstring), its indices on `device`.
        Built on the CPU: on a GPU its unique/min/max would each be a host sync of a training step."""
        if self.placement == "coords":
            if coords is None or len(coords) != n:
                raise ValueError("placement='coords' needs the level-0 coords of every instance")
            return Layout.from_coords(torch.as_tensor(coords).cpu()).to(device)
        return Layout.sequence(n, self.random_padding).to(device)

    def _tokens(self, bags: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Tokens entering the second Nystrom layer, for bags `[B, N, D]` sharing `layout`."""
        h = self.embed(bags)[:, layout.index]
        cls = self.cls_token.expand(len(h), -1, -1)
        return self.mix(self.attn1(torch.cat([cls, h], dim=1)), layout)

    def logits(self, bag: torch.Tensor, layout: Layout | None = None) -> torch.Tensor:
        """Bag logits `[B, C]`; `layout` fixes the padding and placement (default: sequence)."""
        bags = as_batch(bag)
        if layout is None:
            layout = self.layout(bags.shape[1], None, bags.device)
        x = self.attn2(self._tokens(bags, layout))
        return self.head(self.norm(x)[:, 0])

    def forward(self, features: torch.Tensor, coords: torch.Tensor | None = None,
                score_class: int | None = None) -> MILOutput:
        """`coords` place the instances when `placement="coords"` (upstream ignores them and fills the
        grid in bag order). `score_class` picks the class the scores explain (default: the predicted one)."""
        bags = as_batch(features)
        if len(bags) > 1 and not self.batches_bags:
            raise ValueError("placement='coords' takes one bag at a time (each bag has its own grid)")
        layout = self.layout(bags.shape[1], None if coords is None else coords.reshape(-1, 2), bags.device)
        logits = self.logits(bags, layout)
        return MILOutput(logits=logits, scores=lambda: per_bag(torch.stack(
            [self.instance_scores(bag, layout, score_class) for bag in bags])))

    def instance_scores(self, bag: torch.Tensor, layout: Layout, target: int | None = None) -> torch.Tensor:
        n = bag.shape[0]
        copies = torch.bincount(layout.index, minlength=n).to(bag.dtype)
        if self.score_method == "attention":
            with torch.no_grad():
                row = self.attn2.first_token_attention(self._tokens(bag[None], layout))[1:]
            per_instance = torch.zeros(n, dtype=row.dtype).index_add_(0, layout.index, row)
        else:
            per_instance = integrated_gradients(lambda x: self.logits(x, layout), bag, target, self.score_steps)
        return (per_instance / copies).detach()

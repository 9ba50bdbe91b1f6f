"""TransMIL (Shao et al., NeurIPS 2021) as its public implementation behaves.

Linear D->512 + ReLU; the bag padded to a square grid; a class token in front; Nystrom layer; PPEG
(x + depthwise 7x7 + 5x5 + 3x3 convolutions of the grid, class token passed through); Nystrom layer;
LayerNorm; the class token into Linear 512->C. Instance scores: see `grid.GridTransformer`.
"""

from __future__ import annotations

import torch
from torch import nn

from maga_core.mil.base import register
from maga_core.mil.grid_transformer import GridTransformer
from maga_core.mil.layers import Layout


class PPEG(nn.Module):
    """Pyramid position encoding generator: depthwise convolutions of three sizes plus identity."""

    def __init__(self, dim: int = 512):
        super().__init__()
        self.conv7 = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.conv5 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv3 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, tokens: torch.Tensor, layout: Layout) -> torch.Tensor:
        cls, grid = tokens[:, :1], layout.to_grid(tokens[:, 1:])
        grid = grid + self.conv7(grid) + self.conv5(grid) + self.conv3(grid)
        return torch.cat([cls, layout.from_grid(grid)], dim=1)


@register("transmil")
class TransMIL(GridTransformer):
    def __init__(self, in_dim: int = 1024, n_classes: int = 2, dim: int = 512, dropout: float = 0.1,
                 random_padding: bool = False, score_method: str = "integrated_gradients", score_steps: int = 16,
                 placement: str = "sequence"):
        super().__init__(in_dim, n_classes, dim, dropout, random_padding, score_method, score_steps, placement)
        self.ppeg = PPEG(dim)

    def mix(self, tokens: torch.Tensor, layout: Layout) -> torch.Tensor:
        return self.ppeg(tokens, layout)

"""GLTrans, the Global-Local Transformer of MAGA-GLTrans, as its public implementation behaves.

Linear D->512 + ReLU; the bag padded to a square grid; a class token in front; Nystrom layer; then two
branches in parallel on the instance tokens, each passing the class token through unchanged:
- local: grid + depthwise 7x7 convolutions at dilations 1, 3 and 5 (local context at three ranges);
- global: q = Linear(x), k, v = Linear(GELU(BatchNorm(depthwise 3x3 conv(grid)))), out = softmax
  over instances of q*k (per channel, unscaled), times v;
their sum (so the class token enters twice) into a second Nystrom layer; LayerNorm; class token into
Linear 512->C. Upstream pads non-square bags with random duplicates; here padding repeats the first
instances unless `random_padding=True` (see `layers.square_index`). `placement="coords"` lays the
instances out by their tissue coordinates instead, so the local branch sees real neighbours (see
`grid.GridTransformer`). Instance scores (upstream has none): see `grid.GridTransformer`. Trained on
batches of bags (`bag_batch` > 1), the global branch's batch norm normalises over all bags of a batch.
"""

from __future__ import annotations

import torch
from torch import nn

from maga_core.mil.base import register
from maga_core.mil.grid_transformer import GridTransformer
from maga_core.mil.layers import Layout


LOCAL_DILATIONS = (1, 3, 5)  # the paper's local branch


class LocalBranch(nn.Module):
    """Identity plus three dilated depthwise 7x7 convolutions of the instance grid."""

    def __init__(self, dim: int = 512, dilations: tuple[int, ...] = LOCAL_DILATIONS):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(dim, dim, 7, padding=3 * d, dilation=d, groups=dim) for d in dilations
        )

    def forward(self, tokens: torch.Tensor, layout: Layout) -> torch.Tensor:
        cls, grid = tokens[:, :1], layout.to_grid(tokens[:, 1:])
        out = grid + sum(conv(grid) for conv in self.convs)
        return torch.cat([cls, layout.from_grid(out)], dim=1)


class GlobalBranch(nn.Module):
    """Channel-wise attention pooling with keys/values from a local (3x3) view of the grid.

    For every channel, softmax over instances of q*k weighs v; each instance keeps its own weighted
    value, so the output is one token per instance.
    """

    def __init__(self, dim: int = 512):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.bn = nn.BatchNorm2d(dim)
        self.act = nn.GELU()
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor, layout: Layout) -> torch.Tensor:
        cls, feat = tokens[:, :1], tokens[:, 1:]
        kv = layout.from_grid(self.act(self.bn(self.conv(layout.to_grid(feat)))))
        weights = (self.q(feat) * self.k(kv)).softmax(dim=1)
        return torch.cat([cls, weights * self.v(kv)], dim=1)


@register("gltrans")
class GLTrans(GridTransformer):
    def __init__(self, in_dim: int = 1024, n_classes: int = 2, dim: int = 512, dropout: float = 0.1,
                 random_padding: bool = False, score_method: str = "integrated_gradients", score_steps: int = 16,
                 placement: str = "sequence"):
        super().__init__(in_dim, n_classes, dim, dropout, random_padding, score_method, score_steps, placement)
        self.local = LocalBranch(dim)
        self.glob = GlobalBranch(dim)

    def mix(self, tokens: torch.Tensor, layout: Layout) -> torch.Tensor:
        return self.local(tokens, layout) + self.glob(tokens, layout)

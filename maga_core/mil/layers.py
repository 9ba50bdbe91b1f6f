"""Building blocks shared by the aggregators: a pre-norm Nystrom attention block, square-grid padding,
the gated attention of CLAM/ABMIL and integrated-gradients instance scores."""

from __future__ import annotations

import dataclasses

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from nystrom_attention import NystromAttention
from torch import nn


def pinv_per_bag(a: torch.Tensor, iters: int) -> torch.Tensor:
    """Iterative Moore-Penrose inverse of `a [B, heads, m, m]` (the Nystromformer paper's iteration),
    started from `a^T` over the largest row sum times the largest column sum of each bag's matrices.

    The nystrom_attention package takes that start scale over the whole tensor, which ties the bags of a
    batch together (outputs then differ from one bag at a time by up to ~1e-2); per bag, a batch
    reproduces its bags one at a time, and one bag reproduces the package.
    """
    absa = a.abs()
    scale = absa.sum(-1).amax(dim=(1, 2)) * absa.sum(-2).amax(dim=(1, 2))
    z = a.transpose(-2, -1) / scale[:, None, None, None]
    eye = torch.eye(a.shape[-1], device=a.device)
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


class BagNystromAttention(NystromAttention):
    """The package's Nystrom attention (same parameters, so upstream weights load), for one bag exactly
    the package's forward; a batch of bags runs the same steps with `pinv_per_bag`, so that no bag's
    output depends on the others in its batch."""

    def forward(self, x: torch.Tensor, return_attn_matrices: bool = False):
        if x.shape[0] == 1:
            return super().forward(x, return_attn_matrices=return_attn_matrices)
        if return_attn_matrices:
            raise ValueError("attention matrices are given for one bag at a time")
        return self._batch_forward(x)

    def _batch_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Landmarks: means of consecutive runs of tokens, the sequence zero-padded at the front to a
        multiple of the landmark count; softmax kernels; the depthwise residual convolution of values."""
        n, m = x.shape[1], self.num_landmarks
        x = F.pad(x, (0, 0, (-n) % m, 0))
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        q = q * self.scale
        run = x.shape[1] // m
        q_land, k_land = (t.unflatten(2, (m, run)).sum(3) / run for t in (q, k))
        a1 = (q @ k_land.transpose(-2, -1)).softmax(dim=-1)
        a2 = (q_land @ k_land.transpose(-2, -1)).softmax(dim=-1)
        a3 = (q_land @ k.transpose(-2, -1)).softmax(dim=-1)
        out = (a1 @ pinv_per_bag(a2, self.pinv_iterations)) @ (a3 @ v)
        if self.residual:
            out = out + self.res_conv(v)
        return self.to_out(out.transpose(1, 2).flatten(2))[:, -n:]


class NystromBlock(nn.Module):
    """x + NystromAttention(LayerNorm(x)): the transformer layer of TransMIL and GLTrans.

    Settings are those of both upstream models: dim_head = dim/8 with 8 heads, dim/2 landmarks,
    6 Moore-Penrose iterations, the depthwise residual convolution over values (kernel 33) and
    dropout 0.1 after the output projection.
    """

    def __init__(self, dim: int = 512, dropout: float = 0.1):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = BagNystromAttention(
            dim=dim,
            dim_head=dim // 8,
            heads=8,
            num_landmarks=dim // 2,
            pinv_iterations=6,
            residual=True,
            dropout=dropout,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.norm(x))

    def first_token_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Head-averaged Nystrom attention of the first token (the class token) over all tokens, `[L]`.

        Only the one row is formed from the three Nystrom factors (never the L x L matrix), so memory
        stays linear in the bag size. NystromAttention pads the sequence at the front to a multiple of
        its landmarks; those rows are skipped.
        """
        n = x.shape[1]
        _, (a1, a2_inv, a3) = self.attn(self.norm(x), return_attn_matrices=True)
        front = a1.shape[2] - n
        row = a1[:, :, front:front + 1] @ a2_inv @ a3  # [1, heads, 1, padded L]
        return row[0, :, 0, front:].mean(dim=0)


def grid_side(n: int) -> int:
    """Side of the smallest square grid holding n instances."""
    return math.isqrt(n - 1) + 1 if n > 0 else 0


def square_index(n: int, random: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Row indices `[side^2]` that pad a bag of n instances to a square grid by duplicating instances:
    0..n-1, then the duplicates.

    Deterministic by default (repeat the first instances, as TransMIL does), so that a model's output
    for a bag does not depend on a random draw; `random=True` draws the duplicates like upstream
    GLTrans. Duplicating (never zero-filling) keeps padding in the feature distribution.
    """
    extra = grid_side(n) ** 2 - n
    if random:
        dup = torch.randint(0, n, (extra,), generator=generator)
    else:
        dup = torch.arange(extra) % n
    return torch.cat([torch.arange(n), dup])


PLACEMENTS = ("sequence", "coords")


@dataclass
class Layout:
    """Where the tokens of a bag sit on the 2-D grid that the convolutions of TransMIL/GLTrans see.

    `index [L]`: the instance behind each token (padding repeats instances); `cells [L]`: each token's
    cell in the row-major `height x width` grid. Cells no token fills hold zeros.
    """

    index: torch.Tensor
    cells: torch.Tensor
    height: int
    width: int

    @classmethod
    def sequence(cls, n: int, random: bool = False) -> "Layout":
        """Upstream's: the bag padded to a square (`square_index`) and folded into it row by row, in bag
        order, whatever the tissue geometry."""
        side = grid_side(n)
        return cls(square_index(n, random), torch.arange(side * side), side, side)

    @classmethod
    def from_coords(cls, coords: torch.Tensor) -> "Layout":
        """Each instance at its tissue position: level-0 (x, y) divided by the grid step (the smallest
        gap between distinct coordinates), no padding, tokens in row-major order of their cells, so the
        order of the bag does not matter. Two instances on one cell share it (their sum is convolved)."""
        xy = coords.to(torch.float64)
        steps = [torch.diff(torch.unique(xy[:, k])) for k in (0, 1)]
        gaps = torch.cat(steps)
        step = float(gaps[gaps > 0].min()) if (gaps > 0).any() else 1.0
        col = torch.round((xy[:, 0] - xy[:, 0].min()) / step).long()
        row = torch.round((xy[:, 1] - xy[:, 1].min()) / step).long()
        height, width = int(row.max()) + 1, int(col.max()) + 1
        flat = row * width + col
        order = torch.argsort(flat, stable=True)
        return cls(order, flat[order], height, width)

    def to(self, device: torch.device | str) -> "Layout":
        """The same layout with its index tensors on `device`."""
        return dataclasses.replace(self, index=self.index.to(device), cells=self.cells.to(device))

    def to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """`[B, L, C]` tokens -> `[B, C, height, width]` image."""
        b, _, c = tokens.shape
        grid = tokens.new_zeros(b, c, self.height * self.width)
        grid = grid.index_add(2, self.cells, tokens.transpose(1, 2))
        return grid.reshape(b, c, self.height, self.width)

    def from_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """`[B, C, height, width]` -> the `[B, L, C]` tokens at this layout's cells."""
        return grid.flatten(2)[:, :, self.cells].transpose(1, 2)


class GatedAttention(nn.Module):
    """Gated attention of Ilse et al. (2018): c(tanh(a(h)) * sigmoid(b(h))) gives K raw scores per instance."""

    def __init__(self, dim: int = 512, hidden: int = 256, n_branches: int = 1, dropout: float = 0.25):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.b = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.c = nn.Linear(hidden, n_branches)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """`[..., N, dim]` -> pre-softmax attention `[..., K, N]`."""
        return self.c(self.a(h) * self.b(h)).transpose(-2, -1)


def integrated_gradients(
    logits_fn: Callable[[torch.Tensor], torch.Tensor], features: torch.Tensor, target: int | None = None,
    steps: int = 16,
) -> torch.Tensor:
    """Per-instance integrated gradients (Sundararajan et al., 2017) of the class margin.

    The margin is the target logit minus the mean logit (target: the predicted class unless given),
    so a shift shared by all classes carries no relevance. The path runs from a bag of identical
    average instances (every instance replaced by the bag mean: "nothing stands out") to the bag, in
    `steps` midpoint steps; an instance's score is its summed attribution over feature dimensions.
    Integrating, rather than taking one gradient, keeps instances whose effect saturates (a second
    tumour instance when one already convinces the model) from scoring near zero or negative.
    """
    x = features.detach()
    baseline = x.mean(dim=0, keepdim=True).expand_as(x)
    with torch.no_grad():
        logits = logits_fn(x)
    cls = int(logits.argmax(dim=1)[0]) if target is None else int(target)
    total = torch.zeros_like(x)
    with torch.enable_grad():
        for alpha in (torch.arange(steps, dtype=x.dtype) + 0.5) / steps:
            point = (baseline + alpha * (x - baseline)).requires_grad_(True)
            out = logits_fn(point)
            (grad,) = torch.autograd.grad(out[0, cls] - out[0].mean(), point)
            total += grad
    return ((x - baseline) * total / steps).sum(dim=-1)

"""`patches.rescale` on a batch of images on any torch device: the same convolution resampling (box
filter when shrinking by 2x or more, Lanczos otherwise, `patches.resample_filter`), written as one
weight matrix per axis, so a GPU makes magnification views of a whole batch in two matrix products
instead of each image going through PIL on a host core.

The weights follow the definition of separable convolution resampling (output pixel i is centred at
(i + 0.5) * scale in the input; the kernel is stretched by the reduction when shrinking and
normalised to sum 1), applied width first, then height, each pass rounded to uint8 as PIL does. PIL
sums in 22-bit fixed point and we in float32, so a pixel may differ by one grey level
(tests/core/test_device_views.py proves no more)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from maga_core.slides.patches import resample_filter

_KERNELS = {  # filter -> (support at scale 1, kernel)
    Image.Resampling.BOX: (0.5, lambda x: ((x > -0.5) & (x <= 0.5)).astype(np.float64)),
    Image.Resampling.LANCZOS: (3.0, lambda x: np.where(np.abs(x) < 3.0, np.sinc(x) * np.sinc(x / 3.0), 0.0)),
}


@lru_cache(maxsize=64)
def resample_weights(n_in: int, n_out: int, kind: Image.Resampling) -> np.ndarray:
    """float32 [n_out, n_in]: output pixel i = sum_j W[i, j] * input pixel j along one axis."""
    support, kernel = _KERNELS[kind]
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    support *= stretch
    weights = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        k = kernel((np.arange(lo, hi) - centre + 0.5) / stretch)
        total = k.sum()
        weights[i, lo:hi] = k / total if total else k
    return weights.astype(np.float32)


def _round_u8(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x + 0.5).clamp_(0, 255)


def rescale_batch(images: torch.Tensor, scale: float) -> torch.Tensor:
    """uint8 [N,H,W,3] on any device -> uint8 [N,h,w,3] resampled by `scale` on that device: what
    `patches.rescale` gives for each image (sides rounded the same way; unchanged at scale 1)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"expected a uint8 [N,H,W,3] batch, got {images.dtype} {tuple(images.shape)}")
    _, h, w, _ = images.shape
    out_w, out_h = max(1, round(w * scale)), max(1, round(h * scale))
    if (out_w, out_h) == (w, h):
        return images
    x = images.float()
    kind = resample_filter(1.0 / scale)
    if out_w != w:  # width first, rounded to whole grey levels (as PIL's first pass)
        wx = torch.from_numpy(resample_weights(w, out_w, kind)).to(x.device)
        x = _round_u8(torch.einsum("jw,nhwc->nhjc", wx, x))
    if out_h != h:
        wy = torch.from_numpy(resample_weights(h, out_h, kind)).to(x.device)
        x = _round_u8(torch.einsum("ih,nhjc->nijc", wy, x))
    return x.to(torch.uint8)


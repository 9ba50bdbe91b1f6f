"""Augmentations that mimic the variation between institutions: stain (HED jitter after Tellez et al.
2018), colour cast, focus (Gaussian blur), scanner compression (JPEG quality) and magnification
(random-resized crop). Geometry is shared by teacher and student views; the photometric part is applied
to the student's view only, so the student learns the teacher's embedding of the clean tile from a
perturbed copy of it: that is what should raise the robustness index.

Every draw comes from an explicit numpy Generator, so a (seed, epoch, tile) triple always gives the same
image (deterministic, resumable mid-run).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter
from skimage.color import hed2rgb, rgb2hed

from maga_core.encoders.mobilenet import resize_tile


@dataclass
class AugmentConfig:
    enabled: bool = True
    crop_scale: tuple[float, float] = (0.5, 1.0)   # area fraction kept by the random-resized crop
    flip_rotate: bool = True                       # the 8 dihedral symmetries (tissue has no up)
    hed_scale: float = 0.1                         # HED optical-density scale 1 ± hed_scale
    hed_shift: float = 0.01                        # and shift ± hed_shift (skimage's H, E std ~0.03)
    hed_p: float = 0.8
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.15
    hue: float = 0.04                              # fraction of the hue circle
    color_p: float = 0.8
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    blur_p: float = 0.3
    jpeg_quality: tuple[int, int] = (30, 95)
    jpeg_p: float = 0.5


def geometric_view(img: np.ndarray, px: int, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """A random-resized, flipped/rotated crop of `img` (uint8 HxWx3) at px x px."""
    h, w = img.shape[:2]
    if cfg.enabled:
        area = h * w * rng.uniform(*cfg.crop_scale)
        side = int(round(min(h, w, np.sqrt(area))))
        y0 = int(rng.integers(0, h - side + 1))
        x0 = int(rng.integers(0, w - side + 1))
        img = img[y0:y0 + side, x0:x0 + side]
        if cfg.flip_rotate:
            img = np.rot90(img, int(rng.integers(0, 4)))
            if rng.random() < 0.5:
                img = img[:, ::-1]
    return resize_tile(np.ascontiguousarray(img), px)


def hed_jitter(img: np.ndarray, scale: float, shift: float, rng: np.random.Generator) -> np.ndarray:
    """Scale and shift the haematoxylin, eosin and DAB optical densities independently."""
    hed = rgb2hed(img)
    alpha = rng.uniform(1 - scale, 1 + scale, size=3)
    beta = rng.uniform(-shift, shift, size=3)
    rgb = hed2rgb(hed * alpha + beta)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ).astype(np.float32)


def color_jitter(img: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, saturation and hue (a rotation of the YIQ chroma plane), in random order.
    Written in numpy because torchvision's uint8 hue adjustment costs ~0.2 s a tile on this CPU."""
    x = img.astype(np.float32) / 255.0

    def brightness(x):
        return x * rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)

    def contrast(x):
        mean = float((x @ _GRAY).mean())
        return mean + (x - mean) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)

    def saturation(x):
        gray = (x @ _GRAY)[..., None]
        return gray + (x - gray) * rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)

    def hue(x):
        theta = 2 * np.pi * rng.uniform(-cfg.hue, cfg.hue)
        c, s = np.cos(theta), np.sin(theta)
        rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=np.float32)
        return x @ (_YIQ2RGB @ rot @ _RGB2YIQ).T

    ops = (brightness, contrast, saturation, hue)
    for i in rng.permutation(len(ops)):
        x = np.clip(ops[i](x), 0.0, 1.0)
    return (x * 255 + 0.5).astype(np.uint8)


def photometric(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Stain, colour, blur and compression variation of a uint8 HxWx3 tile."""
    if not cfg.enabled:
        return img
    if rng.random() < cfg.hed_p:
        img = hed_jitter(img, cfg.hed_scale, cfg.hed_shift, rng)
    if rng.random() < cfg.color_p:
        img = color_jitter(img, cfg, rng)
    pil = Image.fromarray(img)
    if rng.random() < cfg.blur_p:
        pil = pil.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(*cfg.blur_sigma))))
    if rng.random() < cfg.jpeg_p:
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)))
        pil = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(pil)

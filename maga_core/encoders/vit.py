"""Histopathology transformers from a local checkpoint (timm ViT / Swin), so MAGA applies to them as the
paper's Fig. 1f does: UNI (ViT-L/16) and CTransPath (Swin-T with a convolutional stem).

Their weights are gated or not redistributable, so nothing is downloaded: the file is looked for under
`encoders.weights_dir()` (env MAGA_WEIGHTS_DIR) or passed as weights=PATH; a missing file is a one-line
error naming it. Taps are token maps reshaped to [B, C, h, w], so the teacher's maps pool onto a
low-magnification student's smaller grid exactly like convolutional maps do."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch import nn

from maga_core.encoders.base import Encoder
from maga_core.encoders.registry import EncoderSpec, file_sha256, weights_dir
from maga_core.errors import MagaError

_HOW_TO_GET = {
    "uni_vitl16": "download pytorch_model.bin from huggingface.co/MahmoodLab/UNI (gated: accept its terms)",
    "ctranspath": "download ctranspath.pth from the TransPath release (github.com/Xiyue-Wang/TransPath)",
}


class ConvStem(nn.Module):
    """CTransPath's patch embedding: two stride-2 3x3 conv+BN+ReLU, a 1x1 projection, LayerNorm (NHWC out).

    Accepts the keyword arguments timm passes to a Swin patch-embedding layer."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=96, norm_layer=None,
                 strict_img_size=True, output_fmt="NHWC", **_):
        super().__init__()
        assert patch_size == 4, "the convolutional stem reduces by 4"
        img = img_size if isinstance(img_size, tuple) else (img_size, img_size)
        self.img_size, self.patch_size = img, (4, 4)
        self.grid_size = (img[0] // 4, img[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        c1, c2 = embed_dim // 8, embed_dim // 4
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, c1, 3, 2, 1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, 2, 1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(inplace=True),
            nn.Conv2d(c2, embed_dim, 1),
        )
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def feat_ratio(self, as_scalar=True):
        return 4 if as_scalar else (4, 4)

    def dynamic_feat_size(self, img_size):
        return img_size[0] // 4, img_size[1] // 4

    def forward(self, x):
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ViTEncoder(Encoder):
    """Taps `blocks.i` (token maps without prefix tokens) and `pooled` (the model's own pooled output)."""

    def tap_names(self) -> list[str]:
        return [f"blocks.{i}" for i in range(len(self.model.blocks))] + ["pooled"]

    def _run(self, x, keep):
        m = self.model
        out = {}
        h, w = x.shape[-2] // m.patch_embed.patch_size[0], x.shape[-1] // m.patch_embed.patch_size[1]
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        for i, blk in enumerate(m.blocks):
            x = blk(x)
            if keep is None or f"blocks.{i}" in keep:
                tokens = x[:, m.num_prefix_tokens:]
                out[f"blocks.{i}"] = tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        out["pooled"] = m.forward_head(m.norm(x), pre_logits=True)
        return out


class SwinEncoder(Encoder):
    """Taps `layers.i` (stage maps, NCHW) and `pooled` (final norm + average pool)."""

    def tap_names(self) -> list[str]:
        return [f"layers.{i}" for i in range(len(self.model.layers))] + ["pooled"]

    def _run(self, x, keep):
        m = self.model
        out = {}
        x = m.patch_embed(x)
        for i, layer in enumerate(m.layers):
            x = layer(x)
            if keep is None or f"layers.{i}" in keep:
                out[f"layers.{i}"] = x.permute(0, 3, 1, 2)
        out["pooled"] = m.forward_head(m.norm(x), pre_logits=True)
        return out


def _load_checkpoint(spec: EncoderSpec, model: nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise MagaError(f"cannot read checkpoint ({type(exc).__name__})", path) from None
    for key in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if spec.options.get("conv_stem"):
        from timm.models.swin_transformer import checkpoint_filter_fn

        state = checkpoint_filter_fn(state, model)  # older timm Swin naming -> current
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise MagaError(f"checkpoint does not fit {spec.arch}: missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]} ({len(missing)} / {len(unexpected)})", path)


def build(spec: EncoderSpec, weights: str | Path | None = None) -> Encoder:
    import timm

    kwargs = dict(spec.options.get("kwargs", {}))
    if spec.options.get("conv_stem"):
        kwargs["embed_layer"] = partial(ConvStem)
    path = None
    if weights != "random":
        path = Path(weights) if weights is not None else weights_dir() / spec.options["file"]
        if not path.is_file():
            raise MagaError(f"{spec.name} weights not found: {_HOW_TO_GET.get(spec.name, 'provide the checkpoint')}"
                            f" and put it here (or pass weights=PATH)", path)
    model = timm.create_model(spec.options["timm"], pretrained=False, num_classes=0, **kwargs)
    if path is None:
        ident = {"source": "random init", "sha256": ""}
    else:
        _load_checkpoint(spec, model, path)
        ident = {"source": str(path), "sha256": file_sha256(path)}
    cls = SwinEncoder if hasattr(model, "layers") else ViTEncoder
    return cls(spec, model.eval(), ident)

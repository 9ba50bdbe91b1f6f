"""`resnet50_trunc`: torchvision ResNet50 up to layer3 + global average pooling (1024-d), the feature
convention of CLAM and MAGA-GLTrans. Weights: a local file, else torchvision's cache, else torchvision's
weights API (needs a network); offline without a file is a one-line error saying where to put it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from maga_core.encoders.base import Encoder, load_torch_file
from maga_core.encoders.registry import EncoderSpec, file_sha256
from maga_core.errors import MagaError


class ResNetTruncEncoder(Encoder):
    """Taps: `stem` (after max-pool), `layer1`, `layer2`, `layer3`, `pooled`."""

    def tap_names(self) -> list[str]:
        return ["stem", "layer1", "layer2", "layer3", "pooled"]

    def _run(self, x, keep):
        m = self.model
        out = {}
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        if keep is None or "stem" in keep:
            out["stem"] = x
        for name in ("layer1", "layer2", "layer3"):
            x = getattr(m, name)(x)
            if keep is None or name in keep:
                out[name] = x
        out["pooled"] = x.mean(dim=(2, 3))
        return out


def _default_weight_file(spec: EncoderSpec) -> tuple[Path, str]:
    """torchvision's cached file, downloading it through the weights API when a network is there."""
    from torchvision.models import ResNet50_Weights

    cached = Path(torch.hub.get_dir()) / "checkpoints" / spec.options["file"]
    if not cached.is_file():
        try:
            ResNet50_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
        except Exception:  # noqa: BLE001 - offline, proxy, DNS...: all mean "not available here"
            raise MagaError(
                "ResNet50 ImageNet weights are missing and cannot be downloaded (offline): put "
                f"{spec.options['file']} (from {ResNet50_Weights.IMAGENET1K_V1.url}) there, or pass weights=PATH",
                cached) from None
    return cached, f"torchvision ResNet50_Weights.IMAGENET1K_V1 ({spec.options['file']})"


def build(spec: EncoderSpec, weights: str | Path | None = None) -> ResNetTruncEncoder:
    from torchvision.models import resnet50

    model = resnet50(weights=None)
    model.layer4 = nn.Identity()
    model.fc = nn.Identity()
    if weights == "random":
        ident = {"source": "random init", "sha256": ""}
    else:
        if weights is None:
            path, source = _default_weight_file(spec)
        else:
            path, source = Path(weights), str(weights)
            if not path.is_file():
                raise MagaError("ResNet50 weight file not found", path)
        state = load_torch_file(path, "weights")
        state = {k: v for k, v in state.items() if not k.startswith(("layer4.", "fc."))}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise MagaError(f"not a torchvision ResNet50 state dict ({str(exc).splitlines()[0]})", path) from None
        ident = {"source": source, "sha256": file_sha256(path)}
    return ResNetTruncEncoder(spec, model.eval(), ident)

"""Small student encoders for distillation, and the loader that turns a `maga distill` checkpoint into a
registry encoder.

The student is timm's MobileNetV2 at width 0.5 (`mobilenetv2_050`): the same inverted-residual family as
EfficientNet-Lite (ReLU6, no squeeze-excitation, the same 7 stages at the same strides), so the same
Encoder class, taps and MAGA loss apply to it. It has 687,680 parameters without a classifier, 14.3% of
EfficientNet-Lite2's 4,811,072. No ImageNet weights for it can be reached offline, so it starts from a
seeded random initialisation: the undistilled baseline is exactly that initialisation.

Two registry entries are added (`encoders.register`), both built by this module (its `build` is a
registry family function): `mobilenetv2_050` (architecture, random init, or a distilled checkpoint) and
`distilled` (a checkpoint written by `maga.distill.train`; `weights=` is its path), so a distilled
student is an encoder everywhere (extraction, MAGA, MIL) through `encoders.build`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from maga_core.encoders.base import Normalize, load_torch_file
from maga_core.encoders.efficientnet import EfficientNetEncoder
from maga_core.encoders.registry import TFLITE_MEAN, TFLITE_STD, EncoderSpec, file_sha256, register
from maga_core.errors import MagaError

CHECKPOINT_FORMAT = "maga-distill-student/1"
FAMILY = "mobilenet"

STUDENT_SPECS = {
    "mobilenetv2_050": EncoderSpec(
        name="mobilenetv2_050", family=FAMILY, arch="timm mobilenetv2_050 (width 0.5)",
        weights="random init (seeded); a `maga distill` checkpoint via weights=PATH",
        license="Apache-2.0 (timm)", dim=1280, input_px=224, input_mag=None,
        mean=TFLITE_MEAN, std=TFLITE_STD,
        taps=("blocks.1", "blocks.2", "blocks.4"), options={"timm": "mobilenetv2_050"},
        notes="G2L student: 14.3% of EfficientNet-Lite2's parameters; taps at strides 4/8/16",
    ),
}
DISTILLED_SPEC = dataclasses.replace(
    STUDENT_SPECS["mobilenetv2_050"], name="distilled", arch="student architecture named in the checkpoint",
    weights="checkpoint from `maga distill` (weights=PATH, required)",
    notes="a distilled student; input size and normalisation come from the checkpoint",
)
for _spec in (*STUDENT_SPECS.values(), DISTILLED_SPEC):
    register(_spec)


def resize_tile(img: np.ndarray, px: int) -> np.ndarray:
    """uint8 HxWx3 -> px x px (PIL bilinear, antialiased when shrinking); unchanged if already px."""
    if img.shape[0] == px and img.shape[1] == px:
        return img
    return np.asarray(Image.fromarray(img).resize((px, px), Image.BILINEAR))


class TeacherProjection:
    """The trained linear map from the student's embedding into the teacher's feature space (targets were
    standardised, so the map's output is de-standardised). A plain callable, not a submodule, so the
    deployed student's parameter count and state dict hold the student alone."""

    def __init__(self, linear: nn.Linear, mean: torch.Tensor, std: torch.Tensor):
        self.linear, self.mean, self.std = linear.eval(), mean, std

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.linear(features) * self.std + self.mean


class Prepare:
    """uint8 tiles (list or [B,H,W,3]) -> the student's normalized input: each tile resized to input_px
    (PIL bilinear, antialiased), then normalized. The trainer feeds the student through this object."""

    def __init__(self, input_px: int, mean, std):
        self.input_px = int(input_px)
        self.norm = Normalize(mean, std)

    def __call__(self, tiles) -> torch.Tensor:
        batch = np.stack([resize_tile(np.asarray(t, dtype=np.uint8), self.input_px) for t in tiles])
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
        return self.norm.normalize(x)


def _architecture(spec: EncoderSpec, seed: int | None) -> EfficientNetEncoder:
    import timm

    if seed is not None:
        torch.manual_seed(seed)
    model = timm.create_model(spec.options["timm"], pretrained=False, num_classes=0)
    return EfficientNetEncoder(spec, model, {"source": f"random init (seed {seed})", "sha256": ""})


def build(spec: EncoderSpec, weights: str | Path | None = None, seed: int | None = 0) -> EfficientNetEncoder:
    """Registry family function. weights None/"random": the seeded random initialisation (the
    undistilled student); a path: a distilled checkpoint (required for `distilled`)."""
    if weights in (None, "random"):
        if spec.name == DISTILLED_SPEC.name:
            raise MagaError("the `distilled` encoder needs weights=PATH of a `maga distill` checkpoint", spec.name)
        enc = _architecture(spec, seed)
        enc.prepare = Prepare(spec.input_px, spec.mean, spec.std)
        return enc.eval()
    return load_student(weights)


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MagaError("distilled student checkpoint not found", path)
    state = load_torch_file(path, "checkpoint", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise MagaError(f"not a distilled student checkpoint (expected format {CHECKPOINT_FORMAT})", path)
    return state


def load_student(path: str | Path) -> EfficientNetEncoder:
    """A distilled student as an Encoder (forward -> its own [B, dim] embedding, as deployed), with
    `.prepare`, `.input_px`, `.to_teacher_space` (student -> teacher features, as trained), `.teacher`,
    `.sha256`, `.config`, `.history`."""
    state = read_checkpoint(path)
    base = STUDENT_SPECS.get(state["student_arch"])
    if base is None:
        raise MagaError(f"unknown student architecture {state['student_arch']!r}", path)
    spec = dataclasses.replace(
        base, name=DISTILLED_SPEC.name, input_px=int(state["input_px"]), mean=tuple(state["mean"]),
        std=tuple(state["std"]), weights=f"distilled from {state['teacher']['name']} ({Path(path).name})",
        notes=f"student {base.name}; teacher {state['teacher']['name']}",
    )
    enc = _architecture(spec, seed=None)
    enc.model.load_state_dict(state["student"])
    enc.weights_id = {"source": str(path), "sha256": file_sha256(path)}
    enc.sha256 = enc.weights_id["sha256"]
    enc.prepare = Prepare(spec.input_px, spec.mean, spec.std)
    enc.input_px = spec.input_px
    enc.input_mag = spec.input_mag
    proj = nn.Linear(*state["projection"]["weight"].shape[::-1])
    proj.load_state_dict(state["projection"])
    enc.to_teacher_space = TeacherProjection(proj, state["target_mean"], state["target_std"])
    enc.teacher = state["teacher"]
    enc.config = state["config"]
    enc.history = state["history"]
    enc.checkpoint = Path(path)
    return enc.eval()

"""A MAGA student's input pipeline and loading a trained student from its checkpoint.

The same `InputPipeline` object turns low-magnification uint8 patches into the student's input during
training and at inference, so the two cannot drift apart (upstream trained on 64->256 nearest-upsampled
patches but inferred on bicubic 64 px patches)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from maga_core.encoders.base import Encoder, Normalize, load_torch_file
from maga_core.encoders.registry import build, file_sha256
from maga_core.errors import MagaError

MODES = ("native", "upsample")
CHECKPOINT_FORMAT = "maga-student/1"


@dataclass(frozen=True)
class InputPipeline:
    """uint8 patches at the student's magnification -> the student's normalized input batch.

    native: the patch as read (64 px for a 256 px 20x patch at 5x; 56 px for a 224 px one).
    upsample: the patch resized back by teacher_px / input_px (the magnification ratio) with `interp`, so
    the network runs at the teacher's cost. `input_px` / `teacher_px` are the nominal sizes of the 128 um
    square; patches of other sizes are never resampled here (the views already are what training saw)."""

    mode: str
    input_px: int
    teacher_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interp: str = "bilinear"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    @property
    def network_px(self) -> int:
        return self.input_px if self.mode == "native" else self.teacher_px

    def __call__(self, patches) -> torch.Tensor:
        """patches: uint8 [B,h,w,3] (array, list of same-size HxWx3, or a tensor on any device: the
        result stays there, so extraction normalises and resizes on the GPU)."""
        if isinstance(patches, torch.Tensor):
            batch = patches
        else:
            arr = patches if isinstance(patches, np.ndarray) else np.stack([np.asarray(p) for p in patches])
            batch = torch.from_numpy(np.array(arr))  # a writable copy
        if batch.dtype != torch.uint8 or batch.ndim != 4:
            raise TypeError(f"expected uint8 [B,h,w,3] patches, got {batch.dtype} {tuple(batch.shape)}")
        x = batch.permute(0, 3, 1, 2).float().div_(255.0)
        if self.mode == "upsample":
            size = [round(s * self.teacher_px / self.input_px) for s in x.shape[-2:]]
            x = F.interpolate(x, size=size, mode=self.interp,
                              align_corners=False if self.interp in ("bilinear", "bicubic") else None)
        return Normalize(self.mean, self.std).normalize(x)


def load_student(ckpt: str | Path) -> Encoder:
    """A trained student: an Encoder with `.input_mag`, `.input_px`, `.mode`, `.prepare` (the training
    pipeline), `.sha256` (of the checkpoint file), `.teacher` (the teacher's identity), `.config`, `.history`,
    `.loss_weights` (per tap) and `.n_tiles` (trained on)."""
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise MagaError("MAGA student checkpoint not found", ckpt)
    state = load_torch_file(ckpt, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise MagaError(f"not a MAGA student checkpoint (expected format {CHECKPOINT_FORMAT})", ckpt)
    if not state.get("finished"):
        raise MagaError(f"training stopped after epoch {state.get('epoch')} of {state['config']['epochs']};"
                        " resume it with `maga align` before use", ckpt)
    cfg = state["config"]
    student = build(cfg["teacher"], weights="random")
    student.load_state_dict(state["student"])
    student.eval()
    student.prepare = InputPipeline(**state["pipeline"])
    student.input_mag = float(cfg["mag"])
    student.input_px = student.prepare.input_px
    student.mode = student.prepare.mode
    student.sha256 = file_sha256(ckpt)
    student.teacher = state["teacher"]
    student.config = cfg
    student.history = state["history"]
    student.loss_weights = state["loss_weights"]
    student.n_tiles = state["tiles"]["n"]
    student.checkpoint = ckpt
    return student


def pipeline_dict(p: InputPipeline) -> dict:
    return asdict(p)

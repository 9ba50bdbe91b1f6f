"""MAGA magnification alignment: loss, trainer, students, cached students and the real-data probe."""

from maga_core.align.loss import MagaLoss, resolve_weights
from maga_core.align.student import InputPipeline, load_student
from maga_core.align.train import AlignConfig, train
from maga_core.align.views import low_mag_view, view_at_mag

__all__ = ["AlignConfig", "InputPipeline", "MagaLoss", "load_student", "low_mag_view",
           "resolve_weights", "train", "view_at_mag"]

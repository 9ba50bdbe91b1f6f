"""Feature settings, in one place: what "20x", "5x", "5x_up" and "5x_maga" mean for extraction. The
evidence run (maga.experiments.mil) and the cohort pipeline (maga.cohort_pipeline) both read them here."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from maga_core.errors import MagaError

SETTINGS = {"20x": "20x", "5x": "5x", "5x_up": "5x upsampled", "5x_maga": "5x+MAGA"}  # folder -> display name


def setting_kwargs(setting: str, student: Callable[[], str | Path],
                   allowed: Sequence[str] = tuple(SETTINGS)) -> dict[str, Any]:
    """Extraction arguments of a setting: its magnification, 5x upsampled back to 256 px, or the MAGA
    student (`student()` is called, and may train it, only for 5x_maga)."""
    if setting not in allowed:
        raise MagaError(f"unknown setting {setting!r} (choose from {', '.join(allowed)})")
    if setting == "5x_maga":
        return {"student": str(student())}
    return {"20x": {"mag": 20.0}, "5x": {"mag": 5.0}, "5x_up": {"mag": 5.0, "upsample_px": 256}}[setting]

"""Notebook presets (smoke / demo / full) from notebooks/presets.yaml, and the shared runs folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from maga_core.errors import MagaError

REPO_ROOT = Path(__file__).resolve().parents[1]
PRESETS_FILE = REPO_ROOT / "notebooks" / "presets.yaml"
PRESET_NAMES = ("smoke", "demo", "full")


def resolve(notebook: str, preset: str, **overrides: Any) -> dict[str, Any]:
    """Settings of one notebook under a preset; overrides that are not None win."""
    if preset not in PRESET_NAMES:
        raise MagaError(f"unknown preset {preset!r} (choose one of {', '.join(PRESET_NAMES)})", PRESETS_FILE)
    table = yaml.safe_load(PRESETS_FILE.read_text()) or {}
    if notebook not in table:
        raise MagaError(f"no presets for notebook {notebook!r}", PRESETS_FILE)
    block = table[notebook]
    settings = {**block.get("common", {}), **(block.get(preset) or {})}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    settings["preset"] = preset
    return settings


def runs_dir(preset: str | None = None) -> Path:
    """Where chapters cache artifacts they share (env MAGA_RUNS_DIR, default <repo>/runs/<preset>)."""
    root = Path(os.environ.get("MAGA_RUNS_DIR", REPO_ROOT / "runs"))
    path = root / preset if preset else root
    path.mkdir(parents=True, exist_ok=True)
    return path

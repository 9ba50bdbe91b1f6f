"""Notebook presets (smoke / demo / full) from notebooks/presets.yaml, and the shared runs folder.

A chapter's first code cell after its `parameters` cell is `P = resolve("NN_name", preset, **overrides)`.
resolve() also remembers the preset, so that maga_core's "ensure_..." functions called later in the same
kernel cache their artifacts under runs/<preset>/ without every call passing the preset along.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from maga_core.errors import MagaError

REPO_ROOT = Path(__file__).resolve().parents[1]
PRESETS_FILE = REPO_ROOT / "notebooks" / "presets.yaml"
PRESET_NAMES = ("smoke", "demo", "full")

_current_preset: str | None = None


def load_table(path: Path = PRESETS_FILE) -> dict[str, Any]:
    """The whole presets file; a malformed file is a one-line error naming it."""
    try:
        table = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise MagaError("presets file not found", path) from None
    except yaml.YAMLError as exc:
        raise MagaError(f"not valid YAML ({str(exc).splitlines()[0]})", path) from None
    if not isinstance(table, dict):
        raise MagaError("expected a mapping of notebook stems to presets", path)
    return table


def resolve(notebook: str, preset: str, **overrides: Any) -> dict[str, Any]:
    """Settings of one notebook under a preset; overrides that are not None win.

    `common` holds values shared by every preset of a notebook; the result carries `preset` too."""
    global _current_preset
    if preset not in PRESET_NAMES:
        raise MagaError(f"unknown preset {preset!r} (choose one of {', '.join(PRESET_NAMES)})", PRESETS_FILE)
    table = load_table()
    if notebook not in table:
        raise MagaError(f"no presets for notebook {notebook!r}", PRESETS_FILE)
    block = table[notebook] or {}
    if preset not in block and not block.get("common"):
        raise MagaError(f"notebook {notebook!r} has no {preset!r} preset", PRESETS_FILE)
    settings = {**(block.get("common") or {}), **(block.get(preset) or {})}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    settings["preset"] = preset
    _current_preset = preset
    return settings


def current_preset() -> str | None:
    """The preset of the latest resolve() in this process (None before any)."""
    return _current_preset


def runs_dir(preset: str | None = None) -> Path:
    """Where chapters cache artifacts they share: $MAGA_RUNS_DIR (default <repo>/runs), then the preset
    (given, else the one resolve() last saw), so smoke and demo artifacts never mix."""
    root = Path(os.environ.get("MAGA_RUNS_DIR") or REPO_ROOT / "runs")
    preset = preset or _current_preset
    path = root / preset if preset else root
    path.mkdir(parents=True, exist_ok=True)
    return path

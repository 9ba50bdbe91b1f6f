"""Notebook presets (smoke / demo / full), shipped in the package (`maga/presets.yaml`),
and the runs folder of a preset.

A chapter's first code cell after its `parameters` cell is `P = resolve("NN_name", preset, **overrides)`.
`P["runs"]` is the preset's runs folder; chapters pass it to every "ensure_..." function, so a library
call writes where its caller says, never where an earlier resolve() pointed.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from maga_core import locations
from maga_core.errors import MagaError

PRESETS_FILE = files("maga") / "presets.yaml"
PRESET_NAMES = ("smoke", "demo", "full")


def load_table() -> dict[str, Any]:
    """The whole presets file; a malformed file is a one-line error naming it."""
    try:
        table = yaml.safe_load(PRESETS_FILE.read_text()) or {}
    except FileNotFoundError:
        raise MagaError("presets file not found", PRESETS_FILE) from None
    except yaml.YAMLError as exc:
        raise MagaError(f"not valid YAML ({str(exc).splitlines()[0]})", PRESETS_FILE) from None
    if not isinstance(table, dict):
        raise MagaError("expected a mapping of notebook stems to presets", PRESETS_FILE)
    return table


def resolve(notebook: str, preset: str, **overrides: Any) -> dict[str, Any]:
    """Settings of one notebook under a preset; overrides that are not None win.

    `common` holds values shared by every preset of a notebook; the result carries `preset` and `runs`
    (`runs_dir(preset)` unless overridden) too."""
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
    settings["runs"] = Path(settings.get("runs") or runs_dir(preset))
    return settings


def runs_dir(preset: str) -> Path:
    """Where chapters of one preset cache the artifacts they share: the runs root
    (`locations.runs_root()`: $MAGA_RUNS_DIR, else runs/ of the checkout, else ./runs), then the preset,
    so smoke and demo artifacts never mix. Writers create the folders they write into."""
    return locations.runs_root().path / preset

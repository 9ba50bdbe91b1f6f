"""Magnification as data: microns-per-pixel (MPP) per magnification, patch sizes, and MPP resolution
from slide metadata (OpenSlide properties, TIFF resolution tags, OME-XML) or a user override.

A magnification is only a name for an MPP here (20x = 0.5 um/px), because scanners label the same
objective with different pixel sizes; everything downstream works from MPP."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from maga_core.errors import MagaError

MAG_TO_MPP: dict[float, float] = {20: 0.5, 10: 1.0, 5: 2.0, 2.5: 4.0}
# The same 128 um tissue square at every magnification.
PATCH_PX: dict[float, int] = {20: 256, 10: 128, 5: 64}

# Metadata values outside this range are defaults of image tools (72 dpi = 353 um/px), not scans.
PLAUSIBLE_MPP = (0.05, 20.0)
MPP_HINT = "pass it with --mpp (e.g. --mpp 0.5 for a 20x scan; open_slide(path, mpp=...) in Python)"


@dataclass(frozen=True)
class Resolution:
    """Resolved level-0 pixel size and objective power, with where each came from."""

    mpp: float
    mpp_source: str
    objective_power: float
    objective_source: str


def mpp_for_mag(mag: float) -> float:
    """um/px of a magnification: the table value, else 10 / mag (20x -> 0.5)."""
    return MAG_TO_MPP.get(mag, 10.0 / float(mag))


def mag_for_mpp(mpp: float) -> float:
    return 10.0 / float(mpp)


def patch_px_for_mag(mag: float) -> int:
    """Patch side that covers the standard 128 um square at `mag`."""
    if mag in PATCH_PX:
        return PATCH_PX[mag]
    return int(round(PATCH_PX[20] * mpp_for_mag(20) / mpp_for_mag(mag)))


def format_mag(mag: float) -> str:
    """20.0 -> '20', 2.5 -> '2.5' (folder and attribute names)."""
    return f"{mag:g}"


def parse_mags(text: str) -> list[float]:
    """'20,10,5' -> [20.0, 10.0, 5.0]; a bad list is a one-line error."""
    try:
        mags = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise MagaError(f"magnifications must be numbers separated by commas, got {text!r}") from None
    if not mags or any(not math.isfinite(m) or m <= 0 for m in mags):
        raise MagaError(f"magnifications must be positive numbers, got {text!r}")
    return mags


def _plausible(mpp: float | None) -> float | None:
    if mpp is None or not math.isfinite(mpp):
        return None
    return mpp if PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1] else None


def _float(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


def mpp_from_properties(props: Mapping[str, str]) -> float | None:
    """OpenSlide's normalised `openslide.mpp-x/-y` (vendor metadata or generic TIFF resolution)."""
    x, y = _float(props.get("openslide.mpp-x")), _float(props.get("openslide.mpp-y"))
    if x and y:
        return _plausible((x + y) / 2)
    return _plausible(x or y)


def objective_from_properties(props: Mapping[str, str]) -> float | None:
    return _float(props.get("openslide.objective-power"))


def mpp_from_resolution(xres: object, yres: object, unit: object) -> float | None:
    """TIFF XResolution/YResolution (pixels per unit) + ResolutionUnit (2 inch, 3 cm) -> um/px."""
    um_per_unit = {2: 25400.0, 3: 10000.0, "inch": 25400.0, "centimeter": 10000.0}.get(
        getattr(unit, "value", unit)
    )
    if um_per_unit is None:
        return None

    def to_float(r: object) -> float | None:
        if isinstance(r, tuple) and len(r) == 2:
            return _float(r[0] / r[1]) if r[1] else None
        return _float(r)

    px = [v for v in (to_float(xres), to_float(yres)) if v]
    if not px:
        return None
    return _plausible(um_per_unit / (sum(px) / len(px)))


_UM_PER = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def resolution_from_ome(xml: str | None) -> tuple[float | None, float | None]:
    """(MPP, objective NominalMagnification) from OME-XML; namespace-agnostic."""
    if not xml:
        return None, None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None
    mpp = objective = None
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag == "Pixels" and mpp is None:
            scale = _UM_PER.get(el.get("PhysicalSizeXUnit", "µm"), None)
            x, y = _float(el.get("PhysicalSizeX")), _float(el.get("PhysicalSizeY"))
            if scale and x:
                mpp = _plausible(scale * (x + (y or x)) / 2)
        elif tag == "Objective" and objective is None:
            objective = _float(el.get("NominalMagnification"))
    return mpp, objective


def resolve(
    path: str | Path,
    override: float | None,
    found: list[tuple[float | None, str]],
    objective: float | None,
    objective_source: str = "metadata",
) -> Resolution:
    """Pick the MPP: user override first, then the first metadata source that has one.

    Objective power comes from metadata where present, else from the MPP (10 / mpp)."""
    if override is not None:
        mpp = _float(override)
        if mpp is None:
            raise MagaError(f"--mpp must be a positive number, got {override!r}", path)
        source = "override"
    else:
        mpp, source = next(((m, s) for m, s in found if m), (None, ""))
        if mpp is None:
            raise MagaError(f"no microns-per-pixel (MPP) in the slide's metadata; {MPP_HINT}", path)
    if objective:
        return Resolution(mpp, source, objective, objective_source)
    return Resolution(mpp, source, round(mag_for_mpp(mpp), 2), "from MPP")

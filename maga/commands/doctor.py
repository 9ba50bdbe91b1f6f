"""`maga doctor`: check the native pieces (OpenSlide, the bundled libvips, torch + torchvision compiled
operators), which data mirror, reference folder and runs folder are in use and why, and say what to fix.
Exit 1 when any check fails."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Callable

Check = tuple[bool, str, str]  # ok, detail, fix


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check OpenSlide, libvips, torch/torchvision and where the data, reference and runs folders are")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--skip-data", action="store_true", help="do not hash the data files")
    p.set_defaults(func=run)


def check_python() -> Check:
    ok = sys.version_info[:2] == (3, 11)
    return ok, sys.version.split()[0], "use Python 3.11 (make install creates .venv with python3.11)"


def check_openslide_vips() -> Check:
    """Write a small pyramidal TIFF with libvips and read it back through OpenSlide with its MPP."""
    import numpy as np
    import openslide

    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga_core.slides import open_slide
    from maga.slide_tools.writer import write_pyramidal_tiff

    with tempfile.TemporaryDirectory() as d:
        img = np.random.default_rng(0).integers(0, 255, (600, 700, 3), dtype=np.uint8)
        path = write_pyramidal_tiff(img, Path(d) / "doctor.tif", mpp=0.5)
        with open_slide(path) as r:
            ok = abs(r.mpp - 0.5) < 1e-6 and r.level_count > 1
    detail = f"openslide-python {openslide.__version__}, library {openslide.__library_version__}"
    return ok, detail, "pip install openslide-python==1.4.7 openslide-bin==4.0.1.2"


def _loaded_libvips() -> str:
    """Path of the libvips shared object this process loaded (Linux), '' when unknown."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return ""
    return next((line.split()[-1] for line in maps.splitlines() if "libvips" in line and ".so" in line), "")


def check_libvips() -> Check:
    from importlib.metadata import PackageNotFoundError, version

    import pyvips

    lib = ".".join(str(pyvips.version(i)) for i in range(3))
    try:
        wheel = version("pyvips-binary")
    except PackageNotFoundError:
        return False, f"libvips {lib}, pyvips-binary not installed", "pip install pyvips-binary==8.18.7"
    loaded = _loaded_libvips()
    bundled = wheel.startswith(lib) and (not loaded or "pyvips_binary" in loaded)
    detail = f"libvips {lib} from {loaded or 'unknown path'} (pyvips {pyvips.__version__}, binary {wheel})"
    return bundled, detail, ("a system libvips shadows the bundled one: remove Debian's libvips-dev / "
                             "unset LD_LIBRARY_PATH, then pip install --force-reinstall pyvips-binary==8.18.7")


def check_torch() -> Check:
    import torch
    import torchvision
    from torchvision.ops import nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=torch.float32)
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5).tolist()
    ok = keep == [0, 2]
    return ok, f"torch {torch.__version__}, torchvision {torchvision.__version__}, ops.nms -> {keep}", (
        "install the matched pair: pip install --isolated torch==2.13.0 torchvision==0.28.0")


def check_data(skip: bool) -> Check:
    """Which data mirror is in use and where that came from (locations' search order), then its hashes."""
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga_core import locations
    from maga_core.data import manifests

    found = locations.data_dir()
    fix = locations.how_to_set(locations.DATA)
    if found.path is None:
        return False, f"no data mirror found (searched {locations.searched()}); cache {manifests.cache_dir()}", fix
    where = f"{found.path} (from {found.source})"
    if not found.path.is_dir():
        return False, f"{where} is not a folder", fix
    if skip:
        return True, f"{where}, hashes not checked", fix
    problems = manifests.verify_all()
    n = sum(len(v) for v in problems.values())
    detail = f"{where}, {len(manifests.names())} manifests, {n} problem(s)"
    if problems:
        first = next(iter(problems.values()))[0]
        detail += f"; first: {first}"
    return not problems, detail, fix


def check_reference() -> Check:
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga_core import locations

    found = locations.reference_dir()
    fix = locations.how_to_set(locations.REFERENCE)
    if found.path is None:
        return False, "no reference folder found", fix
    return found.path.is_dir(), f"{found.path} (from {found.source})", fix


def check_runs() -> Check:
    # lazy: imported when run, not when the `maga` parser is built (saves start-up time)
    from maga_core import locations

    found = locations.runs_root()
    return True, f"{found.path} (from {found.source})", "set MAGA_RUNS_DIR"


def run(args) -> int:
    checks: dict[str, Callable[[], Check]] = {
        "python": check_python, "openslide": check_openslide_vips, "libvips": check_libvips,
        "torch": check_torch, "data": lambda: check_data(args.skip_data), "reference": check_reference,
        "runs": check_runs,
    }
    results = {}
    for name, fn in checks.items():
        try:
            ok, detail, fix = fn()
        except Exception as exc:  # a missing or broken native library is exactly what doctor reports
            ok, detail, fix = False, f"{type(exc).__name__}: {exc}", f"reinstall: make install ({name})"
        results[name] = {"ok": ok, "detail": detail, **({} if ok else {"fix": fix})}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, r in results.items():
            print(f"{'ok  ' if r['ok'] else 'FAIL'} {name:10s} {r['detail']}")
            if not r["ok"]:
                print(f"     fix: {r['fix']}")
    return 0 if all(r["ok"] for r in results.values()) else 1

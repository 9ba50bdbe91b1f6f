"""The layers contract (tests/layers.py) holds for this checkout, and the checker catches each breach."""

from __future__ import annotations

import shutil
from pathlib import Path

from layers import check

ROOT = Path(__file__).resolve().parents[1]


def test_no_upward_import_no_circle_no_unexplained_lazy_import():
    report = check(ROOT)
    assert report.modules > 100
    assert report.upward == []
    assert report.circles == []
    assert report.unexplained_lazy == []


def test_files_stay_short_and_the_core_thin():
    sizes = {f: len(f.read_text().splitlines()) for top in ("maga_core", "maga") for f in (ROOT / top).rglob("*.py")}
    assert [str(f.relative_to(ROOT)) for f, n in sizes.items() if n > 450] == []
    assert sum(n for f, n in sizes.items() if f.is_relative_to(ROOT / "maga_core")) <= 5500


def _copy(tmp_path: Path) -> Path:
    for top in ("maga_core", "maga"):
        shutil.copytree(ROOT / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_checker_fails_when_the_core_imports_the_application(tmp_path):
    root = _copy(tmp_path)
    (root / "maga_core" / "bad.py").write_text("from maga.extract import load_model\n")
    report = check(root)
    assert report.upward == ["maga_core/bad.py:1: core maga_core.bad imports application maga.extract"]


def test_checker_fails_on_a_circle_and_on_a_lazy_import_without_its_reason(tmp_path):
    root = _copy(tmp_path)
    (root / "maga" / "first.py").write_text("from maga import second\n")
    (root / "maga" / "second.py").write_text("def f():\n    from maga import first\n    return first\n")
    (root / "maga" / "book" / "up.py").write_text("import maga.cli\n")
    report = check(root)
    assert report.circles == [["maga.first", "maga.second"]]
    assert report.unexplained_lazy == ["maga/second.py:2"]
    assert report.upward == ["maga/book/up.py:1: presentation maga.book.up imports cli maga.cli"]
    (root / "maga" / "second.py").write_text(
        "def f():\n    # lazy: saves start-up time\n    from maga import first\n    return first\n")
    assert check(root).unexplained_lazy == []

"""Build the book: run every chapter notebook with papermill, then Jupyter Book HTML, offline.

`python -m maga.book.build --preset demo|smoke [--only NN ...]`

Chapters are the notebooks named notebooks/NN_name.ipynb. Each is executed in a fresh python3 kernel with
`preset` (and any extra parameters) injected after its `parameters` cell; the executed copy, outputs kept,
goes to book/chapters/. The table of contents is generated from the chapters, so a new notebook joins
the book without editing book/_toc.yml by hand. Jupyter Book then only renders (execution is off in
book/_config.yml) into book/_build/html; nothing here reaches the network.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from maga_core.config import atomic_path
from maga_core.errors import MagaError
from maga.presets import PRESET_NAMES
from maga.provenance import COMMAND_ENV, SOURCES_ENV

# The book builds from a source checkout: its notebooks and book/ folder are not part of the wheel.
REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
BOOK_DIR = REPO_ROOT / "book"
CHAPTERS_DIR = BOOK_DIR / "chapters"
HTML_DIR = BOOK_DIR / "_build" / "html"
CHAPTER_RE = re.compile(r"^(\d\d)_[A-Za-z0-9_]+$")
KERNEL = "python3"
# Set for the kernels that papermill starts: figures that need a live kernel (ipywidgets) degrade to
# static plotly figures (see maga.book.explorer).
STATIC_ENV = "MAGA_BOOK_STATIC"
# Pages of the book that are not chapters, in reading order around them.
FRONT = "intro"
BACK = ("references",)


@dataclass(frozen=True)
class ChapterRun:
    stem: str
    seconds: float


def chapter_notebooks(notebooks_dir: Path = NOTEBOOKS_DIR, only: Sequence[str] | None = None) -> list[Path]:
    """notebooks/NN_name.ipynb in chapter order; `only` picks chapters by number ("01") or stem."""
    found = sorted(p for p in notebooks_dir.glob("*.ipynb") if CHAPTER_RE.match(p.stem))
    if not only:
        return found
    wanted = [w.strip() for item in only for w in str(item).split(",") if w.strip()]

    def matches(nb: Path, token: str) -> bool:
        return nb.stem == token or (token.isdigit() and nb.stem[:2] == token.zfill(2))

    missing = [w for w in wanted if not any(matches(p, w) for p in found)]
    if missing:
        raise MagaError(f"no chapter notebook for {', '.join(missing)} "
                        f"(chapters: {', '.join(p.stem for p in found) or 'none'})", notebooks_dir)
    picked = [p for p in found if any(matches(p, w) for w in wanted)]
    return picked


def execute_notebook(path: str | Path, preset: str = "smoke", out_dir: str | Path = CHAPTERS_DIR,
                     progress_bar: bool = False, **params: Any) -> Path:
    """Run one notebook with papermill (parameters `preset` + `params` injected, outputs kept).

    The executed copy is renamed onto out_dir/<name>.ipynb only when every cell succeeded. On a failing
    cell, the copy with the traceback is kept as out_dir/<name>.failed.ipynb and a MagaError names the
    notebook, the cell and the error in one line."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    path = Path(path)
    if not path.exists():
        raise MagaError("notebook not found", path)
    if preset not in PRESET_NAMES:
        raise MagaError(f"unknown preset {preset!r} (choose one of {', '.join(PRESET_NAMES)})", path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / path.name
    failed = out_dir / f"{path.stem}.failed.ipynb"
    partial = out_dir / f".{path.stem}.partial.ipynb"
    try:
        command = f"python -m maga.book.build --preset {preset} --only {path.stem[:2]}"
        # The kernel starts in notebooks/: put this checkout first on its path, so that the chapters run
        # (and their records name) the code the book is built from, not another install of the package.
        path_env = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        sources = os.pathsep.join(_repo_relative(p) for p in (path, REPO_ROOT / "maga" / "presets.yaml"))
        with _env(STATIC_ENV, os.environ.get(STATIC_ENV, "1")), _env(COMMAND_ENV, command), \
                _env(SOURCES_ENV, sources), _env("PYTHONPATH", path_env):
            pm.execute_notebook(
                str(path), str(partial), parameters={"preset": preset, **params}, kernel_name=KERNEL,
                cwd=str(path.parent), progress_bar=progress_bar, log_output=False,
            )
    except PapermillExecutionError as exc:
        os.replace(partial, failed)
        raise MagaError(f"cell {_source_cell_number(failed, exc.cell_index)} "
                        f"({_first_line(exc.source)!r}) failed: {exc.ename}: {_first_line(exc.evalue)} "
                        f"(traceback in {_shown(failed)})", _shown(path)) from None
    except Exception as exc:  # kernel died, could not start, bad notebook JSON...
        if partial.exists():
            os.replace(partial, failed)
        raise MagaError(f"could not execute ({type(exc).__name__}: {_first_line(str(exc))})",
                        _shown(path)) from None
    os.replace(partial, final)
    failed.unlink(missing_ok=True)
    return final


def toc_yaml(chapter_stems: Sequence[str], chapters_folder: str = "chapters") -> str:
    """The _toc.yml text: intro, the chapters in number order, then the back matter."""
    lines = ["# Generated by `python -m maga.book.build` from notebooks/NN_*.ipynb: do not edit by hand.",
             "format: jb-book", f"root: {FRONT}", "parts:", "  - caption: Chapters", "    chapters:"]
    lines += [f"      - file: {chapters_folder}/{stem}" for stem in chapter_stems]
    lines += ["  - caption: Back matter", "    chapters:"]
    lines += [f"      - file: {page}" for page in BACK]
    return "\n".join(lines) + "\n"


def sync_toc(notebooks_dir: Path = NOTEBOOKS_DIR, book_dir: Path = BOOK_DIR) -> Path:
    """Rewrite book/_toc.yml when the set of chapter notebooks changed (the committed toc stays current)."""
    toc = book_dir / "_toc.yml"
    text = toc_yaml([p.stem for p in chapter_notebooks(notebooks_dir)])
    if not toc.exists() or toc.read_text() != text:
        _write_atomic(toc, text)
    return toc


def build_html(chapter_stems: Sequence[str], book_dir: Path = BOOK_DIR) -> Path:
    """Render the executed chapters (and front/back matter) to book_dir/_build/html with Jupyter Book."""
    for stem in chapter_stems:
        if not (book_dir / "chapters" / f"{stem}.ipynb").exists():
            raise MagaError("executed chapter missing; run it first", book_dir / "chapters" / f"{stem}.ipynb")
    toc = book_dir / "_build" / "_toc.yml"
    toc.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(toc, toc_yaml(chapter_stems))
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build",
           str(book_dir), "--toc", str(toc), "--all"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not (book_dir / "_build" / "html" / "index.html").exists():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise MagaError(f"jupyter-book build failed (exit {proc.returncode}):\n{tail}", book_dir)
    warnings = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "WARNING" in ln]
    for line in warnings:
        print(f"book: {line.strip()}", file=sys.stderr)
    return book_dir / "_build" / "html"


def build(preset: str, only: Sequence[str] | None = None, notebooks_dir: Path = NOTEBOOKS_DIR,
          book_dir: Path = BOOK_DIR) -> tuple[list[ChapterRun], Path]:
    """Execute the chosen chapters, then build HTML from every chapter executed with this preset."""
    notebooks = chapter_notebooks(notebooks_dir, only)
    if not notebooks:
        raise MagaError("no chapter notebooks (expected notebooks/NN_name.ipynb)", notebooks_dir)
    if notebooks_dir == NOTEBOOKS_DIR and book_dir == BOOK_DIR:
        sync_toc(notebooks_dir, book_dir)
    chapters_dir = book_dir / "chapters"
    runs = []
    for i, nb in enumerate(notebooks, 1):
        print(f"book: [{i}/{len(notebooks)}] {nb.stem} (preset {preset})", flush=True)
        start = time.perf_counter()
        execute_notebook(nb, preset, chapters_dir, progress_bar=True)
        runs.append(ChapterRun(nb.stem, time.perf_counter() - start))
        print(f"book: {nb.stem} done in {runs[-1].seconds:.1f} s", flush=True)
    # With --only, chapters executed earlier under the same preset stay in the book.
    all_stems = [p.stem for p in chapter_notebooks(notebooks_dir)]
    stems = [s for s in all_stems if executed_preset(chapters_dir / f"{s}.ipynb") == preset]
    return runs, build_html(stems, book_dir)


def executed_preset(path: Path) -> str | None:
    """The preset papermill injected into an executed chapter (None if absent or not executed)."""
    import nbformat

    if not path.exists():
        return None
    nb = nbformat.read(path, as_version=4)
    return (nb.metadata.get("papermill") or {}).get("parameters", {}).get("preset")


def _source_cell_number(executed: Path, index: int) -> int:
    """1-based position of executed cell `index` in the source notebook (papermill inserts one cell)."""
    import nbformat

    cells = nbformat.read(executed, as_version=4).cells
    injected = [i for i, c in enumerate(cells) if "injected-parameters" in c.metadata.get("tags", [])]
    return index + 1 - sum(1 for i in injected if i < index)


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    """Set an environment variable for the kernels started inside the block, then restore it."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _first_line(text: str | None) -> str:
    lines = [ln for ln in str(text or "").splitlines() if ln.strip()]
    return lines[0].strip()[:160] if lines else ""


def _repo_relative(path: Path) -> str:
    try:
        return Path(path).resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def _shown(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _write_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maga.book.build", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=PRESET_NAMES, default="demo",
                        help="preset (maga/presets.yaml) injected into every chapter (default: demo)")
    parser.add_argument("--only", nargs="+", metavar="NN",
                        help="execute only these chapters (numbers or stems); others executed earlier "
                             "with the same preset stay in the book")
    parser.add_argument("--sync-toc", action="store_true",
                        help="only rewrite book/_toc.yml from the notebooks present, then exit")
    args = parser.parse_args(argv)
    if args.sync_toc:
        print(f"book: {sync_toc()}")
        return 0
    start = time.perf_counter()
    try:
        runs, html = build(args.preset, args.only)
    except MagaError as exc:
        print(f"book: error: {exc}", file=sys.stderr)
        print(f"book: stopped after {time.perf_counter() - start:.1f} s", file=sys.stderr)
        return 2
    total = time.perf_counter() - start
    for run in runs:
        print(f"book:   {run.stem:<40s} {run.seconds:8.1f} s")
    print(f"book: built {html / 'index.html'} (preset {args.preset}) in {total:.1f} s "
          f"({total / 60:.1f} min wall time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

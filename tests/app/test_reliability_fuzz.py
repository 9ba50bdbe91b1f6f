"""Fuzzing (issue 23, hypothesis): mutated TIFF/SVS headers and directories, absurd and zero sizes,
broken resolution tags and NaN/negative/zero MPP through `open_slide` (in a worker process under an
address-space cap, with a time limit per case) and `maga info`; and arbitrary text through the labels,
splits, run-config, manifest and user-config readers. Every input ends in a result or a one-line
MagaError. `maga bench reliability` runs the slide fuzzer much longer."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maga_core.config import load_config
from maga_core.errors import MagaError
from maga.extract_job import ExtractConfig
from maga_core.mil.cv import read_labels, read_splits
from maga.reliability.fuzz import KINDS, MEMORY_CAP, FuzzStats, Worker, fuzz_case, mutate
from maga.reliability.kills import child_env, maga_argv
from maga.reliability.scenarios import make_slides

pytestmark = pytest.mark.timeout(600)
FAST = settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def bases(tmp_path_factory, cmu):
    return [make_slides(tmp_path_factory.mktemp("fuzz_bases"), 1, 1024) / "slide_00.tif", cmu]


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


def test_mutated_slides_end_in_a_result_or_one_line_error(bases, worker, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_cases")
    stats = FuzzStats()

    @FAST
    @given(base=st.sampled_from(bases), kind=st.sampled_from(KINDS), seed=st.integers(0, 2**31 - 1))
    def one(base, kind, seed):
        answer = fuzz_case(worker, base, kind, seed, folder, stats)
        assert answer["outcome"] in ("ok", "maga"), stats.findings[-1]
        assert answer["rlimit_as"] == MEMORY_CAP and 0 < answer["peak_mb"] < MEMORY_CAP / 2**20

    one()
    regression = fuzz_case(worker, bases[0], "flip_ifd", 394268934, folder, stats)  # a zero-width level
    assert regression["outcome"] == "maga", regression  # (was a ZeroDivisionError in the benchmark)
    assert stats.cases >= 30 and stats.outcomes["maga"] > 0 and stats.outcomes["ok"] > 0, stats.outcomes


def test_a_pyramid_less_slide_claiming_absurd_width_stays_under_the_memory_cap(cmu, tmp_path):
    """A width tag set to 65535 on the single-level CMU slide: the thumbnail is read in strips, not as one
    65535 px wide array (which took more than the cap)."""
    data, _ = mutate(cmu.read_bytes(), "absurd_size", 691209254)
    path = tmp_path / "wide.svs"
    path.write_bytes(data)
    w = Worker(memory_cap=2 * 1024**3, timeout_s=120)
    try:
        answer = w.run(path)
    finally:
        w.close()
    assert answer["outcome"] == "ok" and answer["thumb"][1] == 128 and answer["peak_mb"] < 2048, answer


def test_maga_info_on_mutated_slides_prints_a_result_or_one_line(bases, tmp_path):
    for kind, seed in (("absurd_size", 1), ("truncate", 2), ("flip_ifd", 3)):
        data, _ = mutate(bases[0].read_bytes(), kind, seed)
        path = tmp_path / f"{kind}.tif"
        path.write_bytes(data)
        proc = subprocess.run(maga_argv("info", str(path)), env=child_env(), capture_output=True, text=True,
                              timeout=120)
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
        if proc.returncode:
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1 and str(path) in lines[0], proc.stderr


def test_nan_negative_zero_mpp_is_refused_in_one_line(bases, worker):
    for mpp in (float("nan"), -0.5, 0.0, float("inf")):
        answer = worker.run(bases[0], mpp)
        assert answer["outcome"] == "maga", (mpp, answer)


TEXT = st.one_of(st.text(max_size=300),
                 st.lists(st.lists(st.sampled_from(["slide", "label", "patient", "fold", "part", "a", "1", "",
                                                    "-1", "nan", "2", "train", "test", "val", "x,y", '"'])),
                          max_size=8).map(lambda rows: "\n".join(",".join(r) for r in rows)))


def _ends_well(call) -> None:
    try:
        call()
    except MagaError as exc:
        assert "\n" not in str(exc), str(exc)


@FAST
@given(text=TEXT)
def test_labels_and_splits_readers(text, tmp_path_factory):
    folder = tmp_path_factory.mktemp("csv")
    path = folder / "x.csv"
    path.write_text(text)
    _ends_well(lambda: read_labels(path))
    labels = pd.DataFrame({"slide": ["a", "b", "1"], "label": [0, 1, 0], "patient": ["a", "b", "1"]})
    _ends_well(lambda: read_splits(path, labels))


JSONISH = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                           st.sampled_from(["encoder", "input", "out", "mag", "kind", "files", "name", "x"]),
                           inner, max_size=5), max_leaves=12)


@FAST
@given(doc=JSONISH, raw=st.binary(max_size=200), use_raw=st.booleans())
def test_run_config_manifest_and_user_config_readers(doc, raw, use_raw, tmp_path_factory, monkeypatch):
    from maga_core import locations
    from maga_core.data.manifests import parse_manifest

    folder = tmp_path_factory.mktemp("cfg")
    path = folder / "config.json"
    path.write_bytes(raw if use_raw else json.dumps(doc).encode())
    _ends_well(lambda: load_config(ExtractConfig, path))
    text = raw.decode("utf-8", "replace") if use_raw else json.dumps(doc)
    _ends_well(lambda: parse_manifest(text, path))
    monkeypatch.setenv("MAGA_CONFIG", str(path))
    _ends_well(locations.user_config)

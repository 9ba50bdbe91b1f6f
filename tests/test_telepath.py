"""The telepathology service on loopback: real slides in, diagnoses and heatmaps out; bad input refused."""

from __future__ import annotations

import concurrent.futures as cf
import os
import shutil

import httpx
import pytest
import torch

from maga_core import mil
from maga_core.encoders import build
from maga_core.mil.train import TrainConfig, save_checkpoint
from maga_core.telepath.client import TokenBucket, send, upload
from maga_core.telepath.pipeline import ServiceModel, SlideAnalyzer, save_service_model
from maga_core.telepath.server import ServeConfig, ServerThread, create_app
from maga_core.telepath.study import FROZEN_ASSUMED_MPP as FROZEN_MPP  # the copy carries no MPP

TOKEN = "test-token"
LIMIT = 20 * 1024**2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("service")
    dim = build("efficientnet_lite0").dim
    torch.manual_seed(0)
    spec = ServiceModel(encoder="efficientnet_lite0", classes=["benign", "carcinoma"],
                        trained_on="untrained (mechanics test)")
    ckpt = save_checkpoint(mil.build("abmil", dim, 2), TrainConfig.for_model("abmil"), dim, 2, folder / "agg.pt")
    save_service_model(folder / "service", spec, ckpt)
    uploads = tmp_path_factory.mktemp("uploads")
    app = create_app(SlideAnalyzer.load(folder / "service"), ServeConfig(token=TOKEN, max_upload_bytes=LIMIT,
                                                             upload_dir=str(uploads), max_concurrent=2))
    with ServerThread(app) as url:
        yield url, uploads


@pytest.fixture(scope="module")
def frozen(data_file):
    return data_file("histolab_fixtures", "tcga-cr-7395-01a-01-ts1.svs")


def test_5x_upload_of_the_real_frozen_section(server, frozen):
    url, uploads = server
    report = send(frozen, url, TOKEN, 5, mpp=FROZEN_MPP)
    result = report.server
    assert result["prediction"] in {"benign", "carcinoma"}
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert result["magnification"] == 5 and result["patch_px"] == 64 and result["n_patches"] > 20
    assert {"receive_s", "tiling_s", "encoding_s", "aggregation_s"} <= set(result["timings"])
    png = httpx.get(url + result["heatmap_url"], headers={"Authorization": f"Bearer {TOKEN}"})
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(uploads.iterdir())  # the upload was removed after analysis


def test_missing_or_wrong_token_is_401(server, frozen):
    url, _ = server
    assert httpx.post(url + "/v1/diagnose", content=b"x").status_code == 401
    r = httpx.post(url + "/v1/diagnose", content=b"x", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401


def _post(url, content, **headers):
    return httpx.post(url + "/v1/diagnose", content=content, timeout=60,
                      headers={"Authorization": f"Bearer {TOKEN}", **headers})


def test_oversized_upload_is_413_and_leaves_nothing(server):
    url, uploads = server
    big = os.urandom(LIMIT + 1)
    assert _post(url, big).status_code == 413  # refused from Content-Length, before storing

    def chunks():  # no Content-Length: refused while streaming, partial file removed
        for i in range(0, len(big), 1 << 20):
            yield big[i:i + (1 << 20)]

    assert _post(url, chunks()).status_code == 413
    assert not list(uploads.iterdir())


def test_non_slide_is_422_with_a_reason_and_server_keeps_serving(server, frozen, tmp_path):
    url, uploads = server
    r = _post(url, b"this is not a slide at all\n" * 100, **{"X-Filename": "../../etc/passwd.svs"})
    assert r.status_code == 422 and r.json()["detail"]
    assert not list(uploads.iterdir())
    truncated = tmp_path / "cut.svs"
    truncated.write_bytes(frozen.read_bytes()[: frozen.stat().st_size // 3])
    assert _post(url, truncated.read_bytes(), **{"X-Filename": "cut.svs"}).status_code == 422
    assert httpx.get(url + "/health").json() == {"status": "ok"}


def test_concurrent_uploads_get_their_own_results(server, data_file):
    url, _ = server
    cmu = data_file("histolab_fixtures", "cmu-1-small-region.svs")
    mags = [5, 10]  # two different uploads of the same real slide: different sizes and patch counts
    alone = [send(cmu, url, TOKEN, m).server for m in mags]
    with cf.ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda m: send(cmu, url, TOKEN, m).server, mags))
    for a, t in zip(alone, together):
        assert a["slide_dimensions"] == t["slide_dimensions"] and a["n_patches"] == t["n_patches"]
        assert a["probabilities"] == pytest.approx(t["probabilities"], abs=1e-5)
    assert together[0]["slide_dimensions"] != together[1]["slide_dimensions"]


def test_bandwidth_cap_holds_within_10_percent(server, data_file, tmp_path):
    url, _ = server
    slide = tmp_path / "cmu.svs"
    shutil.copy(data_file("histolab_fixtures", "cmu-1-small-region.svs"), slide)
    mbps = 16.0
    _, transfer_s = upload(slide, url, TOKEN, 5, bandwidth_mbps=mbps)  # 5x: a quick analysis after
    expected = slide.stat().st_size * 8 / (mbps * 1e6)
    assert abs(transfer_s - expected) / expected < 0.10, (transfer_s, expected)


def test_token_bucket_starts_empty_and_paces():
    import time

    bucket = TokenBucket(rate_bytes_per_s=1_000_000)
    t0 = time.perf_counter()
    for _ in range(5):
        bucket.take(50_000)
    assert 0.22 < time.perf_counter() - t0 < 0.4


@pytest.mark.notebooks
def test_chapter_runs_the_study_with_the_smoke_preset(smoke_book):
    import json

    assert "08_telepathology" in {p.stem for p in smoke_book.executed}
    result = json.loads((smoke_book.runs / "telepath" / "telepath.json").read_text())
    mags = sorted(r["magnification"] for r in result["rows"])
    assert mags == [5.0, 20.0] and result["ratios"][0]["storage_reduction"] > 4
    assert any(r["maga_student"] for r in result["rows"] if r["magnification"] == 5.0)

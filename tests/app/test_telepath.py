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
from maga_core.errors import MagaError
from maga_core.mil.train import TrainConfig, save_checkpoint
from maga.telepath.client import CHUNK, TokenBucket, send, upload
from maga.telepath.pipeline import ServiceModel, SlideAnalyzer, save_service_model
from maga.telepath.server import ServeConfig, ServerThread, create_app
from maga.telepath.study import FROZEN_ASSUMED_MPP as FROZEN_MPP  # the copy carries no MPP

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


class VirtualClock:
    """Time that moves only by sleeping (plus `overrun` per sleep, as a busy scheduler would): the
    limiter's accounting is checked exactly, whatever the machine's load. Its speed on real time is
    measured by `maga bench telepath` (transfer_mbps against the cap)."""

    def __init__(self, overrun: float = 0.0):
        self.now, self.overrun, self.sleeps = 0.0, overrun, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds + self.overrun


def test_bandwidth_cap_paces_every_byte_of_a_real_upload(server, data_file, tmp_path):
    url, _ = server
    slide = tmp_path / "cmu.svs"
    shutil.copy(data_file("histolab_fixtures", "cmu-1-small-region.svs"), slide)
    clock, mbps = VirtualClock(), 16.0
    result, transfer_s = upload(slide, url, TOKEN, 5, bandwidth_mbps=mbps, clock=clock, sleep=clock.sleep)
    size = slide.stat().st_size
    assert result["bytes"] == size  # every byte went through the limiter to the server
    assert len(clock.sleeps) == -(-size // CHUNK)  # the bucket starts empty: each chunk waits its turn
    assert transfer_s == pytest.approx(size * 8 / (mbps * 1e6), rel=1e-9)  # exactly the cap


def test_token_bucket_starts_empty_and_paces():
    clock = VirtualClock()
    bucket = TokenBucket(rate_bytes_per_s=1_000_000, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        bucket.take(50_000)
    assert clock.sleeps[0] == pytest.approx(0.05)  # no initial burst
    assert clock.now == pytest.approx(0.25, rel=1e-12)
    with pytest.raises(MagaError, match="positive"):
        TokenBucket(0)


def test_token_bucket_keeps_overrun_credit_and_caps_bursts():
    rate, n = 10e6, 100
    clock = VirtualClock(overrun=0.01)  # every sleep oversleeps by 10 ms, longer than one chunk's 6.6 ms
    bucket = TokenBucket(rate, clock=clock, sleep=clock.sleep)
    for _ in range(n):
        bucket.take(CHUNK)
    ideal = n * CHUNK / rate
    assert ideal <= clock.now <= ideal + clock.overrun  # only the last overrun is lost: the rate holds
    assert len(clock.sleeps) < n  # the credit of an overrun let later chunks through without a wait
    idle = VirtualClock()
    bucket = TokenBucket(rate, clock=idle, sleep=idle.sleep)
    idle.now += 10.0  # a long idle spell earns at most `capacity` bytes
    bucket.take(bucket.capacity)
    assert idle.sleeps == []
    bucket.take(CHUNK)
    assert idle.sleeps == [pytest.approx(CHUNK / rate)]


@pytest.mark.notebooks
def test_chapter_runs_the_study_with_the_smoke_preset(smoke_book):
    import json

    assert "08_telepathology" in {p.stem for p in smoke_book.executed}
    result = json.loads((smoke_book.runs / "telepath" / "telepath.json").read_text())
    mags = sorted(r["magnification"] for r in result["rows"])
    assert mags == [5.0, 20.0]
    r = result["ratios"][0]
    assert r["pixel_reduction"] == pytest.approx(16, rel=0.03)  # (20 / 5)^2 of the same slide
    # JPEG: bytes fall slower than pixels, but a 5x file far smaller than the 20x one
    assert r["pixel_reduction"] / 2 < r["storage_reduction"] <= r["pixel_reduction"] * 1.05
    assert result["provenance"]["config"]["bandwidth_mbps"] == result["config"]["bandwidth_mbps"]
    assert result["machine"]["cpu_count"] == os.cpu_count()
    assert any(r["maga_student"] for r in result["rows"] if r["magnification"] == 5.0)


def test_ratios_are_20x_over_each_lower_magnification():
    import pandas as pd

    from maga.telepath.study import ratios

    rows = [{"slide": "a", "magnification": m, "bytes": b, "gigapixels": g, "transfer_s": t, "inference_s": i}
            for m, b, g, t, i in [(20.0, 1600, 1.6, 8.0, 30.0), (10.0, 500, 0.4, 2.0, 10.0), (5.0, 200, 0.1, 0.5, 3.0)]]
    out = {r["magnification"]: r for r in ratios(pd.DataFrame(rows))}
    assert set(out) == {10.0, 5.0}
    assert out[5.0] == {"slide": "a", "magnification": 5.0, "storage_reduction": 8.0, "pixel_reduction": 16.0,
                        "communication_reduction": 16.0, "compute_reduction": 10.0}
    assert out[10.0]["storage_reduction"] == pytest.approx(3.2)

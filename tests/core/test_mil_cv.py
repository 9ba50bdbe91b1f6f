"""Training and patient-level cross-validation of the MIL aggregators."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from maga.cli import main
from maga_core.errors import MagaError
from maga_core.mil.cv import CVConfig, check_splits, make_splits, read_labels, run_cv
from maga_core.mil.train import (SIZE_CLASS_RATIO, Bag, TrainConfig, bag_batches, batch_loss, build_optimizer,
                                  evaluate, new_model, train_model, train_run)


pytestmark = pytest.mark.usefixtures("one_thread")


def _toy_bags(n_bags: int, seed: int, dim: int = 16) -> list[Bag]:
    """Positive bags hold a few instances shifted along one direction; negatives hold none."""
    g = torch.Generator().manual_seed(seed)
    bags = []
    for i in range(n_bags):
        n = int(torch.randint(6, 20, (1,), generator=g))
        x = torch.randn(n, dim, generator=g)
        label = i % 2
        if label:
            x[:3, :4] += 3.0
        bags.append(Bag(slide=f"s{i}", features=x, label=label))
    return bags


@pytest.mark.parametrize("model", ["abmil", "gltrans"])
def test_training_loss_falls_and_separates_a_toy_problem(model):
    # GLTrans at width 64 with Adam: the paper's width 512 costs ~0.6 s a step on one CPU core, and
    # Lookahead(RAdam) warms up over hundreds of steps (tested on its own below).
    kw = {"model_kw": {"dim": 64}, "optimizer": "adam"} if model == "gltrans" else {}
    cfg = TrainConfig.for_model(model, max_epochs=8, patience=8, min_epochs=0, seed=1, lr=1e-3, **kw)
    train, val = _toy_bags(16, 0), _toy_bags(8, 1)
    net = new_model(cfg, in_dim=16, n_classes=2)
    result = train_model(net, train, val, cfg, progress=False)
    loss = result.history["train_loss"].to_numpy()
    assert loss[-3:].mean() < 0.5 * loss[:2].mean()
    assert evaluate(net, val)["val_auc"] >= 0.95


def test_lookahead_radam_descends_without_decay_on_biases():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x[:, 0] + x[:, 1] > 0).long()
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    cfg = TrainConfig.for_model("gltrans", lr=1e-2)
    opt = build_optimizer(net, cfg)
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert all((id(p) in no_decay) == (p.ndim <= 1) for p in net.parameters())
    losses = []
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_training_is_deterministic_and_selects_the_best_epoch():
    cfg = TrainConfig.for_model("abmil", max_epochs=6, patience=2, seed=5, lr=1e-3)
    train, val = _toy_bags(10, 0), _toy_bags(6, 1)
    runs = []
    for _ in range(2):
        net = new_model(cfg, 16, 2)
        res = train_model(net, train, val, cfg, progress=False)
        runs.append((res, evaluate(net, val)))
    pd.testing.assert_frame_equal(runs[0][0].history, runs[1][0].history)
    hist = runs[0][0].history
    assert runs[0][0].best_epoch == int(hist["val_loss"].idxmin())
    # the returned weights are the selected epoch's
    assert runs[0][1]["val_loss"] == pytest.approx(hist["val_loss"].min(), rel=1e-6)


def test_model_defaults_follow_the_papers():
    g = TrainConfig.for_model("gltrans")
    assert (g.optimizer, g.lr, g.weight_decay, g.monitor, g.no_decay_1d) == ("lookahead_radam", 1e-4, 1e-5, "val_f1", True)
    c = TrainConfig.for_model("clam_sb")
    assert (c.optimizer, c.lr, c.weight_decay, c.monitor, c.min_epochs) == ("adam", 2e-4, 1e-5, "val_loss", 50)
    assert TrainConfig.for_model("transmil").lr == 2e-4
    with pytest.raises(MagaError):
        TrainConfig.for_model("gltrans", nonsense=1)


@pytest.mark.parametrize("model", ["gltrans", "transmil", "clam_sb", "clam_mb", "abmil"])
def test_a_bag_batch_loss_and_gradients_are_the_mean_over_its_bags(model):
    from maga_core.device import Runtime

    kw = {"dim": 32} if model in ("gltrans", "transmil") else {}
    net = new_model(TrainConfig.for_model(model, model_kw=kw), 16, 2).eval()  # no dropout; batch norm fixed
    g = torch.Generator().manual_seed(0)
    xs, labels, rt = [torch.randn(12, 16, generator=g) * s for s in (1.0, 3.0, 0.5)], [0, 1, 1], Runtime()
    params = [p for p in net.parameters() if p.requires_grad]

    def loss_and_grads(bags, ys):
        loss = batch_loss(net, bags, [None] * len(bags), ys, rt)
        return [loss, *torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)]

    one = [loss_and_grads([x], [y]) for x, y in zip(xs, labels)]
    for got, parts in zip(loss_and_grads(xs, labels), zip(*one)):
        torch.testing.assert_close(got, torch.stack(parts).mean(0), atol=1e-6, rtol=1e-5)


def test_bag_batches_follow_the_size_class_rule():
    sizes = [10, 10, 10, 10, 11, 12, 50, 50, 51, 60, 400, 9]
    batches = bag_batches(sizes, 3, torch.Generator().manual_seed(3))
    assert sorted(i for b in batches for i in b) == list(range(len(sizes)))  # every bag once an epoch
    assert all(1 <= len(b) <= 3 for b in batches)
    assert all(max(sizes[i] for i in b) < SIZE_CLASS_RATIO * min(sizes[i] for i in b) for b in batches)
    assert batches == bag_batches(sizes, 3, torch.Generator().manual_seed(3))  # seeded
    equal = bag_batches([20] * 7, 3, torch.Generator().manual_seed(0))
    assert sorted(map(len, equal)) == [1, 3, 3]  # equal sizes share one class: only its last batch is short
    two = bag_batches([30, 300, 30, 300], 2, torch.Generator().manual_seed(0))
    assert sorted(sorted(b) for b in two) == [[0, 2], [1, 3]]
    # one bag per batch: the order of the one-bag trainer's draw, so its results are unchanged
    assert bag_batches(sizes, 1, torch.Generator().manual_seed(3)) == [
        [i] for i in torch.randperm(len(sizes), generator=torch.Generator().manual_seed(3)).tolist()]


def test_bag_batch_training_is_deterministic_and_recorded(tmp_path):
    cfg = TrainConfig.for_model("abmil", max_epochs=3, seed=5, lr=1e-3, bag_batch=4)
    train, val = _toy_bags(12, 0), _toy_bags(6, 1)  # 6 to 19 instances: several size classes
    passes, histories = [], []
    for _ in range(2):
        net = new_model(cfg, 16, 2)
        net.register_forward_pre_hook(lambda _, args: passes.append(len(args[0]) if args[0].dim() == 3 else 0))
        histories.append(train_model(net, train, val, cfg, progress=False).history)
    pd.testing.assert_frame_equal(histories[0], histories[1])
    assert np.isfinite(histories[0]["train_loss"]).all()
    assert sum(passes) == 2 * 3 * len(train) and 1 < max(passes) <= 4  # training passes are [B, N, D]
    train_run(cfg, train, val, tmp_path, n_classes=2, progress=False)
    assert json.loads((tmp_path / "config.json").read_text())["bag_batch"] == 4


def test_bag_batch_is_refused_for_a_model_that_takes_one_bag():
    cfg = TrainConfig.for_model("gltrans", bag_batch=2, model_kw={"dim": 32, "placement": "coords"})
    with pytest.raises(MagaError, match="takes one bag per forward pass"):
        train_model(new_model(cfg, 16, 2), _toy_bags(4, 0), [], cfg, progress=False)
    with pytest.raises(MagaError, match="bag_batch must be at least 1"):
        train_model(new_model(cfg, 16, 2), _toy_bags(4, 0), [], TrainConfig.for_model("abmil", bag_batch=0),
                    progress=False)


def test_folders_saved_before_bag_batch_still_resume(tmp_path):
    from maga_core.mil.cv import _claim

    cfg = CVConfig.create("abmil", tmp_path, tmp_path / "labels.csv", tmp_path / "cv")
    _claim(tmp_path / "cv", cfg)
    saved = json.loads((tmp_path / "cv" / "config.json").read_text())
    del saved["train"]["bag_batch"]  # as written before the option existed
    (tmp_path / "cv" / "config.json").write_text(json.dumps(saved))
    _claim(tmp_path / "cv", cfg)
    cfg.train.bag_batch = 2
    with pytest.raises(MagaError, match="another configuration"):
        _claim(tmp_path / "cv", cfg)


def _labels(n_patients: int = 12, slides: int = 2) -> pd.DataFrame:
    rows = [{"slide": f"p{p}_s{s}", "patient": f"p{p}", "label": p % 2} for p in range(n_patients) for s in range(slides)]
    return pd.DataFrame(rows)


def test_splits_are_patient_disjoint_and_test_every_slide_once():
    labels = _labels(20, 3)
    splits = make_splits(labels, k=5, seed=0)
    check_splits(splits)  # raises on a patient in two parts of a fold
    test = splits[splits["part"] == "test"]
    assert sorted(test["slide"]) == sorted(labels["slide"])  # each slide tested exactly once
    for f, sub in splits.groupby("fold"):
        parts = {p: set(sub.loc[sub["part"] == p, "patient"]) for p in ("train", "val", "test")}
        assert not (parts["train"] & parts["test"]) and not (parts["val"] & parts["test"]) and not (parts["train"] & parts["val"])
        assert sub.loc[sub["part"] == "test", "label"].nunique() == 2  # stratified
    leaky = splits.copy()
    leaky.loc[(leaky["fold"] == 0) & (leaky["slide"] == test[test["fold"] == 0]["slide"].iloc[0]), "part"] = "train"
    with pytest.raises(MagaError, match="more than one"):
        check_splits(leaky)


def test_manifest_folds_are_honoured():
    labels = _labels(10, 1).assign(fold=[i % 5 for i in range(10)])
    splits = make_splits(labels, k=5, seed=0)
    for f in range(5):
        test = set(splits.loc[(splits["fold"] == f) & (splits["part"] == "test"), "slide"])
        assert test == set(labels.loc[labels["fold"] == f, "slide"])
        val = set(splits.loc[(splits["fold"] == f) & (splits["part"] == "val"), "slide"])
        assert val == set(labels.loc[labels["fold"] == (f + 1) % 5, "slide"])


def test_bad_labels_file_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "labels.csv"
    bad.write_text("slide,diagnosis\na,1\n")
    with pytest.raises(MagaError, match="labels.csv: missing column"):
        read_labels(bad)
    assert main(["mil", "--features", str(tmp_path), "--labels", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"maga mil: error: {bad}: missing column(s) ['label'] (need slide, label[, patient][, fold])"]
    assert not (tmp_path / "o" / "predictions.csv").exists()
    assert main(["mil", "--features", str(tmp_path), "--labels", str(bad), "--out", str(tmp_path / "o"),
                 "--bag-batch", "0"]) == 2
    assert capsys.readouterr().err.strip() == "maga mil: error: --bag-batch must be at least 1, got 0"


@pytest.fixture(scope="module")
def real_features(tmp_path_factory, data_file):
    """A tiny real-tile cohort (6 slides, 3 folds) and its efficientnet_lite0 features at 5x."""
    data_file("lc25000_lung_224_dedup", "lung_n/lungn1.jpeg")
    from maga.extract_job import ExtractConfig, extract_batch
    from maga.experiments.tile_slides import CohortConfig, build_cohort

    root = tmp_path_factory.mktemp("mil_real")
    cohort = build_cohort(CohortConfig(task="lesion", n_patients=6, slides_per_patient=1, folds=3, grid=5,
                                       lesion_cells=(2, 3)), root / "cohort", progress=False)
    report = extract_batch(ExtractConfig(encoder="efficientnet_lite0", input=str(cohort.root / "slides"),
                                         out=str(root / "features"), mag=5.0, num_workers=0, progress=False))
    assert report.ok, report.summary()
    return cohort, root / "features"


def test_short_real_cv_run_writes_tidy_results(real_features, tmp_path, capsys):
    cohort, features = real_features
    out = tmp_path / "cv"
    rc = main(["mil", "--model", "abmil", "--features", str(features), "--labels", str(cohort.labels_csv()),
               "--folds", "3", "--out", str(out), "--epochs", "3", "--bootstrap", "50", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-2000:]
    printed = json.loads(captured.out)
    assert 0.0 <= printed["pooled"]["auc"]["value"] <= 1.0
    pred = pd.read_csv(out / "predictions.csv")
    assert list(pred.columns) == ["fold", "slide", "patient", "label", "pred", "best_epoch", "prob_0", "prob_1"]
    assert sorted(pred["slide"]) == sorted(cohort.slides["slide"])  # every slide tested once
    assert np.allclose(pred[["prob_0", "prob_1"]].sum(axis=1), 1.0, atol=1e-5)
    # the cohort's folds were used: a slide is tested in its own fold
    fold_of = cohort.slides.set_index("slide")["fold"]
    assert (pred["fold"].to_numpy() == fold_of.loc[pred["slide"]].to_numpy()).all()
    fm = pd.read_csv(out / "fold_metrics.csv")
    assert list(fm.columns) == ["fold", "n", "metric", "value", "ci_low", "ci_high"]
    assert set(fm["metric"]) == {"auc", "accuracy", "f1", "kappa"} and sorted(fm["fold"].unique()) == [0, 1, 2]
    boot = pd.read_csv(out / "bootstrap.csv")
    assert len(boot) == 3 * 50 and {"fold", "replicate", "auc"} <= set(boot.columns)
    summary = json.loads((out / "summary.json").read_text())
    assert {"pooled", "mean_over_folds"} <= set(summary) and summary["n_slides"] == len(cohort.slides)
    m = summary["mean_over_folds"]["auc"]
    assert m["ci_low"] <= m["value"] <= m["ci_high"]
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "CVConfig" and config["train"]["optimizer"] == "adam" and config["train"]["max_epochs"] == 3
    for f in range(3):
        assert (out / f"fold_{f:02d}" / "checkpoint.pt").is_file() and (out / f"fold_{f:02d}" / "history.csv").is_file()
    # resuming with the same settings reuses the folds; other settings in the same folder are refused
    cfg = CVConfig.create("abmil", features, cohort.labels_csv(), out, train_overrides={"max_epochs": 3},
                          folds=3, bootstrap=50)
    assert run_cv(cfg, progress=False)["pooled"] == summary["pooled"]
    cfg.train.lr = 1.0
    with pytest.raises(MagaError, match="another configuration"):
        run_cv(cfg, progress=False)


def test_summary_figures_carry_the_paper_keys_and_maga_gain(reference_file):
    from maga.experiments.mil import ExperimentConfig, summary_figures

    reference_file("paper_results.yaml")
    cfg = ExperimentConfig.from_dict({"cohort": {"task": "lesion", "folds": 10}, "models": ["transmil", "gltrans"],
                                      "train": {"gltrans": {"lr": 1e-3, "grad_accum": 1}}})
    rows = [("transmil", "5x", 0.6), ("transmil", "5x+MAGA", 0.75), ("gltrans", "5x+MAGA", 0.9)]
    table = pd.DataFrame([{"model": m, "setting": s, "auc_mean": a, "auc_ci_low": a - 0.1, "auc_ci_high": a + 0.05,
                           "paper_key": "camelyon16_metastasis.auc.maga_gltrans_5x" if m == "gltrans" else "",
                           "paper_auc": 0.8938 if m == "gltrans" else None} for m, s, a in rows])
    fig = summary_figures(table, cfg)
    assert fig["camelyon16_metastasis"]["auc"]["maga_gltrans_5x"] == {"mean": 0.9, "ci": [0.8, 0.95]}
    assert fig["maga_auc_increment_percent"] == {"transmil": {"camelyon16": {"x5": 25.0}}}  # relative gain
    assert fig["cross_validation"]["split"] == "80/10/10 train/val/test, patient-level"
    assert fig["gltrans"]["optimizer"] == {"name": "lookahead_radam", "lr": 1e-3, "weight_decay": 1e-5}


def test_candidate_settings_are_chosen_on_validation_only(real_features, tmp_path):
    cohort, features = real_features
    out = tmp_path / "cv"
    cfg = CVConfig.create("abmil", features, cohort.labels_csv(), out, train_overrides={"max_epochs": 2},
                          folds=3, bootstrap=20, candidates=[{"lr": 1e-3}, {"lr": 0.0}])
    run_cv(cfg, progress=False)
    for f in range(3):
        sel = pd.read_csv(out / f"fold_{f:02d}" / "selection.csv")
        assert sel["candidate"].tolist() == [0, 1] and sel["chosen"].sum() == 1
        key = list(zip(sel["val_auc"].fillna(-np.inf), -sel["val_loss"]))
        assert sel["chosen"].to_numpy().argmax() == max(range(2), key=lambda i: key[i])
        chosen = int(sel.loc[sel["chosen"], "candidate"].iloc[0])
        fold = out / f"fold_{f:02d}"
        assert (fold / "checkpoint.pt").read_bytes() == (fold / f"candidate_{chosen}" / "checkpoint.pt").read_bytes()


def test_experiment_model_names_carry_placement_and_clam_subtyping():
    from maga.experiments.mil import ExperimentConfig, train_overrides

    cfg = ExperimentConfig.from_dict({"cohort": {"task": "subtype"}, "models": ["gltrans", "gltrans@coords", "clam_sb"],
                                      "train": {"gltrans": {"model_kw": {"dim": 64}}}})
    assert train_overrides(cfg, "gltrans")["model_kw"] == {"dim": 64}
    assert train_overrides(cfg, "gltrans@coords")["model_kw"] == {"dim": 64, "placement": "coords"}
    assert train_overrides(cfg, "clam_sb")["model_kw"] == {"subtyping": True}  # upstream NSCLC
    lesion = ExperimentConfig.from_dict({"cohort": {"task": "lesion"}, "models": ["clam_sb"]})
    assert train_overrides(lesion, "clam_sb")["model_kw"] == {"subtyping": False}  # upstream CAMELYON16


def test_cross_validations_side_by_side_equal_one_at_a_time(real_features, tmp_path):
    from maga.experiments.mil import _run_all

    cohort, features = real_features
    def configs(where):
        return [CVConfig.create(m, features, cohort.labels_csv(), tmp_path / where / m,
                                train_overrides={"max_epochs": 1}, folds=3, bootstrap=10) for m in ("abmil", "clam_sb")]
    _run_all(configs("one"), 1, progress=False)
    _run_all(configs("two"), 2, progress=False)
    for m in ("abmil", "clam_sb"):
        a = pd.read_csv(tmp_path / "one" / m / "predictions.csv")
        b = pd.read_csv(tmp_path / "two" / m / "predictions.csv")
        pd.testing.assert_frame_equal(a, b)


def test_one_fold_in_view_is_the_fold_run_cv_trains(real_features, tmp_path):
    """Chapter 04's walkthrough: `cv_data` + `fold_bags` + a seeded `mil.build` + `train_model` +
    `predict_bags` give exactly the test predictions `run_cv` wrote for that fold."""
    from maga_core import mil
    from maga_core.mil.cv import cv_data, fold_bags
    from maga_core.mil.train import predict_bags, seed_everything, train_model

    cohort, features = real_features
    cfg = CVConfig.create("abmil", features, cohort.labels_csv(), tmp_path / "cv", train_overrides={"max_epochs": 2},
                          folds=3, bootstrap=10)
    run_cv(cfg, progress=False)
    splits, bags, classes = cv_data(cfg)
    assert set(bags) == set(cohort.slides["slide"]) and classes == ["normal", "tumour"]
    fold = fold_bags(splits, bags, 1)
    parts = [{b.slide for b in fold[p]} for p in ("train", "val", "test")]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(bags)
    seed_everything(cfg.train.seed)
    model = mil.build(cfg.model, in_dim=fold["train"][0].features.shape[1], n_classes=len(classes))
    train_model(model, fold["train"], fold["val"], cfg.train, progress=False)
    pred = predict_bags(model, fold["test"], scores=True)
    saved = pd.read_csv(tmp_path / "cv" / "predictions.csv", dtype={"slide": str}).query("fold == 1")
    assert saved["slide"].tolist() == [b.slide for b in fold["test"]]
    assert np.allclose(saved[["prob_0", "prob_1"]].to_numpy(), pred["probs"], atol=1e-5)
    assert [s.shape for s in pred["scores"]] == [(len(b.features),) for b in fold["test"]]


def test_one_slide_in_view_is_scored_by_the_fold_that_tested_it(real_features, tmp_path):
    """Chapter 05's walkthrough: `fold_model` finds the fold whose test part held a slide; its checkpoint
    on the slide's features gives the probability the run wrote, and one score per instance."""
    from maga_core.data.features import read_features
    from maga_core.mil.train import load_checkpoint
    from maga.experiments.mil import ExperimentConfig, cv_dir
    from maga.experiments.mil_maps import fold_model, lesion_tiles, patch_size0

    cohort, features = real_features
    cfg = ExperimentConfig.from_dict({"cohort": {"task": "lesion", "folds": 3}, "settings": ["5x"],
                                      "models": ["abmil"]})
    run_cv(CVConfig.create("abmil", features, cohort.labels_csv(), cv_dir(tmp_path, cfg, "5x", "abmil"),
                           train_overrides={"max_epochs": 1}, folds=3, bootstrap=10), progress=False)
    slide = cohort.slides.loc[cohort.slides["label"] == 1, "slide"].iloc[0]
    fold, checkpoint, row = fold_model(tmp_path, cfg, "5x", "abmil", slide)
    assert fold == int(cohort.slides.set_index("slide").loc[slide, "fold"]) % 3 and row["slide"] == slide
    net, _ = load_checkpoint(checkpoint)
    ff = read_features(features / f"{slide}.h5")
    with torch.no_grad():
        out = net(torch.from_numpy(ff.features), coords=torch.from_numpy(ff.coords))
        assert float(torch.softmax(out.logits, 1)[0, 1]) == pytest.approx(row["prob_1"], abs=1e-5)
        assert out.scores.shape == (len(ff),)
    assert patch_size0(ff.attrs) == round(64 * 2.0 / float(ff.attrs["mpp"]))
    assert len(lesion_tiles(cohort, slide)) > 0 and set(lesion_tiles(cohort, slide)["role"]) == {"lesion"}
    with pytest.raises(MagaError, match="never tested"):
        fold_model(tmp_path, cfg, "5x", "abmil", "no_such_slide")

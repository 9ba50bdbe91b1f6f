"""Statistics checked against hand-computed values, sklearn and their definitions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from maga_core import stats
from maga_core.errors import MagaError

# Three positives and three negatives: 8 of 9 pairs ordered correctly, AUC 8/9. Placements: per
# positive, share of negatives below it: [1, 1, 2/3]; per negative, share of positives above it:
# [2/3, 1, 1]. Each has sample variance 1/27, so the DeLong variance is (1/27)/3 + (1/27)/3 = 2/81.
HAND_Y = np.array([1, 1, 1, 0, 0, 0])
HAND_S = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2])


def test_delong_variance_by_hand():
    aucs, cov = stats.delong_covariance(HAND_Y, HAND_S)
    assert aucs[0] == pytest.approx(8 / 9)
    assert cov[0, 0] == pytest.approx(2 / 81)


def _placements_brute_force(y, s):
    """DeLong's structural components straight from the Mann-Whitney kernel (O(m n))."""
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    return psi.mean(axis=1), psi.mean(axis=0)


def test_fast_delong_matches_mann_whitney_definition_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 60)
    a = np.round(rng.random(60) + 0.4 * y, 1)  # rounding makes many ties
    b = np.round(rng.random(60) + 0.2 * y, 1)
    aucs, cov = stats.delong_covariance(y, a, b)
    (va10, va01), (vb10, vb01) = _placements_brute_force(y, a), _placements_brute_force(y, b)
    m, n = len(va10), len(va01)
    expected = np.cov(np.stack([va10, vb10])) / m + np.cov(np.stack([va01, vb01])) / n
    np.testing.assert_allclose(cov, expected, rtol=1e-12)
    np.testing.assert_allclose(aucs, [roc_auc_score(y, a), roc_auc_score(y, b)], rtol=1e-12)


def test_delong_test_behaviour():
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 100)
    strong = rng.normal(size=200) + 2.0 * y
    weak = rng.normal(size=200) + 0.3 * y
    res = stats.delong_test(y, strong, weak)
    assert res.auc_a > res.auc_b and res.z > 0 and res.p_value < 1e-6
    swapped = stats.delong_test(y, weak, strong)
    assert swapped.z == pytest.approx(-res.z) and swapped.p_value == pytest.approx(res.p_value)
    assert stats.delong_test(y, strong, 3 * strong + 1).p_value == 1.0  # same ranking, same AUC
    with pytest.raises(MagaError):
        stats.delong_test(np.zeros(5), strong[:5], weak[:5])


def test_delong_is_calibrated_under_the_null():
    """Two equally good, correlated scores: about 5% of tests reject at 0.05."""
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 60)
    p = []
    for _ in range(400):
        shared = rng.normal(size=120) + 1.0 * y
        p.append(stats.delong_test(y, shared + rng.normal(size=120), shared + rng.normal(size=120)).p_value)
    rate = np.mean(np.asarray(p) < 0.05)
    assert 0.02 <= rate <= 0.09


def test_delong_variance_agrees_with_bootstrap_variance():
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1], 150)
    s = rng.normal(size=300) + 1.0 * y
    _, cov = stats.delong_covariance(y, s)
    boot = stats.bootstrap_metrics(y, s, n_boot=2000, seed=0)["samples"]["auc"]
    assert np.var(boot, ddof=1) == pytest.approx(cov[0, 0], rel=0.2)


def test_metrics_match_sklearn_definitions():
    y = np.array([0, 0, 1, 1, 1, 0])
    p1 = np.array([0.1, 0.6, 0.7, 0.8, 0.4, 0.2])
    m = stats.classification_metrics(y, p1)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p1))
    assert m["accuracy"] == pytest.approx(4 / 6)
    # predictions [0,1,1,1,0,0]: each class 2 of 3 right, precision = recall = 2/3, kappa = (4/6 - 1/2)/(1/2)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["kappa"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_vectorised_replicates_equal_sklearn(n_classes):
    rng = np.random.default_rng(5)
    y = rng.integers(0, n_classes, 80)
    p = rng.dirichlet(np.ones(n_classes), 80) + np.eye(n_classes)[y] * 0.3
    idx = stats.bootstrap_indices(y, 25, seed=0)
    fast = stats.metrics_of_replicates(y, p, idx)
    for b in range(25):
        slow = stats.classification_metrics(y[idx[b]], p[idx[b]])
        for name in stats.METRICS:
            assert fast[name][b] == pytest.approx(slow[name], abs=1e-12)


def test_bootstrap_ci_covers_sample_auc_narrows_with_n_and_is_seeded():
    rng = np.random.default_rng(6)
    widths = []
    for n in (40, 400):
        y = np.arange(n) % 2
        s = rng.normal(size=n) + 1.0 * y
        rep = stats.bootstrap_metrics(y, s, seed=11)
        auc = rep["metrics"]["auc"]
        assert auc["ci_low"] < auc["value"] < auc["ci_high"]
        assert len(rep["samples"]["auc"]) == 500 and not np.isnan(rep["samples"]["auc"]).any()
        widths.append(auc["ci_high"] - auc["ci_low"])
        again = stats.bootstrap_metrics(y, s, seed=11)
        assert again["metrics"] == rep["metrics"]
    assert widths[1] < widths[0] / 2  # width shrinks like 1/sqrt(n): ~1/3.2 for 10x the cases


def test_stratified_resamples_keep_class_counts():
    y = np.array([0] * 7 + [1] * 3)
    idx = stats.bootstrap_indices(y, 50, seed=0)
    assert (y[idx].sum(axis=1) == 3).all()


def test_bad_input_is_a_clear_error():
    with pytest.raises(MagaError, match="do not match"):
        stats.classification_metrics([0, 1, 1], np.zeros((2, 2)))
    with pytest.raises(MagaError, match="labels outside"):
        stats.classification_metrics([0, 2], np.full((2, 2), 0.5))


def _signal(n, seed, effect=1.0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    return y, rng.normal(size=n) + effect * y


def test_cluster_bootstrap_resamples_whole_patients_keeping_class_makeup():
    y = np.array([0, 1, 0, 1, 0, 0, 1, 1])
    groups = np.array(["a", "a", "b", "b", "c", "c", "d", "d"])  # a, b mixed; c all 0; d all 1
    counts = stats.cluster_counts(y, groups, 200, seed=0)
    assert (counts[:, 0] == counts[:, 1]).all() and (counts[:, 4] == counts[:, 5]).all()  # patients stay whole
    assert (counts[:, [0, 2]].sum(axis=1) == 2).all()  # two mixed patients drawn per replicate
    assert (counts[:, 4] == 1).all() and (counts[:, 6] == 1).all()  # the single pure patients always drawn once
    # singleton groups: the same multiplicities as an ordinary stratified bootstrap would draw
    fast = stats.metrics_of_counts(y, np.stack([1 - y * 0.7, y * 0.7 + 0.1], 1), counts)
    assert not np.isnan(fast["auc"]).any()


def test_duplicated_slides_do_not_narrow_patient_level_intervals():
    """Counting every slide twice halves the variance of a slide-level bootstrap and DeLong; clustered
    by patient, neither moves."""
    y, s = _signal(60, 8)
    patient = np.arange(60)
    y2, s2, patient2 = np.repeat(y, 2), np.repeat(s, 2), np.repeat(patient, 2)

    def width(yy, ss, groups):
        auc = stats.bootstrap_metrics(yy, ss, n_boot=3000, seed=1, groups=groups)["metrics"]["auc"]
        return auc["ci_high"] - auc["ci_low"]

    base = width(y, s, patient)
    assert width(y2, s2, patient2) >= 0.9 * base
    assert width(y2, s2, None) < 0.8 * base  # the slide-level bootstrap is fooled (the test can fail)

    noise = np.random.default_rng(9).normal(size=60)
    _, cov = stats.delong_covariance(y, s, s + noise, groups=patient)
    _, cov_dup = stats.delong_covariance(y2, s2, np.repeat(s + noise, 2), groups=patient2)
    np.testing.assert_allclose(cov_dup, cov, rtol=1e-9)
    _, naive = stats.delong_covariance(y2, s2, np.repeat(s + noise, 2))
    assert naive[0, 0] < 0.6 * cov[0, 0]
    # one slide per patient: the clustered variance is DeLong's up to its small-sample factors
    _, plain = stats.delong_covariance(y, s)
    assert cov[0, 0] == pytest.approx(plain[0, 0], rel=0.1)
    grouped = stats.delong_test(y2, s2, np.repeat(s + noise, 2), groups=patient2)
    assert grouped.p_value == pytest.approx(stats.delong_test(y, s, s + noise, groups=patient).p_value)

"""Slide-level statistics of the paper: AUC, accuracy, macro F1, Cohen's kappa; bootstrap confidence
intervals (500 resamples, seeded); DeLong's test for two correlated AUCs on the same slides.

Labels are integer class indices `[n]`; predictions are class probabilities `[n, C]` (a 1-D array is
taken as the positive-class probability of a binary task). AUC is the binary AUC, or for more classes
the macro one-vs-rest AUC (upstream GLTrans reports macro AUROC).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats as sps
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, roc_auc_score

from maga_core.errors import MagaError

METRICS = ("auc", "accuracy", "f1", "kappa")


def _as_arrays(y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(probs, dtype=float)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2 or len(p) != len(y):
        raise MagaError(f"predictions of shape {p.shape} do not match {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= p.shape[1]):
        raise MagaError(f"labels outside 0..{p.shape[1] - 1}")
    return y, p


def auc(y_true, probs) -> float:
    """Binary AUC, or macro one-vs-rest AUC for more classes; NaN when a class is missing."""
    y, p = _as_arrays(y_true, probs)
    present = np.unique(y)
    if len(present) < p.shape[1] or len(present) < 2:
        return float("nan")
    if p.shape[1] == 2:
        return float(roc_auc_score(y, p[:, 1]))
    return float(roc_auc_score(y, p / p.sum(axis=1, keepdims=True), multi_class="ovr", average="macro"))


def classification_metrics(y_true, probs) -> dict[str, float]:
    """AUC, accuracy, macro F1 and Cohen's kappa of the arg-max prediction."""
    y, p = _as_arrays(y_true, probs)
    pred = p.argmax(axis=1)
    labels = np.arange(p.shape[1])
    kappa = cohen_kappa_score(y, pred, labels=labels) if len(np.unique(np.r_[y, pred])) > 1 else float("nan")
    return {
        "auc": auc(y, p),
        "accuracy": float(accuracy_score(y, pred)),
        "f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "kappa": float(kappa),
    }


def bootstrap_indices(y: np.ndarray, n_boot: int, seed: int, stratified: bool = True) -> np.ndarray:
    """`[n_boot, n]` resampling indices. Stratified draws keep each class's count, so every replicate
    holds every class and its AUC is defined even on a small test fold."""
    rng = np.random.default_rng(seed)
    n = len(y)
    if not stratified:
        return rng.integers(0, n, size=(n_boot, n))
    out = np.empty((n_boot, n), dtype=np.int64)
    start = 0
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        out[:, start:start + len(members)] = rng.choice(members, size=(n_boot, len(members)), replace=True)
        start += len(members)
    return out


def _auc_rows(pos_mask: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of each row of `scores [B, n]` against `pos_mask [B, n]` (ties count half);
    NaN for rows without both classes."""
    ranks = sps.rankdata(scores, axis=1)
    m = pos_mask.sum(axis=1)
    n = pos_mask.shape[1] - m
    with np.errstate(invalid="ignore", divide="ignore"):
        out = ((ranks * pos_mask).sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    return np.where((m > 0) & (n > 0), out, np.nan)


def metrics_of_replicates(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> dict[str, np.ndarray]:
    """`classification_metrics` of every resample `idx [B, n]` at once (vectorised; the loop over
    sklearn calls takes seconds per fold). Equal to sklearn's values; tested."""
    n_boot, n = idx.shape
    k = p.shape[1]
    yb = y[idx]
    pb = p[idx]
    pred = pb.argmax(axis=2)
    flat = (np.arange(n_boot)[:, None] * k * k + yb * k + pred).ravel()
    conf = np.bincount(flat, minlength=n_boot * k * k).reshape(n_boot, k, k).astype(float)
    tp = np.diagonal(conf, axis1=1, axis2=2)
    true_count, pred_count = conf.sum(axis=2), conf.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(true_count + pred_count > 0, 2 * tp / (true_count + pred_count), 0.0)
        po = tp.sum(axis=1) / n
        pe = (true_count * pred_count).sum(axis=1) / n**2
        kappa = np.where(pe < 1, (po - pe) / (1 - pe), np.nan)
    if k == 2:
        aucs = _auc_rows(yb == 1, pb[:, :, 1])
    else:
        pn = pb / pb.sum(axis=2, keepdims=True)
        per_class = np.stack([_auc_rows(yb == c, pn[:, :, c]) for c in range(k)], axis=1)
        present = np.stack([(yb == c).any(axis=1) for c in range(k)], axis=1)
        aucs = np.where(present.all(axis=1), per_class.mean(axis=1), np.nan)
    return {"auc": aucs, "accuracy": po, "f1": f1.mean(axis=1), "kappa": kappa}


def bootstrap_metrics(y_true, probs, n_boot: int = 500, confidence: float = 0.95, seed: int = 0,
                      stratified: bool = True) -> dict:
    """Point metrics with percentile bootstrap CIs.

    Returns {"metrics": {name: {"value", "ci_low", "ci_high"}}, "samples": {name: array [n_boot]}};
    samples (NaN where a replicate leaves a metric undefined) feed per-fold box plots.
    """
    y, p = _as_arrays(y_true, probs)
    point = classification_metrics(y, p)
    samples = metrics_of_replicates(y, p, bootstrap_indices(y, n_boot, seed, stratified))
    alpha = (1.0 - confidence) / 2.0
    metrics = {}
    for m in METRICS:
        valid = samples[m][~np.isnan(samples[m])]
        lo, hi = np.quantile(valid, [alpha, 1.0 - alpha]) if len(valid) else (np.nan, np.nan)
        metrics[m] = {"value": point[m], "ci_low": float(lo), "ci_high": float(hi)}
    return {"metrics": metrics, "samples": samples}


# ---------------------------------------------------------------- DeLong

def _structural_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fast DeLong (Sun & Xu, IEEE SPL 2014) via midranks, for k score vectors `[k, n]` at once.

    Returns the AUCs `[k]` and the placement values V10 `[k, m]` (per positive: share of negatives
    ranked below it, ties counting half) and V01 `[k, n_neg]` (per negative: share of positives above).
    """
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    if m == 0 or n == 0:
        raise MagaError("DeLong needs at least one positive and one negative case")
    rank_pos = sps.rankdata(pos, axis=1)  # midranks within positives
    rank_neg = sps.rankdata(neg, axis=1)
    rank_all = sps.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    v10 = (rank_all[:, :m] - rank_pos) / n
    v01 = 1.0 - (rank_all[:, m:] - rank_neg) / m
    aucs = v10.mean(axis=1)
    return aucs, v10, v01


def delong_covariance(y_true, *scores) -> tuple[np.ndarray, np.ndarray]:
    """AUCs `[k]` and their DeLong covariance matrix `[k, k]` for k score vectors on the same cases."""
    y = np.asarray(y_true).astype(int).ravel()
    s = np.atleast_2d(np.asarray(scores, dtype=float))
    if set(np.unique(y)) - {0, 1}:
        raise MagaError("DeLong works on binary labels (0/1)")
    aucs, v10, v01 = _structural_components(y, s)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(s), len(s)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(s), len(s)))
    return aucs, s10 / m + s01 / n


@dataclasses.dataclass
class DeLongResult:
    auc_a: float
    auc_b: float
    se_diff: float
    z: float
    p_value: float


def delong_test(y_true, score_a, score_b) -> DeLongResult:
    """Two-sided DeLong test of AUC(a) = AUC(b) for two models scored on the same cases."""
    aucs, cov = delong_covariance(y_true, score_a, score_b)
    var = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    diff = aucs[0] - aucs[1]
    if var <= 1e-15:  # identical rankings (or a degenerate case): no evidence of a difference
        z, p = 0.0, 1.0
    else:
        z = diff / math.sqrt(var)
        p = float(2.0 * sps.norm.sf(abs(z)))
    return DeLongResult(float(aucs[0]), float(aucs[1]), float(math.sqrt(max(var, 0.0))), float(z), p)

"""Offline ranking metrics in numpy: the definitions training, the paired bootstrap and the tests read.

No Spark here: training computes its validation AUC / gAUC with these without loading pyspark
(:func:`task_metrics`, the per-task summary of one evaluation of the training loop).
The Spark twins and the definitions' prose live in :mod:`evaluation.metrics`, which re-exports
these and whose tests hold both to 1e-9 and to scikit-learn.

Weights: None, a row vector (n,), or one weight row per bootstrap resample (B, n); with (B, n) a
metric returns a (B,) array.

>>> float(auc_np(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.4, 0.8])))
0.875
>>> g = gauc_np(np.array([1, 1, 2, 2, 3]), np.array([0, 1, 0, 1, 1]), np.array([.2, .1, .3, .9, .5]))
>>> float(g.value), g.n_users_used, g.n_users_skipped
(0.5, 2, 1)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.spec import FeatureSpec

LOGLOSS_EPS = 1e-7


def _weights(weights, n: int) -> tuple[np.ndarray, bool]:
    if weights is None:
        return np.ones((1, n)), True
    w = np.asarray(weights, dtype=float)
    return (w[None, :], True) if w.ndim == 1 else (w, False)


def _out(values: np.ndarray, squeeze: bool):
    return float(values[0]) if squeeze else values


def _div(num, den):
    num, den = np.asarray(num, float), np.asarray(den, float)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _grouped_auc_parts(groups: np.ndarray, y: np.ndarray, s: np.ndarray, w: np.ndarray):
    """Mann-Whitney U (ties half), P and N per group for each weight row of ``w`` (B, n).

    Sorts once by (group, score), sums weights per tie block, and counts the negatives strictly
    below each block within its group with one cumulative sum. Returns (group ids, U, P, N), the
    last three shaped (B, n_groups).
    """
    order = np.lexsort((s, groups))
    g, s_sorted, y_sorted = groups[order], s[order], y[order].astype(float)
    ws = w[:, order]
    wp, wn = ws * y_sorted, ws * (1.0 - y_sorted)
    if len(g) == 0:
        empty = np.zeros((w.shape[0], 0))
        return g, empty, empty, empty
    block_start = np.flatnonzero(np.r_[True, (g[1:] != g[:-1]) | (s_sorted[1:] != s_sorted[:-1])])
    pos_b = np.add.reduceat(wp, block_start, axis=1)
    neg_b = np.add.reduceat(wn, block_start, axis=1)
    g_b = g[block_start]
    new_group = np.r_[True, g_b[1:] != g_b[:-1]]
    group_start = np.flatnonzero(new_group)
    group_of_block = np.cumsum(new_group) - 1
    neg_before = np.cumsum(neg_b, axis=1) - neg_b  # exclusive, across groups
    neg_below = neg_before - neg_before[:, group_start][:, group_of_block]
    u = np.add.reduceat(pos_b * (neg_below + 0.5 * neg_b), group_start, axis=1)
    p = np.add.reduceat(pos_b, group_start, axis=1)
    n = np.add.reduceat(neg_b, group_start, axis=1)
    return g_b[group_start], u, p, n


def auc_np(labels, scores, weights=None):
    """AUC with ties counted half (NaN with one class); a (B,) array when ``weights`` is (B, n)."""
    y, s = np.asarray(labels, float), np.asarray(scores, float)
    w, squeeze = _weights(weights, len(y))
    _, u, p, n = _grouped_auc_parts(np.zeros(len(y), dtype=np.int64), y, s, w)
    if u.shape[1] == 0:
        return _out(np.full(w.shape[0], np.nan), squeeze)
    return _out(_div(u[:, 0], p[:, 0] * n[:, 0]), squeeze)


@dataclass(frozen=True)
class GaucResult:
    value: float | np.ndarray  # NaN when no user has both classes
    n_users_used: int
    n_users_skipped: int
    n_rows_used: int  # impressions of the used users


def gauc_np(users, labels, scores, weights=None) -> GaucResult:
    """Impression-weighted mean of per-user AUCs over users holding both classes.

    ``weights`` (bootstrap multiplicities) must be constant within a user: a user drawn ``m`` times
    counts ``m * n_u``. Its per-user AUC does not change, so it is computed once.
    """
    users = pd.factorize(np.asarray(users))[0]
    y, s = np.asarray(labels, float), np.asarray(scores, float)
    w, squeeze = _weights(weights, len(y))
    _, u, p, n = _grouped_auc_parts(users, y, s, np.ones((1, len(y))))
    u, p, n = u[0], p[0], n[0]
    used = (p > 0) & (n > 0)
    n_u = p + n
    auc_u = _div(u, p * n)
    first_row = np.zeros(u.shape[0], dtype=np.int64)
    if len(users):
        first_row[users[::-1]] = np.arange(len(users))[::-1]  # any row of each user
    multiplicity = w[:, first_row]  # (B, n_users)
    weight = multiplicity * np.where(used, n_u, 0.0)
    value = _div((weight * np.where(used, auc_u, 0.0)).sum(1), weight.sum(1))
    return GaucResult(_out(value, squeeze), int(used.sum()), int((~used).sum()), int(n_u[used].sum()))


def log_loss_np(labels, probs, weights=None):
    y, p = np.asarray(labels, float), np.clip(np.asarray(probs, float), LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    w, squeeze = _weights(weights, len(y))
    ll = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return _out(_div(w @ ll, w.sum(1)), squeeze)


def calibration_np(labels, preds, weights=None):
    y, p = np.asarray(labels, float), np.asarray(preds, float)
    w, squeeze = _weights(weights, len(y))
    return _out(_div(w @ p, w @ y), squeeze)


def mae_np(labels, preds, weights=None):
    y, p = np.asarray(labels, float), np.asarray(preds, float)
    w, squeeze = _weights(weights, len(y))
    return _out(_div(w @ np.abs(p - y), w.sum(1)), squeeze)


def rmse_np(labels, preds, weights=None):
    y, p = np.asarray(labels, float), np.asarray(preds, float)
    w, squeeze = _weights(weights, len(y))
    return _out(np.sqrt(_div(w @ (p - y) ** 2, w.sum(1))), squeeze)


def r2_np(labels, preds, weights=None):
    y, p = np.asarray(labels, float), np.asarray(preds, float)
    w, squeeze = _weights(weights, len(y))
    total = w.sum(1)
    mean_y = _div(w @ y, total)
    sst = (w * (y[None, :] - mean_y[:, None]) ** 2).sum(1)
    sse = w @ (p - y) ** 2
    return _out(np.where(sst > 1e-12 * np.maximum(1.0, w @ (y * y)), 1.0 - _div(sse, sst), np.nan), squeeze)


def task_metrics(spec: FeatureSpec, preds: np.ndarray, labels: np.ndarray, masks: np.ndarray,
                 users: np.ndarray | None) -> dict[str, Any]:
    """Per task: AUC and gAUC (binary) or RMSE (regression) on masked rows; plus ``mtl_auc``, the
    mean AUC over the binary tasks (the training loop's early-stopping score).

    ``preds``, ``labels``, ``masks``: ``[N, T]`` in the order of ``spec.tasks``; ``preds`` may be
    logits: AUC and gAUC only depend on the order of the scores. ``users``: ``[N]`` (None: no gAUC).
    """
    out: dict[str, Any] = {}
    aucs = []
    for i, task in enumerate(spec.tasks):
        m = masks[:, i] > 0
        y, s = labels[m, i], preds[m, i]
        if task.kind == "binary":
            auc = float(auc_np(y, s)) if len(y) else float("nan")
            gauc = float(gauc_np(users[m], y, s).value) if users is not None and len(y) else float("nan")
            out[task.name] = {"auc": auc, "gauc": gauc, "n": int(m.sum()),
                              "positive_rate": float(y.mean()) if len(y) else float("nan")}
            if not math.isnan(auc):
                aucs.append(auc)
        else:
            out[task.name] = {"rmse": float(np.sqrt(np.mean((s - y) ** 2))) if len(y) else float("nan"), "n": int(m.sum())}
    out["mtl_auc"] = float(np.mean(aucs)) if aucs else float("nan")
    return out


def format_metrics(metrics: dict) -> str:
    """A small text table of a training run's metrics: task, valid AUC, test AUC, test gAUC.

    >>> print(format_metrics({"valid": {"click": {"auc": 0.7}, "mtl_auc": 0.7}, "test": {}}))
    task         valid AUC  test AUC test gAUC
    click           0.7000       nan       nan
    mean            0.7000       nan
    """
    lines = [f"{'task':<12}{'valid AUC':>10}{'test AUC':>10}{'test gAUC':>10}"]
    valid, test = metrics.get("valid") or {}, metrics.get("test") or {}
    for task, v in valid.items():
        if isinstance(v, dict) and "auc" in v:
            t = test.get(task, {})
            lines.append(f"{task:<12}{v['auc']:>10.4f}{t.get('auc', float('nan')):>10.4f}"
                         f"{t.get('gauc', float('nan')):>10.4f}")
    lines.append(f"{'mean':<12}{valid.get('mtl_auc', float('nan')):>10.4f}{test.get('mtl_auc', float('nan')):>10.4f}")
    return "\n".join(lines)

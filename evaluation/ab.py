"""Offline A/B: a control model A and a treatment model B scored on the same candidates.

Statistics are paired: both arms are evaluated on the same rows, and the 95 % confidence interval of
every delta (B - A) comes from a **paired bootstrap over users**: draw users with replacement
(``n_boot`` times, fixed ``seed``), give each row its user's multiplicity as weight, recompute the
metric for *both* arms on that same resample, and take percentiles of the deltas. Users, not rows,
are resampled because a user's impressions are correlated. The two-sided p-value is
``min(1, 2 * min(P*(delta <= 0), P*(delta >= 0)))`` over the bootstrap deltas, each proportion
computed as ``(k + 1) / (n_boot + 1)`` so that a finite bootstrap never claims p = 0. B *wins* or
*loses* a task when the CI of its primary metric (AUC; RMSE for regression) excludes 0, and *ties*
otherwise.

Slices (``tab=1``, ``user_active_degree=...``, ``new_item=...``): each task's primary metric per
slice value. A slice with fewer than ``ABConfig.min_slice_n`` rows gets verdict ``too_small`` (its
numbers are still reported). The other slice rows, of every task and slice column together, are one
family of tests: their p-values are adjusted by **Benjamini-Hochberg** (:func:`benjamini_hochberg`,
column ``p_adjusted``), and a slice's verdict is *wins* / *loses* (by the sign of the delta) when the
adjusted p-value is below ``1 - confidence``, else *ties*. The bootstrap p-value is at least
``2 / (n_boot + 1)``: with many slices, only a larger ``n_boot`` lets an adjusted p-value fall below 0.05.

Top-K replay: a user's logged candidates of one date form one list (the logged "requests", 60-minute
windows of impressions, hold 1.2 candidates on average: too few to rank, and the replay within
them was 0 by construction). Inside each (user, date) list with at least two evaluable candidates,
rank by each arm's score of a task and report ``<task>@K`` (binary tasks: the mean label of the top
K, per list then averaged over lists) and ``ndcg@K`` (gain = label, discount ``1/log2(rank + 1)``;
lists whose labels are all 0 have no ideal ranking and are left out); ``n`` counts the lists.
Collected rows without a ``date`` column are one list per user. Score ties are broken by
``video_id`` so that reruns agree.

The bootstrap is numpy on the driver: :func:`run_ab` collects ``(user, request, video, labels,
masks, score_a, score_b, slices)`` of the matched, labelled rows through Arrow ``toPandas()``,
guarded by ``ABConfig.max_rows`` (the demo's ~34k test rows are far below it). Larger evaluations
should sample users first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from conf.tables import CANDIDATES
from evaluation.metrics import (
    SLICE_COLUMNS,
    auc_np,
    calibration_np,
    gauc_np,
    join_scores_with_labels,
    log_loss_np,
    mae_np,
    r2_np,
    rmse_np,
    score_column,
    slice_label,
)
from features.spec import TaskField

ARMS = ("a", "b")  # a = control, b = treatment
MTL_TASK = "mtl"
# +1: higher is better, -1: lower is better, 0: no direction (calibration: closer to 1)
METRIC_DIRECTION = {"auc": 1, "gauc": 1, "logloss": -1, "calibration": 0, "mae": -1, "rmse": -1, "r2": 1,
                    "mtl_auc": 1, "recall": 1, "ndcg": 1, "hit_rate": 1, "coverage": 1}  # the last 4: list@K
PRIMARY_METRIC = {"binary": "auc", "regression": "rmse"}
RESULT_COLUMNS = [
    "task", "metric", "slice", "control_value", "treatment_value", "delta", "rel_delta",
    "ci_low", "ci_high", "p_value", "n", "n_users", "p_adjusted", "verdict",
]
TOO_SMALL = "too_small"  # the verdict of a slice under ABConfig.min_slice_n rows


class ABInputError(ValueError):
    """The two arms cannot be compared (no overlap, missing columns, too many rows to collect)."""


@dataclass(frozen=True)
class ABConfig:
    n_boot: int = 200
    seed: int = 0
    ks: tuple[int, ...] = (5, 10)
    slices: tuple[str, ...] = ("tab", "user_active_degree", "new_item")
    confidence: float = 0.95
    max_rows: int = 2_000_000  # guard on what run_ab collects to the driver
    roc_points: int = 300
    calibration_bins: int = 10
    min_slice_n: int = 100  # a slice with fewer rows gets no verdict (too_small) and stays out of BH


@dataclass(frozen=True)
class PairCounts:
    control_rows: int
    treatment_rows: int
    matched_rows: int  # inner join on the candidate key (request_id, video_id, impression_id)
    labelled_rows: int = 0  # matched rows that have a logged impression with labels


@dataclass
class ABResult:
    control: str
    treatment: str
    dates: str
    table: pd.DataFrame  # RESULT_COLUMNS
    curves: dict  # task -> {"roc": {arm: (fpr, tpr)}, "calibration": {arm: (mean_pred, mean_label)}}
    counts: PairCounts
    n_users: int
    n_requests: int
    config: ABConfig = field(default_factory=ABConfig)


def metric_direction(metric: str) -> int:
    if metric in METRIC_DIRECTION:
        return METRIC_DIRECTION[metric]
    return 1 if "@" in metric else 0  # top-K metrics: higher is better


def verdict(row) -> str:
    """``wins`` / ``loses`` / ``ties`` (or ``too_small``) for B from one result row: the row's own
    ``verdict`` when it has one (slice rows: from the adjusted p-value), else from its CI (tie:
    the CI contains 0)."""
    own = row.get("verdict") if hasattr(row, "get") else None
    if isinstance(own, str) and own:
        return own
    return ci_verdict(row)


def ci_verdict(row) -> str:
    """``wins`` / ``loses`` / ``ties`` from the CI of a result row (tie: the CI contains 0)."""
    direction = metric_direction(row["metric"])
    lo, hi = row["ci_low"], row["ci_high"]
    if direction == 0 or lo is None or hi is None or math.isnan(lo) or math.isnan(hi) or lo <= 0 <= hi:
        return "ties"
    return "wins" if (lo > 0) == (direction > 0) else "loses"


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (the false discovery rate step-up): with the ``m``
    finite p-values sorted ``p_(1) <= ... <= p_(m)``, ``q_(i) = min_{j >= i} min(1, p_(j) m / j)``,
    returned in the input order; NaN stays NaN and does not count in ``m``.

    >>> benjamini_hochberg([0.01, 0.04, 0.03, 0.005]).round(4).tolist()
    [0.02, 0.04, 0.04, 0.02]
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if not len(ok):
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    scaled = p[order] * m / np.arange(1, m + 1)
    out[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return out


def adjust_slice_verdicts(rows: list[dict], config: ABConfig) -> list[dict]:
    """The slice rows with ``p_adjusted`` and ``verdict`` set (module docstring): ``too_small`` under
    ``config.min_slice_n`` rows, else Benjamini-Hochberg over all the other rows given, a win or loss
    when the adjusted p-value is below ``1 - config.confidence``."""
    rows = [dict(r) for r in rows]
    family = [i for i, r in enumerate(rows) if r["n"] >= config.min_slice_n]
    q = benjamini_hochberg([rows[i]["p_value"] for i in family])
    alpha = 1 - config.confidence
    for r in rows:
        r["p_adjusted"], r["verdict"] = float("nan"), TOO_SMALL
    for i, qi in zip(family, q):
        r = rows[i]
        direction = metric_direction(r["metric"])
        significant = np.isfinite(qi) and qi < alpha and direction != 0 and np.isfinite(r["delta"]) and r["delta"] != 0
        r["p_adjusted"] = float(qi)
        r["verdict"] = ("wins" if r["delta"] * direction > 0 else "loses") if significant else "ties"
    return rows


def primary_metric(task: TaskField) -> str:
    return PRIMARY_METRIC[task.kind]


# ---------------------------------------------------------------------------------------------
# Spark side: pair, label, collect
# ---------------------------------------------------------------------------------------------

def arm_score_column(task: TaskField | str, arm: str) -> str:
    return f"{score_column(task)}_{arm}"


def pair_scores(control: DataFrame, treatment: DataFrame, tasks: Sequence[TaskField]) -> tuple[DataFrame, PairCounts]:
    """Inner-join the arms on the candidate key ``(request_id, video_id, impression_id)``; raise when
    nothing matches.

    ``impression_id`` is compared null-safely (unlogged candidates have none). It is part of the
    key because a logged request can show the same video twice: pairing on (request, video) alone
    would cross those rows and count them 4 times instead of twice.
    """
    for name, df in (("control", control), ("treatment", treatment)):
        missing = [score_column(t) for t in tasks if score_column(t) not in df.columns]
        if missing:
            raise ABInputError(f"{name} scores lack {missing}")
    keys = list(CANDIDATES.keys)
    a = control.select(*keys, "user_id", "date",
                       *[F.col(score_column(t)).alias(arm_score_column(t, "a")) for t in tasks])
    b = treatment.select(*[F.col(k).alias(f"_b_{k}") for k in keys],
                         *[F.col(score_column(t)).alias(arm_score_column(t, "b")) for t in tasks])
    on = [F.col(k).eqNullSafe(F.col(f"_b_{k}")) for k in keys]
    paired = a.join(b, on, "inner").drop(*[f"_b_{k}" for k in keys])
    counts = PairCounts(control.count(), treatment.count(), paired.count())
    if counts.matched_rows == 0:
        raise ABInputError(
            f"control ({counts.control_rows} rows) and treatment ({counts.treatment_rows} rows) share no "
            "(request_id, video_id, impression_id): score both models on the same candidates and dates"
        )
    return paired, counts


def collect_paired(labelled: DataFrame, tasks: Sequence[TaskField], max_rows: int) -> pd.DataFrame:
    """Bring the compact per-row data to the driver through Arrow, refusing more than ``max_rows``."""
    cols = ["user_id", "request_id", "video_id", *(["date"] if "date" in labelled.columns else [])]
    cols += [c for t in tasks for c in (t.column, t.mask_column, arm_score_column(t, "a"), arm_score_column(t, "b"))]
    cols += [c for c in SLICE_COLUMNS.values() if c in labelled.columns]
    pdf = labelled.select(*cols).limit(max_rows + 1).toPandas()
    if len(pdf) > max_rows:
        raise ABInputError(
            f"more than {max_rows} labelled rows to compare: narrow the dates or raise ABConfig.max_rows "
            "(the bootstrap runs on the driver)"
        )
    return pdf


def run_ab(
    control_scores: DataFrame,
    treatment_scores: DataFrame,
    examples: DataFrame,
    tasks: Sequence[TaskField],
    control: str,
    treatment: str,
    dates: str,
    config: ABConfig = ABConfig(),
    slice_values: DataFrame | None = None,
) -> ABResult:
    """Pair the arms, attach labels and the raw slice values (``evaluation.metrics.raw_slice_values``;
    without them only the ``new_item`` slice exists), collect (guarded) and compute the A/B table
    and curves."""
    paired, counts = pair_scores(control_scores, treatment_scores, tasks)
    pdf = collect_paired(join_scores_with_labels(paired, examples, tasks, slice_values), tasks, config.max_rows)
    if pdf.empty:
        raise ABInputError(f"none of the {counts.matched_rows} matched candidates has labels in examples")
    counts = PairCounts(counts.control_rows, counts.treatment_rows, counts.matched_rows, len(pdf))
    return ABResult(
        control=control, treatment=treatment, dates=dates,
        table=compare_arms(pdf, tasks, config), curves=build_curves(pdf, tasks, config), counts=counts,
        n_users=int(pdf["user_id"].nunique()), n_requests=int(pdf["request_id"].nunique()), config=config,
    )


# ---------------------------------------------------------------------------------------------
# numpy side: paired bootstrap
# ---------------------------------------------------------------------------------------------

def user_resample_counts(n_users: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_users) multiplicities of each user in each resample (users drawn with replacement)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_users, size=(n_boot, n_users))
    flat = draws + (np.arange(n_boot) * n_users)[:, None]
    return np.bincount(flat.ravel(), minlength=n_boot * n_users).reshape(n_boot, n_users).astype(float)


def _boot(fn: Callable[[np.ndarray | None], np.ndarray], counts: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Evaluate ``fn(weights)`` over all resamples, in chunks that keep (chunk, rows) arrays small."""
    chunk = max(1, int(4_000_000 // max(1, len(codes))))
    return np.concatenate([np.atleast_1d(fn(counts[i:i + chunk][:, codes])) for i in range(0, len(counts), chunk)])


def _stat_row(task, metric, sl, a, b, a_boot, b_boot, n, n_users, confidence, recentre: bool = False) -> dict:
    """One result row: percentile CI and two-sided p-value of the bootstrap deltas. ``recentre``
    (set metrics such as coverage, whose bootstrap is biased): the deltas are first shifted by
    ``(b - a) - mean(deltas)``, so the interval is their spread around the estimate (it holds the
    estimate whenever the bootstrap mean lies inside its own percentile interval)."""
    delta_boot = (b_boot - a_boot)[np.isfinite(b_boot - a_boot)]
    if recentre and len(delta_boot) and np.isfinite(b - a):
        delta_boot = delta_boot + ((b - a) - delta_boot.mean())
    tail = (1 - confidence) / 2 * 100
    if len(delta_boot):
        lo, hi = (float(x) for x in np.percentile(delta_boot, [tail, 100 - tail]))
        k = len(delta_boot) + 1
        p = min(1.0, 2 * min((1 + (delta_boot <= 0).sum()) / k, (1 + (delta_boot >= 0).sum()) / k))
    else:
        lo = hi = p = float("nan")
    delta = b - a
    rel = delta / abs(a) if np.isfinite(a) and a != 0 else float("nan")
    row = dict(task=task, metric=metric, slice=sl, control_value=float(a), treatment_value=float(b),
               delta=float(delta), rel_delta=float(rel), ci_low=lo, ci_high=hi, p_value=float(p),
               n=int(n), n_users=int(n_users), p_adjusted=float("nan"))
    row["verdict"] = ci_verdict(row)
    return row


def _metric_fns(task: TaskField) -> dict[str, Callable]:
    """metric -> fn(users, y, s, weights) for a task's kind (weights None: the point estimate)."""
    if task.kind == "binary":
        return {
            "auc": lambda u, y, s, w: auc_np(y, s, w),
            "gauc": lambda u, y, s, w: gauc_np(u, y, s, w).value,
            "logloss": lambda u, y, s, w: log_loss_np(y, s, w),
            "calibration": lambda u, y, s, w: calibration_np(y, s, w),
        }
    return {
        "mae": lambda u, y, s, w: mae_np(y, s, w),
        "rmse": lambda u, y, s, w: rmse_np(y, s, w),
        "r2": lambda u, y, s, w: r2_np(y, s, w),
    }


def _task_rows(pdf: pd.DataFrame, task: TaskField) -> np.ndarray:
    return (
        pdf[task.mask_column].fillna(0).astype(bool)
        & pdf[task.column].notna()
        & pdf[arm_score_column(task, "a")].notna()
        & pdf[arm_score_column(task, "b")].notna()
    ).to_numpy()


def compare_arms(pdf: pd.DataFrame, tasks: Sequence[TaskField], config: ABConfig = ABConfig()) -> pd.DataFrame:
    """The A/B table (``RESULT_COLUMNS``) from the collected paired rows.

    ``pdf`` holds ``user_id``, ``request_id``, ``video_id``, ``label_<t>``, ``mask_<t>``,
    ``score_<t>_a``, ``score_<t>_b`` and optionally the slice columns. One resample matrix of users
    is shared by every task, metric, slice and arm, so deltas across them are paired too.
    """
    user_codes, user_ids = pd.factorize(pdf["user_id"])
    counts = user_resample_counts(len(user_ids), config.n_boot, config.seed)
    rows: list[dict] = []
    mtl_parts: dict[str, list[np.ndarray]] = {"a": [], "b": [], "a_boot": [], "b_boot": []}
    mtl_n = 0
    slice_rows: list[dict] = []
    for task in tasks:
        m = _task_rows(pdf, task)
        if not m.any():
            continue
        codes = user_codes[m]
        y = pdf.loc[m, task.column].to_numpy(float)
        s = {arm: pdf.loc[m, arm_score_column(task, arm)].to_numpy(float) for arm in ARMS}
        for metric, fn in _metric_fns(task).items():
            point = {arm: fn(codes, y, s[arm], None) for arm in ARMS}
            boot = {arm: _boot(lambda w, arm=arm: fn(codes, y, s[arm], w), counts, codes) for arm in ARMS}
            rows.append(_stat_row(task.name, metric, "all", point["a"], point["b"], boot["a"], boot["b"],
                                  m.sum(), len(np.unique(codes)), config.confidence))
            if metric == "auc":
                for arm in ARMS:
                    mtl_parts[arm].append(np.atleast_1d(point[arm]))
                    mtl_parts[arm + "_boot"].append(boot[arm])
                mtl_n = max(mtl_n, int(m.sum()))
        slice_rows += _slice_rows(pdf, task, m, user_codes, counts, config)
        rows += _topk_rows(pdf, task, m, user_codes, counts, config)
    if mtl_parts["a"]:
        a, b = (np.nanmean(np.vstack(mtl_parts[arm]), axis=0)[0] for arm in ARMS)
        a_boot, b_boot = (np.nanmean(np.vstack(mtl_parts[arm + "_boot"]), axis=0) for arm in ARMS)
        rows.append(_stat_row(MTL_TASK, "mtl_auc", "all", a, b, a_boot, b_boot, mtl_n, len(user_ids), config.confidence))
    return pd.DataFrame(rows + adjust_slice_verdicts(slice_rows, config), columns=RESULT_COLUMNS)


def _slice_rows(pdf, task, m, user_codes, counts, config) -> list[dict]:
    """The task's primary metric per slice value, bootstrapped with the same user resamples."""
    metric = primary_metric(task)
    fn = _metric_fns(task)[metric]
    rows = []
    for name in config.slices:
        column = SLICE_COLUMNS.get(name, name)
        if column not in pdf.columns:
            continue
        values = pdf[column]
        for key in values[m].drop_duplicates().tolist():
            sub = m & (values.isna() if pd.isna(key) else values == key).to_numpy()
            codes = user_codes[sub]
            y = pdf.loc[sub, task.column].to_numpy(float)
            s = {arm: pdf.loc[sub, arm_score_column(task, arm)].to_numpy(float) for arm in ARMS}
            point = {arm: fn(codes, y, s[arm], None) for arm in ARMS}
            boot = {arm: _boot(lambda w, arm=arm: fn(codes, y, s[arm], w), counts, codes) for arm in ARMS}
            rows.append(_stat_row(task.name, metric, slice_label(name, key), point["a"], point["b"],
                                  boot["a"], boot["b"], sub.sum(), len(np.unique(codes)), config.confidence))
    rows.sort(key=lambda r: r["slice"])
    return rows


def list_codes(pdf: pd.DataFrame) -> np.ndarray:
    """Codes 0..L-1 of the top-K replay's lists: one per (user, date), one per user without ``date``.

    >>> day = pd.DataFrame({"user_id": [1, 1, 1, 2], "request_id": ["a", "a", "b", "c"],
    ...                     "date": ["05-03", "05-03", "05-03", "05-03"]})
    >>> list_codes(day).tolist()  # user 1's two requests of the day: one list
    [0, 0, 0, 1]
    """
    keys = [pdf["user_id"], pdf["date"]] if "date" in pdf.columns else [pdf["user_id"]]
    return pd.MultiIndex.from_arrays(keys).factorize()[0] if len(keys) > 1 else pd.factorize(keys[0])[0]


def topk_per_request(requests: np.ndarray, videos: np.ndarray, scores: np.ndarray, labels: np.ndarray, k: int):
    """Per request (codes 0..R-1): mean label of the top ``k`` by score, DCG@k and ideal DCG@k."""
    n_req = int(requests.max()) + 1 if len(requests) else 0

    def ranks(order):
        r = requests[order]
        start = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
        sizes = np.diff(np.r_[start, len(r)])
        return r, np.arange(len(r)) - np.repeat(start, sizes)

    r, rank = ranks(np.lexsort((videos, -scores, requests)))
    lab = labels[np.lexsort((videos, -scores, requests))]
    top = rank < k
    n_top = np.bincount(r[top], minlength=n_req)
    mean_label = np.bincount(r[top], weights=lab[top], minlength=n_req) / np.maximum(n_top, 1)
    dcg = np.bincount(r[top], weights=lab[top] / np.log2(rank[top] + 2), minlength=n_req)
    ideal_order = np.lexsort((-labels, requests))
    ri, rank_i = ranks(ideal_order)
    top_i = rank_i < k
    idcg = np.bincount(ri[top_i], weights=labels[ideal_order][top_i] / np.log2(rank_i[top_i] + 2), minlength=n_req)
    return mean_label, dcg, idcg


def _topk_rows(pdf, task, m, user_codes, counts, config) -> list[dict]:
    req_all = pd.factorize(list_codes(pdf)[m])[0]  # one list per (user, date): module docstring
    size = np.bincount(req_all)
    keep_rows = size[req_all] >= 2  # a ranking needs at least two candidates
    if not keep_rows.any():
        return []
    req = pd.factorize(req_all[keep_rows])[0]
    videos = pdf.loc[m, "video_id"].to_numpy()[keep_rows]
    y = pdf.loc[m, task.column].to_numpy(float)[keep_rows]
    codes = user_codes[m][keep_rows]
    req_user = np.zeros(req.max() + 1, dtype=np.int64)
    req_user[req] = codes
    rows = []
    for k in config.ks:
        per_arm = {arm: topk_per_request(req, videos, pdf.loc[m, arm_score_column(task, arm)].to_numpy(float)[keep_rows], y, k)
                   for arm in ARMS}
        metrics = {}
        if task.kind == "binary":
            metrics[f"{task.name}@{k}"] = ({arm: per_arm[arm][0] for arm in ARMS}, np.ones(len(req_user), bool))
        idcg = per_arm["a"][2]
        has_gain = idcg > 0
        metrics[f"ndcg@{k}"] = ({arm: _ratio(per_arm[arm][1], idcg) for arm in ARMS}, has_gain)
        for metric, (values, use) in metrics.items():
            if not use.any():
                continue
            ucodes = req_user[use]

            def mean(w, arm):
                w = np.ones((1, use.sum())) if w is None else w
                return (w @ values[arm][use]) / np.where(w.sum(1) > 0, w.sum(1), np.nan)

            point = {arm: float(mean(None, arm)[0]) for arm in ARMS}
            boot = {arm: _boot(lambda w, arm=arm: mean(w, arm), counts, ucodes) for arm in ARMS}
            rows.append(_stat_row(task.name, metric, "all", point["a"], point["b"], boot["a"], boot["b"],
                                  int(use.sum()), len(np.unique(ucodes)), config.confidence))
    return rows


def _ratio(num, den):
    out = np.zeros_like(num, dtype=float)
    np.divide(num, den, out=out, where=den > 0)
    return out


# ---------------------------------------------------------------------------------------------
# curves for the report
# ---------------------------------------------------------------------------------------------

def build_curves(pdf: pd.DataFrame, tasks: Sequence[TaskField], config: ABConfig = ABConfig()) -> dict:
    """ROC points (binary tasks) and binned calibration (every task) per arm, small enough to plot."""
    from sklearn.metrics import roc_curve

    curves: dict = {}
    for task in tasks:
        m = _task_rows(pdf, task)
        if not m.any():
            continue
        y = pdf.loc[m, task.column].to_numpy(float)
        entry: dict = {"kind": task.kind, "calibration": {}}
        if task.kind == "binary" and 0 < y.sum() < len(y):
            entry["roc"] = {}
        for arm in ARMS:
            s = pdf.loc[m, arm_score_column(task, arm)].to_numpy(float)
            if "roc" in entry:
                fpr, tpr, _ = roc_curve(y, s)
                keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), config.roc_points)).astype(int))
                entry["roc"][arm] = (fpr[keep], tpr[keep])
            edges = np.unique(np.quantile(s, np.linspace(0, 1, config.calibration_bins + 1)))
            bins = np.searchsorted(edges[1:-1], s, side="right")
            n = np.bincount(bins)
            nz = n > 0
            entry["calibration"][arm] = (
                (np.bincount(bins, weights=s) / np.maximum(n, 1))[nz],
                (np.bincount(bins, weights=y) / np.maximum(n, 1))[nz],
            )
        curves[task.name] = entry
    return curves


# ---------------------------------------------------------------------------------------------
# the ab_reports table
# ---------------------------------------------------------------------------------------------

def report_id_for(control: str, treatment: str, dates: Sequence[str]) -> str:
    """Deterministic id of a comparison: the same arms and dates always give the same id."""
    import hashlib

    key = f"{control}|{treatment}|{','.join(sorted(dates))}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def ab_report_schema():
    """The ``ab_reports`` table's schema (``conf.schemas.AB_REPORTS_SCHEMA``; pyspark loaded on call)."""
    from conf.schemas import AB_REPORTS_SCHEMA

    return AB_REPORTS_SCHEMA


def ab_report_rows(result: ABResult, report_id: str) -> list[tuple]:
    """Rows for the ``ab_reports`` table in :func:`ab_report_schema` order (NaN becomes null)."""
    import datetime as dt

    schema = ab_report_schema()
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    fixed = dict(report_id=report_id, control=result.control, treatment=result.treatment, dates=result.dates,
                 matched_rows=result.counts.matched_rows, n_boot=result.config.n_boot, seed=result.config.seed,
                 created_at=now)
    rows = []
    for _, r in result.table.iterrows():
        values = {**fixed, **r.to_dict(), "verdict": verdict(r)}
        row = []
        for f in schema.fields:
            v = values[f.name]
            if isinstance(v, float) and math.isnan(v):
                v = None
            elif f.dataType.typeName() in ("long", "integer"):
                v = int(v)
            row.append(v)
        rows.append(tuple(row))
    return rows

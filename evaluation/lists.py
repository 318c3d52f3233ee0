"""Replay evaluation of ranked lists on the logs of the ranked date, naive and debiased (IPS).

A user's list is the top K videos of the ``recommendations`` table (or of another order over the
same candidates: the retrieval stage's own order, popularity). Against the user's **logged
positives** of the date (videos clicked / long-viewed / liked at or after the request time), per
task and user ``u`` with at least one positive (``P_u``, the set of those videos), each positive
``i`` carrying a gain ``g_i`` (``g_i = 1`` in the naive replay, ``1 / p_i`` in the IPS replay):

- ``recall``   = sum_{i in P_u ∩ list} g_i / sum_{i in P_u} g_i   (naive: |list ∩ P_u| / |P_u|)
- ``ndcg``     = DCG / IDCG, ``DCG = sum_{i in P_u ∩ list} g_i / log2(rank_i + 1)``,
                 ``IDCG = sum_{r = 1}^{min(K, |P_u|)} g_(r) / log2(r + 1)``, ``g_(1) >= g_(2) >= ...``
                 the user's gains in decreasing order (the ideal list puts the heaviest first)
- ``hit_rate`` = 1 when the list holds at least one positive, else 0 (naive replay only)
- ``recall_ceiling`` = the recall of the user's whole candidate set (every candidate of the user's
                 requests of the date, not only the top K): what any order of these candidates could
                 reach at most

each averaged over those users (``n`` = their number, the ceiling over the same users as the order
beside it); plus ``coverage`` (task ``all``, naive slice): distinct videos over all lists / videos in
the catalog. A positive the candidate set does not hold can never be recommended: every order over
the same candidates shares that ceiling, so the arms' differences are what the ranker adds.

**IPS replay** (Yang et al., RecSys 2018, "Unbiased offline recommender evaluation for
missing-not-at-random implicit feedback"). A popular video is more likely to be observed as a
positive, whatever the list, so the naive replay credits an order that copies popularity. The
debiased replay weights each (user, positive video ``i``) by ``1 / p_i``, with the item's
observation propensity, per task,

    p_i = max(clip, (n_i / max_j n_j) ^ ((gamma + 1) / 2))

where ``n_i`` is the video's number of positives of the task in the ``lookback_days`` before the
ranked date's (earliest) request time, counting only events whose labels are visible then
(``time_ms + play_time_ms < request time``, the features' ``label_delay`` rule: :func:`positive_counts`),
``p`` is 1 for the most popular video and a video without a positive gets ``clip``
(``ReplaySettings.propensity_clip``). ``gamma`` is fitted (:func:`fit_popularity_exponent`) by least
squares on the log-log rank-frequency plot of those counts, ``log n_(r) = c - gamma log r`` over the
videos with ``n >= min_count`` sorted by decreasing count (a power law ``n_(r) ∝ r^-gamma``), or taken
from ``ReplaySettings.propensity_gamma``. The estimator is self-normalised per user: the formulas
above with ``g_i = 1 / p_i``, so a user's IPS recall is ``sum_{hit} 1/p_i / sum_{P_u} 1/p_i``, in
[0, 1]; users are then averaged with equal weight, as in the naive replay. Rows carry slice
``list@K`` (naive) and ``ips_list@K`` (IPS: ``recall``, ``ndcg``, ``recall_ceiling``) in ``metrics``
and in the A/B report, where the CIs come from the same paired bootstrap over users as every other
A/B metric (``evaluation.ab``); coverage, a set metric, gets a recentred interval
(:func:`compare_lists`).

From the lake: :func:`evaluate_lists` replays a date's lists of the ranked models and of the
:data:`BASELINES` (the same candidates in the retrieval stage's order and by popularity) into
``metrics`` rows (``infnet rank``); :func:`compare_list_arms` compares two arms' lists over dates
(``infnet ab_report``).

>>> lists = pd.DataFrame({"user_id": [1, 1, 1, 2, 2], "video_id": [10, 11, 12, 10, 13], "rank": [1, 2, 3, 1, 2]})
>>> positives = pd.DataFrame({"user_id": [1, 1, 2, 3], "video_id": [11, 99, 14, 10], "task": "click"})
>>> m = per_user_metrics(lists, positives, k=3)
>>> m[["user_id", "recall", "hit_rate"]].values.tolist()
[[1.0, 0.5, 1.0], [2.0, 0.0, 0.0]]
>>> round(float(m["ndcg"].iloc[0]), 4)  # (1 / log2(3)) / (1 + 1 / log2(3))
0.3869
>>> ips = per_user_metrics(lists, positives.assign(weight=[1.0, 3.0, 1.0, 1.0]), k=3, weighted=True)
>>> float(ips["recall"].iloc[0])  # user 1 hits v11 (weight 1) of v11 + v99 (weight 3)
0.25
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from model.ranking import top_k_by

LIST_TASKS = {"click": "is_click", "long_view": "long_view", "like": "is_like"}  # task -> log label
# Orders of the same candidates the ranked lists are replayed beside: the retrieval stage's own
# order and the clicks of the days before; their rows carry this model version in ``metrics``
BASELINES = ("retrieval_order", "popularity")
BASELINE_VERSION = "0"
LIST_METRICS = ("recall", "ndcg", "hit_rate")
IPS_METRICS = ("recall", "ndcg")
CEILING_METRIC = "recall_ceiling"
DEFAULT_GAMMA = 1.0  # when the counts cannot be fitted (fewer than 2 distinct counts): p ∝ n


def list_slice(k: int) -> str:
    return f"list@{int(k)}"


def ips_slice(k: int) -> str:
    """The IPS replay's slice: ``ips_list@K``.

    >>> ips_slice(50)
    'ips_list@50'
    """
    return f"ips_{list_slice(k)}"


# -- Spark: lists, positives, propensity counts ---------------------------------------------------

def top_k_per_user(rows: DataFrame, order: Sequence[Column], k: int) -> DataFrame:
    """``(user_id, video_id, rank)``: each user's best ``k`` distinct videos by ``order`` (a video
    appearing in several of the user's requests counts once, at its best position; ties broken
    by ``video_id``): the ranker's own cut, :func:`model.ranking.top_k_by`, per user."""
    return top_k_by(rows, order, k, group=("user_id",)).select("user_id", "video_id", "rank")


def _task_column() -> Column:
    tasks = F.array(*[F.when(F.col(label) == 1, F.lit(task)) for task, label in LIST_TASKS.items()])
    return F.explode(F.filter(tasks, lambda t: t.isNotNull())).alias("task")


def logged_positives(log_day: DataFrame, requests: DataFrame) -> DataFrame:
    """``(user_id, video_id, task)`` of every positive of the users of ``requests``
    (``user_id, request_time_ms``) in ``log_day`` at or after the user's first request time."""
    first = requests.groupBy("user_id").agg(F.min("request_time_ms").alias("_from"))
    tagged = log_day.join(first, "user_id").where(F.col("time_ms") >= F.col("_from"))
    return tagged.select("user_id", "video_id", _task_column()).distinct()


def held_positives(candidates: DataFrame, positives: DataFrame) -> DataFrame:
    """``(user_id, video_id)`` of the positives that the user's candidate set holds (for the ceiling)."""
    return (candidates.select("user_id", "video_id").distinct()
            .join(positives.select("user_id", "video_id").distinct(), ["user_id", "video_id"]))


def positive_counts(events: DataFrame, cut_ms: int, lookback_days: int, fs=None) -> DataFrame:
    """``(task, video_id, n)``: each video's positives per task among ``events`` with
    ``cut_ms - lookback_days <= time_ms`` whose labels are visible before ``cut_ms``
    (``features.examples.feature_events``: ``time_ms + play_time_ms < cut_ms`` with
    ``fs.label_delay``, the default; ``fs``: ``FeatureSettings``)."""
    from conf.settings import FeatureSettings
    from features.categorical import DAY_MS
    from features.examples import VISIBLE_COL, feature_events

    visible = feature_events(events, fs or FeatureSettings()).where(
        (F.col("time_ms") >= F.lit(int(cut_ms) - int(lookback_days) * DAY_MS)) & (F.col(VISIBLE_COL) < F.lit(int(cut_ms))))
    return visible.select("video_id", _task_column()).groupBy("task", "video_id").agg(
        F.count(F.lit(1)).cast("long").alias("n"))


# -- numpy: propensities --------------------------------------------------------------------------

@dataclass(frozen=True)
class PropensityFit:
    """How one task's propensities were made (printed by the jobs)."""

    task: str
    gamma: float      # exponent of the rank-frequency law n_(r) ∝ r^-gamma
    exponent: float   # (gamma + 1) / 2: p ∝ n^exponent
    n_videos: int     # videos with a positive before the cut
    n_fit: int        # of them, in the fit (n >= min_count)
    fitted: bool      # False: gamma given by the settings, or the default for too few counts
    clip: float
    n_clipped: int = 0  # positives of the replayed date weighted at the clip (their p was below it)
    n_positives: int = 0

    def describe(self) -> str:
        """``click: gamma 0.812 (fit on 311 of 1,024 videos) -> p ∝ n^0.906, clipped at 0.01 (...)``."""
        how = (f"fit on {self.n_fit:,} of {self.n_videos:,} videos" if self.fitted
               else f"not fitted, {self.n_videos:,} videos")
        clipped = f" ({self.n_clipped:,} of {self.n_positives:,} positives at the clip)" if self.n_positives else ""
        return (f"{self.task}: gamma {self.gamma:.3f} ({how}) -> p ∝ n^{self.exponent:.3f}, "
                f"clipped at {self.clip:g}{clipped}")


def fit_popularity_exponent(counts, min_count: int = 1) -> float:
    """``gamma`` of the rank-frequency power law ``n_(r) ∝ r^-gamma`` of the positive counts: minus
    the least-squares slope of ``log n_(r)`` on ``log r`` over the counts ``>= min_count`` sorted in
    decreasing order; NaN with fewer than 2 distinct counts.

    >>> round(fit_popularity_exponent([1000 * r ** -0.8 for r in range(1, 200)]), 6)
    0.8
    """
    n = np.sort(np.asarray(counts, dtype=float))[::-1]
    n = n[n >= max(min_count, 1e-12)]
    if len(n) < 2 or n[0] == n[-1]:
        return float("nan")
    slope = np.polyfit(np.log(np.arange(1, len(n) + 1)), np.log(n), 1)[0]
    return float(-slope)


def fit_propensities(counts: pd.DataFrame, clip: float, min_count: int = 1,
                     gamma: float | None = None) -> tuple[pd.DataFrame, dict[str, PropensityFit]]:
    """``(task, video_id, propensity)`` of every counted video and the fit per task, from the
    ``(task, video_id, n)`` counts (:func:`positive_counts`): ``p = max(clip, (n / max n) ^
    ((gamma + 1) / 2))``, ``gamma`` fitted per task unless given (module docstring).

    >>> counts = pd.DataFrame({"task": "click", "video_id": [1, 2, 3], "n": [100, 25, 1]})
    >>> props, fits = fit_propensities(counts, clip=0.05, gamma=1.0)
    >>> props["propensity"].round(4).tolist()  # (n / 100) ^ 1, the last one clipped
    [1.0, 0.25, 0.05]
    """
    frames, fits = [], {}
    for task, g in counts.groupby("task", sort=True):
        n = g["n"].to_numpy(float)
        fitted = gamma is None and np.isfinite(fit_popularity_exponent(n, min_count))
        gm = float(gamma) if gamma is not None else (fit_popularity_exponent(n, min_count) if fitted else DEFAULT_GAMMA)
        exponent = (gm + 1.0) / 2.0
        p = np.maximum(float(clip), (n / max(n.max(), 1.0)) ** exponent)
        frames.append(pd.DataFrame({"task": task, "video_id": g["video_id"].to_numpy(), "propensity": p}))
        fits[task] = PropensityFit(task, gm, exponent, len(n), int((n >= min_count).sum()), bool(fitted), float(clip))
    if not frames:
        return pd.DataFrame(columns=["task", "video_id", "propensity"]), fits
    return pd.concat(frames, ignore_index=True), fits


def weight_positives(positives: pd.DataFrame, propensities: pd.DataFrame, clip: float,
                     fits: dict[str, PropensityFit] | None = None) -> tuple[pd.DataFrame, dict[str, PropensityFit]]:
    """``positives`` + ``weight`` = 1 / propensity of the (task, video); a video without a counted
    positive before the cut has propensity ``clip``. Returns the fits with the clipped counts of
    these positives filled in (a task without counts gets an unfitted entry).

    >>> pos = pd.DataFrame({"user_id": [1, 1], "video_id": [1, 9], "task": "click"})
    >>> props = pd.DataFrame({"task": ["click"], "video_id": [1], "propensity": [0.5]})
    >>> weight_positives(pos, props, clip=0.1)[0]["weight"].tolist()
    [2.0, 10.0]
    """
    fits = dict(fits or {})
    out = positives.merge(propensities[["task", "video_id", "propensity"]], on=["task", "video_id"], how="left")
    p = out["propensity"].fillna(float(clip)).clip(lower=float(clip))
    out = out.drop(columns="propensity").assign(weight=1.0 / p.to_numpy(float))
    at_clip = (p <= float(clip)).to_numpy()
    for task in sorted(out["task"].unique()):
        m = (out["task"] == task).to_numpy()
        fit = fits.get(task) or PropensityFit(task, DEFAULT_GAMMA, (DEFAULT_GAMMA + 1) / 2, 0, 0, False, float(clip))
        fits[task] = replace(fit, n_clipped=int(at_clip[m].sum()), n_positives=int(m.sum()))
    return out, fits


def ips_positives(events: DataFrame, cut_ms: int, positives: pd.DataFrame, replay=None,
                  fs=None) -> tuple[pd.DataFrame, dict[str, PropensityFit]]:
    """The IPS weights of a date's positives in one call: :func:`positive_counts` of ``events``
    before ``cut_ms`` (``replay``: ``conf.settings.ReplaySettings``), :func:`fit_propensities`,
    :func:`weight_positives`."""
    from conf.settings import ReplaySettings

    rs = replay or ReplaySettings()
    counts = positive_counts(events, cut_ms, rs.propensity_lookback_days, fs).toPandas()
    props, fits = fit_propensities(counts, rs.propensity_clip, rs.propensity_fit_min_count, rs.propensity_gamma)
    return weight_positives(positives, props, rs.propensity_clip, fits)


# -- numpy: the metrics ---------------------------------------------------------------------------

def _gained(positives: pd.DataFrame, weighted: bool) -> pd.DataFrame:
    if weighted and "weight" not in positives.columns:
        raise ValueError("weighted list metrics need a weight column in positives (weight_positives)")
    return positives.assign(_gain=positives["weight"].astype(float) if weighted else 1.0)


def per_user_metrics(lists: pd.DataFrame, positives: pd.DataFrame, k: int, weighted: bool = False) -> pd.DataFrame:
    """One row per (task, user with a list and at least one positive for the task):
    ``task, user_id, n_positives, hits, recall, ndcg, hit_rate`` (see the module docstring; gains
    ``1`` or, ``weighted``, the positives' ``weight`` column)."""
    lists = lists[lists["rank"] <= k]
    listed_users = pd.Index(lists["user_id"].unique())
    discount = 1.0 / np.log2(np.arange(1, k + 1) + 1)
    out = []
    for task, pos in _gained(positives, weighted).groupby("task", sort=True):
        pos = pos[pos["user_id"].isin(listed_users)].drop_duplicates(["user_id", "video_id"])
        if pos.empty:
            continue
        per_user = pos.groupby("user_id").agg(n_positives=("_gain", "size"), _total=("_gain", "sum")).reset_index()
        hits = lists.merge(pos[["user_id", "video_id", "_gain"]], on=["user_id", "video_id"])
        hits = hits.assign(_dcg=hits["_gain"] / np.log2(hits["rank"].to_numpy(float) + 1))
        agg = hits.groupby("user_id").agg(hits=("_gain", "size"), _hit_gain=("_gain", "sum"), _dcg=("_dcg", "sum"))
        ideal = pos.sort_values(["user_id", "_gain"], ascending=[True, False], kind="stable")
        r = ideal.groupby("user_id").cumcount().to_numpy()
        top = r < k
        idcg = pd.Series(ideal["_gain"].to_numpy()[top] * discount[r[top]]).groupby(
            ideal["user_id"].to_numpy()[top]).sum().rename("_idcg")
        per_user = (per_user.merge(agg, on="user_id", how="left").merge(idcg, left_on="user_id", right_index=True)
                    .fillna({"hits": 0, "_hit_gain": 0.0, "_dcg": 0.0}))
        per_user["task"] = task
        per_user["recall"] = per_user["_hit_gain"] / per_user["_total"]
        per_user["ndcg"] = per_user["_dcg"] / per_user["_idcg"]
        per_user["hit_rate"] = (per_user["hits"] > 0).astype(float)
        out.append(per_user)
    columns = ["task", "user_id", "n_positives", "hits", "recall", "ndcg", "hit_rate"]
    if not out:
        return pd.DataFrame(columns=columns)
    return pd.concat(out, ignore_index=True)[columns].astype({"hits": "int64"})


def recall_ceiling(positives: pd.DataFrame, held: pd.DataFrame, weighted: bool = False) -> pd.DataFrame:
    """``task, user_id, recall_ceiling``: per user with a positive, the (gain-weighted) share of the
    positives that the user's candidate set holds (``held``: ``user_id, video_id`` pairs of the
    candidates, or just those of them that are positives: :func:`held_positives`).

    >>> pos = pd.DataFrame({"user_id": [1, 1, 2], "video_id": [10, 11, 10], "task": "click"})
    >>> recall_ceiling(pos, pd.DataFrame({"user_id": [1], "video_id": [11]}))["recall_ceiling"].tolist()
    [0.5, 0.0]
    """
    pos = _gained(positives, weighted).drop_duplicates(["task", "user_id", "video_id"])
    keys = pd.MultiIndex.from_frame(held[["user_id", "video_id"]].drop_duplicates())
    inside = pd.MultiIndex.from_frame(pos[["user_id", "video_id"]]).isin(keys)
    pos = pos.assign(_held=pos["_gain"] * inside)
    out = pos.groupby(["task", "user_id"], sort=True).agg(_h=("_held", "sum"), _t=("_gain", "sum")).reset_index()
    return out.assign(recall_ceiling=out["_h"] / out["_t"])[["task", "user_id", CEILING_METRIC]]


def coverage(lists: pd.DataFrame, catalog_size: int, k: int) -> float:
    """Distinct videos over every user's top ``k`` / the catalog size."""
    return float(lists.loc[lists["rank"] <= k, "video_id"].nunique()) / max(int(catalog_size), 1)


def summarise(per_user: pd.DataFrame, lists: pd.DataFrame, catalog_size: int, k: int,
              ceiling: pd.DataFrame | None = None, weighted: bool = False) -> pd.DataFrame:
    """``task, metric, slice, value, n`` rows: the per-user means (naive: ``LIST_METRICS`` and the
    coverage, slice ``list@K``; ``weighted``: ``IPS_METRICS``, slice ``ips_list@K``) and, given the
    per-user ``ceiling`` (:func:`recall_ceiling`, naive or weighted to match), its mean over the
    same users."""
    rows = []
    sl = ips_slice(k) if weighted else list_slice(k)
    for task, g in per_user.groupby("task", sort=True):
        for metric in IPS_METRICS if weighted else LIST_METRICS:
            rows.append((task, metric, sl, float(g[metric].mean()), int(len(g))))
        if ceiling is not None:
            c = g[["user_id"]].merge(ceiling[ceiling["task"] == task], on="user_id", how="left")[CEILING_METRIC]
            rows.append((task, CEILING_METRIC, sl, float(c.fillna(0.0).mean()), int(len(g))))
    if not weighted:
        n_users = int(lists.loc[lists["rank"] <= k, "user_id"].nunique())
        rows.append(("all", "coverage", sl, coverage(lists, catalog_size, k), n_users))
    return pd.DataFrame(rows, columns=["task", "metric", "slice", "value", "n"])


# -- paired bootstrap over users (the A/B report) -------------------------------------------------

def compare_lists(lists_a: pd.DataFrame, lists_b: pd.DataFrame, positives: pd.DataFrame, k: int,
                  catalog_size: int, n_boot: int = 200, seed: int = 0, confidence: float = 0.95) -> pd.DataFrame:
    """A/B rows (``evaluation.ab.RESULT_COLUMNS``) of the list metrics of two arms on the users who
    have a list in both: paired bootstrap over those users (one resample matrix for every task,
    metric and the coverage). With a ``weight`` column in ``positives`` (:func:`weight_positives`)
    the IPS metrics too, slice ``ips_list@K``.

    Coverage is a set metric: the union of the lists of a resample, which holds about 63 % of the
    distinct users, covers fewer videos than all users' lists, so the bootstrap distribution sits
    below the estimate (a percentile CI could exclude its own estimate). Its interval is the
    **recentred percentile** interval: the bootstrap deltas shifted by ``point - mean(boot)``
    (their spread around the estimate; ``evaluation.ab._stat_row`` with ``recentre``), and its
    p-value from the same shifted deltas."""
    from evaluation.ab import RESULT_COLUMNS, _stat_row, user_resample_counts

    users = np.intersect1d(lists_a["user_id"].unique(), lists_b["user_id"].unique())
    lists_a, lists_b = (l[l["user_id"].isin(users) & (l["rank"] <= k)] for l in (lists_a, lists_b))
    counts = user_resample_counts(len(users), n_boot, seed)  # (n_boot, users)
    code = {u: i for i, u in enumerate(users)}
    rows = []
    variants = [(False, list_slice(k), LIST_METRICS)]
    if "weight" in positives.columns:
        variants.append((True, ips_slice(k), IPS_METRICS))
    for weighted, sl, metrics in variants:
        per = {arm: per_user_metrics(lst, positives, k, weighted) for arm, lst in (("a", lists_a), ("b", lists_b))}
        for task in sorted(set(per["a"]["task"]) & set(per["b"]["task"])):
            a = per["a"][per["a"]["task"] == task].set_index("user_id")
            b = per["b"][per["b"]["task"] == task].set_index("user_id")
            common = a.index.intersection(b.index)  # users with a positive: the same in both arms
            codes = np.array([code[u] for u in common])
            w = counts[:, codes]
            denom = np.where(w.sum(1) > 0, w.sum(1), np.nan)
            for metric in metrics:
                va, vb = a.loc[common, metric].to_numpy(float), b.loc[common, metric].to_numpy(float)
                rows.append(_stat_row(task, metric, sl, va.mean(), vb.mean(), (w @ va) / denom,
                                      (w @ vb) / denom, len(common), len(common), confidence))
    cover = {arm: _coverage_boot(lst, code, counts) for arm, lst in (("a", lists_a), ("b", lists_b))}
    point = {arm: coverage(lst, catalog_size, k) for arm, lst in (("a", lists_a), ("b", lists_b))}
    rows.append(_stat_row("all", "coverage", list_slice(k), point["a"], point["b"], cover["a"] / max(catalog_size, 1),
                          cover["b"] / max(catalog_size, 1), len(users), len(users), confidence, recentre=True))
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def summary_lines(table: pd.DataFrame) -> list[str]:
    """Markdown lines of an A/B list table: ``- **click recall** (list@50): B wins: ...``."""
    from evaluation.ab import verdict

    def fmt(x, sign=False):
        return "n/a" if x is None or not np.isfinite(x) else (f"{x:+.4f}" if sign else f"{x:.4f}")

    return [f"- **{r['task']} {r['metric']}** ({r['slice']}, {r['n']} users): B {verdict(r)}: "
            f"{fmt(r['control_value'])} -> {fmt(r['treatment_value'])} (delta {fmt(r['delta'], True)}, 95% CI "
            f"[{fmt(r['ci_low'], True)}, {fmt(r['ci_high'], True)}], p={fmt(r['p_value'])})"
            for _, r in table.iterrows()]


def _coverage_boot(lists: pd.DataFrame, code: dict, counts: np.ndarray) -> np.ndarray:
    """Distinct videos covered by the users drawn in each resample (their lists' union)."""
    videos, video_codes = np.unique(lists["video_id"].to_numpy(), return_inverse=True)
    incidence = np.zeros((len(videos), counts.shape[1]), dtype=np.float32)
    incidence[video_codes, lists["user_id"].map(code).to_numpy()] = 1.0
    drawn = (counts > 0).astype(np.float32)  # (n_boot, users)
    return ((drawn @ incidence.T) > 0).sum(1).astype(float)


# -- from the lake: a date's lists (infnet rank), two arms' lists (infnet ab_report) ---------------

def date_positives(log_all: DataFrame, candidates: DataFrame, date: str, settings, ips: bool = True):
    """One date's replay inputs, ``candidates`` being that date's rows: ``(positives, weighted,
    held, fits, cut)`` = the logged positives (:func:`logged_positives`, pandas), the same with
    their IPS ``weight`` (:func:`ips_positives`, propensities from ``log_all`` before ``cut``; 1.0
    without ``ips`` or candidates), the positives the candidate sets hold (:func:`held_positives`),
    the propensity fits per task and ``cut``, the date's earliest request time (None without
    ``ips`` or candidates). ``settings``: ``conf.settings.Settings`` (``replay``, ``features``)."""
    import datetime as dt

    from features.retrieval import T_COL

    day = F.col("date") == F.lit(date).cast("date")
    positives_df = logged_positives(log_all.where(day), candidates.select("user_id", T_COL).distinct()).cache()
    positives = positives_df.toPandas()
    held = held_positives(candidates, positives_df).toPandas()
    positives_df.unpersist()
    cut = candidates.agg(F.min(T_COL)).first()[0] if ips else None
    if cut is None:  # no candidates: nothing is listed, the IPS weights do not matter
        return positives, positives.assign(weight=1.0), held, {}, None
    start = dt.date.fromisoformat(date) - dt.timedelta(days=settings.replay.propensity_lookback_days + 1)
    history = log_all.where((F.col("date") >= F.lit(start)) & (F.col("date") <= F.lit(date).cast("date")))
    weighted, fits = ips_positives(history, int(cut), positives, settings.replay, settings.features)
    return positives, weighted, held, fits, cut


def evaluate_lists(spark, settings, models, date: str, source: str, k: int) -> pd.DataFrame | None:
    """``metrics`` rows (a pandas frame) of the models' lists (``models``: pinned references with
    ``name`` and ``version``) and of the :data:`BASELINES` over the date's ``source`` candidates,
    or None when the log has no impressions on the date: slice ``list@K`` (recall, NDCG, hit rate
    and the candidate set's recall ceiling per task, coverage) and ``ips_list@K`` (the IPS-weighted
    recall, NDCG and ceiling, propensities from the log before the date's earliest request time,
    ``settings.replay``). The propensity fits per task are in ``.attrs["propensity_fits"]``, each
    model against each baseline (:func:`versus_baselines`, records) in ``.attrs["versus_baselines"]``
    (:func:`format_list_metrics` shows both)."""
    import datetime as dt

    from conf.lake import read_table
    from conf.tables import BRONZE_LOG, BRONZE_VIDEOS, CANDIDATES, RECOMMENDATIONS
    from model.ranking import POPULARITY_COL, with_popularity

    day = F.col("date") == F.lit(date).cast("date")
    log_all = read_table(spark, settings, BRONZE_LOG)
    if log_all.where(day).limit(1).count() == 0:
        return None
    candidates = read_table(spark, settings, CANDIDATES).where(day & (F.col("source") == source))
    positives, weighted, held, fits, cut = date_positives(log_all, candidates, date, settings)
    ceiling = recall_ceiling(positives, held)
    ips_ceiling = recall_ceiling(weighted, held, weighted=True)
    catalog = read_table(spark, settings, BRONZE_VIDEOS).count()
    recs = read_table(spark, settings, RECOMMENDATIONS)
    lists = {(m.name, m.version): recs.where(day & (F.col("model_name") == m.name) & (F.col("model_version") == m.version))
             .select("user_id", "video_id", "rank") for m in models}
    if candidates.where(F.col("retrieval_score").isNotNull()).limit(1).count():
        lists[("retrieval_order", BASELINE_VERSION)] = top_k_per_user(candidates, [F.col("retrieval_score").desc()], k)
    with_pop = with_popularity(candidates, log_all, date, settings)  # the objective's popularity prior counts the same
    lists[("popularity", BASELINE_VERSION)] = top_k_per_user(with_pop, [F.col(POPULARITY_COL).desc()], k)
    frames, pdfs = [], {}
    for (name, version), lst in lists.items():
        pdf = pdfs[(name, version)] = lst.toPandas()
        for summary in (summarise(per_user_metrics(pdf, positives, k), pdf, catalog, k, ceiling),
                        summarise(per_user_metrics(pdf, weighted, k, weighted=True), pdf, catalog, k, ips_ceiling,
                                  weighted=True)):
            summary["model_name"], summary["model_version"] = name, version
            frames.append(summary)
    out = pd.concat(frames, ignore_index=True)
    out["date"] = dt.date.fromisoformat(date)
    out.attrs["propensity_fits"] = fits
    out.attrs["propensity_cut_ms"] = cut
    # records, not a frame: pandas compares attrs when frames are combined
    out.attrs["versus_baselines"] = versus_baselines(pdfs, [(m.name, m.version) for m in models], weighted, k,
                                                     catalog).to_dict("records")
    return out


def versus_baselines(lists: dict, models, positives: pd.DataFrame, k: int, catalog_size: int,
                     n_boot: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Each model's list against each baseline order of the same candidates (``lists``: ``(name,
    version)`` -> list rows; ``models``: the keys that are models): :func:`compare_lists` rows
    (control = the baseline, treatment = the model) of recall and NDCG, naive and IPS, with
    ``model`` and ``baseline`` columns; the paired bootstrap over users says whether a model's lists
    beat what the candidates give for free."""
    from evaluation.ab import ABConfig

    n_boot = n_boot or ABConfig().n_boot
    frames = []
    for model in models:
        for baseline in [key for key in lists if key[0] in BASELINES]:
            table = compare_lists(lists[baseline], lists[model], positives, k, catalog_size, n_boot, seed)
            table = table[table["metric"].isin(("recall", "ndcg"))]
            frames.append(table.assign(model=f"{model[0]}@{model[1]}", baseline=baseline[0]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def list_metrics_frame(spark, metrics: pd.DataFrame) -> DataFrame:
    """:func:`evaluate_lists`' rows as a Spark DataFrame in the ``metrics`` table's layout:
    ``conf.schemas.METRICS_SCHEMA`` behind the lists' model columns, the date last (the keys typed
    as in ``recommendations``)."""
    from conf.schemas import METRICS_SCHEMA, RECOMMENDATIONS_SCHEMA, schema_of, with_leading_fields

    keys = [RECOMMENDATIONS_SCHEMA[c] for c in ("model_name", "model_version")]
    schema = schema_of([*with_leading_fields(keys, METRICS_SCHEMA).fields, RECOMMENDATIONS_SCHEMA["date"]])
    return spark.createDataFrame(metrics[schema.fieldNames()], schema)


def format_list_metrics(pdf: pd.DataFrame, k: int) -> str:
    """The replay tables of :func:`evaluate_lists`' rows: per order (rows) the naive metrics with
    the candidate set's ceiling beside them, then the IPS-weighted ones after the propensity fits
    ("" when there are no list rows)."""
    fits = pdf.attrs.get("propensity_fits") or {}
    pdf = pdf.assign(model=lambda d: d["model_name"] + "@" + d["model_version"].astype(str),
                     column=lambda d: d["task"] + " " + d["metric"].replace({CEILING_METRIC: "ceiling"}))
    columns = {list_slice(k): ("recall", "ndcg", "hit_rate", "ceiling"), ips_slice(k): ("recall", "ndcg", "ceiling")}
    lines = []
    for sl, metrics in columns.items():
        part = pdf[pdf["slice"] == sl]
        if part.empty:
            continue
        wide = part.pivot_table(index="model", columns="column", values="value", aggfunc="first")
        order = [f"{t} {m}" for t in ("click", "long_view", "like") for m in metrics if f"{t} {m}" in wide.columns]
        order += [c for c in ("all coverage",) if c in wide.columns]
        if sl == list_slice(k):
            n_users = part[(part["task"] == "click") & (part["metric"] == "recall")].set_index("model")["n"]
            lines.append(f"list metrics @{k} (users with a logged positive: {', '.join(f'{m} {n}' for m, n in n_users.items())}; "
                         f"ceiling = recall of all the user's candidates):")
        else:
            lines.append(f"IPS-weighted list metrics @{k} (self-normalised, each positive weighted 1/p, p from its video's "
                         f"positives before the request time; ceiling likewise):"
                         + "".join(f"\n  propensities {fit.describe()}" for fit in fits.values()))
        lines.append(wide[order].to_string(float_format=lambda x: f"{x:.4f}"))
    versus = pd.DataFrame(pdf.attrs.get("versus_baselines") or [])
    if not versus.empty:
        lines.append("model - baseline, paired bootstrap over users (delta [95% CI]; * = CI above zero):")
        cell = versus.assign(
            column=lambda d: d["task"] + " " + d["metric"] + d["slice"].map({list_slice(k): "", ips_slice(k): " ips"}),
            text=lambda d: [f"{r.delta:+.4f} [{r.ci_low:+.4f}, {r.ci_high:+.4f}]{'*' if r.ci_low > 0 else ''}"
                            for r in d.itertuples()],
            pair=lambda d: d["model"] + " - " + d["baseline"])
        wide = cell.pivot_table(index="pair", columns="column", values="text", aggfunc="first")
        order = [f"{t} {m}{w}" for w in ("", " ips") for t in ("click", "long_view") for m in ("recall", "ndcg")]
        lines.append(wide[[c for c in order if c in wide.columns]].to_string())
    return "\n".join(lines)


def list_metrics_predicate(date: str, models, k: int) -> str:
    """The ``metrics`` rows a replay of ``models`` (pinned references) on ``date`` replaces: their
    naive and IPS list slices at ``k`` and the baselines' of the same date."""
    from conf.lake import sql_literal

    ours = " OR ".join(f"(`model_name` = {sql_literal(m.name)} AND `model_version` = {sql_literal(m.version)})"
                       for m in models)
    names = ", ".join(sql_literal(b) for b in BASELINES)
    slices = ", ".join(sql_literal(sl) for sl in (list_slice(k), ips_slice(k)))
    return f"`date` = {sql_literal(date)} AND `slice` IN ({slices}) AND ({ours} OR `model_name` IN ({names}))"


def replay_rows(metrics: DataFrame, date: str, orders, k: int) -> pd.DataFrame:
    """The naive and IPS list rows at ``k`` of ``orders`` (pinned references) on ``date``, read from
    the ``metrics`` table (what :func:`format_list_metrics` prints)."""
    chosen = F.lit(False)
    for ref in orders:
        chosen = chosen | ((F.col("model_name") == ref.name) & (F.col("model_version") == ref.version))
    return metrics.where((F.col("date") == F.lit(date).cast("date")) & F.col("slice").isin(list_slice(k), ips_slice(k))
                         & chosen).toPandas()


def compare_list_arms(spark, settings, control, treatment, dates: list[str], config, k: int | None = None,
                      ips: bool = False) -> pd.DataFrame | None:
    """A/B rows of the two arms' ``recommendations`` lists on ``dates`` (``control``, ``treatment``:
    pinned references; ``config``: ``evaluation.ab.ABConfig``; None when an arm has none): users of
    different dates count as different units of the bootstrap. Naive (``list@K``) rows and, with
    ``ips`` (the ab_report job's default), the IPS rows (``ips_list@K``), each date's positives
    weighted by propensities from the log before its earliest request time (:func:`date_positives`);
    ``.attrs["ceiling"]`` holds the candidate sets' recall ceiling per task (``{task: (naive, ips)}``,
    over the users with a positive) and ``.attrs["propensity_fits"]`` the fits per date. ``k``
    default: the shorter of the two arms' lists."""
    from conf.lake import read_table, table_exists
    from conf.tables import BRONZE_LOG, BRONZE_VIDEOS, CANDIDATES, RECOMMENDATIONS

    if not table_exists(spark, settings, RECOMMENDATIONS):
        return None
    in_dates = F.col("date").isin([F.lit(d).cast("date") for d in dates])
    recs = read_table(spark, settings, RECOMMENDATIONS).where(in_dates)
    arms = {}
    for arm, ref in (("a", control), ("b", treatment)):
        arms[arm] = recs.where((F.col("model_name") == ref.name) & (F.col("model_version") == ref.version)).select(
            "date", "user_id", "video_id", "rank", "source").toPandas()
        if arms[arm].empty:
            return None
    k = k or int(min(arms["a"]["rank"].max(), arms["b"]["rank"].max()))
    sources = sorted(set(arms["a"]["source"]) | set(arms["b"]["source"]))
    candidates = read_table(spark, settings, CANDIDATES).where(in_dates & F.col("source").isin(sources))
    log_all = read_table(spark, settings, BRONZE_LOG)
    positives, held, fits = [], [], {}
    for date in dates:
        day_candidates = candidates.where(F.col("date") == F.lit(date).cast("date"))
        _, pos, day_held, fits[date], _ = date_positives(log_all, day_candidates, date, settings, ips)
        positives.append(pos.assign(date=pd.Timestamp(date).date()))
        held.append(day_held.assign(date=pd.Timestamp(date).date()))
    positives = pd.concat(positives, ignore_index=True)
    held = pd.concat(held, ignore_index=True)

    def keyed(df):  # one bootstrap unit per (date, user)
        return df.assign(user_id=df["date"].astype(str) + ":" + df["user_id"].astype(str))

    catalog = read_table(spark, settings, BRONZE_VIDEOS).count()
    table = compare_lists(keyed(arms["a"]), keyed(arms["b"]), keyed(positives if ips else positives.drop(columns="weight")),
                          k, catalog, config.n_boot, config.seed, config.confidence)
    naive = recall_ceiling(keyed(positives), keyed(held))
    weighted = recall_ceiling(keyed(positives), keyed(held), weighted=True) if ips else None
    table.attrs["ceiling"] = {
        task: (float(naive.loc[naive["task"] == task, "recall_ceiling"].mean()),
               float(weighted.loc[weighted["task"] == task, "recall_ceiling"].mean()) if ips else float("nan"))
        for task in sorted(naive["task"].unique())}
    table.attrs["propensity_fits"] = fits if ips else {}
    return table

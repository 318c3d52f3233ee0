"""Replay evaluation of ranked lists on the logs of the ranked date.

A user's list is the top K videos of the ``recommendations`` table (or of another order over the
same candidates: the retrieval stage's own order, popularity). Against the user's **logged
positives** of the date (videos clicked / long-viewed / liked at or after the request time), per
task and user with at least one positive:

- ``recall``   = |list ∩ positives| / |positives|
- ``ndcg``     = DCG / IDCG with binary gains, ``DCG = sum_{rank r in list, video positive} 1 / log2(r + 1)``,
                 ``IDCG = sum_{r = 1}^{min(K, |positives|)} 1 / log2(r + 1)``
- ``hit_rate`` = 1 when the list holds at least one positive, else 0

each averaged over those users (``n`` = their number); plus ``coverage`` (task ``all``): distinct
videos over all lists / videos in the catalog. A positive the candidate set does not hold can
never be recommended: every order over the same candidates shares that ceiling, so the arms'
differences are what the ranker adds. Rows carry slice ``list@K`` in ``metrics`` and in the A/B
report, where the CIs come from the same paired bootstrap over users as every other A/B metric
(``evaluation.ab``).

>>> lists = pd.DataFrame({"user_id": [1, 1, 1, 2, 2], "video_id": [10, 11, 12, 10, 13], "rank": [1, 2, 3, 1, 2]})
>>> positives = pd.DataFrame({"user_id": [1, 1, 2, 3], "video_id": [11, 99, 14, 10], "task": "click"})
>>> m = per_user_metrics(lists, positives, k=3)
>>> m[["user_id", "recall", "hit_rate"]].values.tolist()
[[1.0, 0.5, 1.0], [2.0, 0.0, 0.0]]
>>> round(float(m["ndcg"].iloc[0]), 4)  # (1 / log2(3)) / (1 + 1 / log2(3))
0.3869
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

LIST_TASKS = {"click": "is_click", "long_view": "long_view", "like": "is_like"}  # task -> log label
LIST_METRICS = ("recall", "ndcg", "hit_rate")


def list_slice(k: int) -> str:
    return f"list@{int(k)}"


# -- Spark: lists and positives -------------------------------------------------------------------

def top_k_per_user(rows: DataFrame, order: Sequence[Column], k: int) -> DataFrame:
    """``(user_id, video_id, rank)``: each user's best ``k`` distinct videos by ``order`` (a video
    appearing in several of the user's requests counts once, at its best position; ties broken
    by ``video_id``)."""
    best = Window.partitionBy("user_id", "video_id").orderBy(*order)
    per_video = rows.withColumn("_best", F.row_number().over(best)).where("_best = 1")
    ranked = per_video.withColumn("rank", F.row_number().over(
        Window.partitionBy("user_id").orderBy(*order, F.col("video_id"))))
    return ranked.where(F.col("rank") <= int(k)).select("user_id", "video_id", "rank")


def logged_positives(log_day: DataFrame, requests: DataFrame) -> DataFrame:
    """``(user_id, video_id, task)`` of every positive of the users of ``requests``
    (``user_id, request_time_ms``) in ``log_day`` at or after the user's first request time."""
    first = requests.groupBy("user_id").agg(F.min("request_time_ms").alias("_from"))
    tagged = log_day.join(first, "user_id").where(F.col("time_ms") >= F.col("_from"))
    tasks = F.array(*[F.when(F.col(label) == 1, F.lit(task)) for task, label in LIST_TASKS.items()])
    return (tagged.select("user_id", "video_id", F.explode(F.filter(tasks, lambda t: t.isNotNull())).alias("task"))
            .distinct())


# -- numpy: the metrics ---------------------------------------------------------------------------

def per_user_metrics(lists: pd.DataFrame, positives: pd.DataFrame, k: int) -> pd.DataFrame:
    """One row per (task, user with a list and at least one positive for the task):
    ``task, user_id, n_positives, hits, recall, ndcg, hit_rate`` (see the module docstring)."""
    lists = lists[lists["rank"] <= k]
    listed_users = pd.Index(lists["user_id"].unique())
    out = []
    for task, pos in positives.groupby("task", sort=True):
        pos = pos[pos["user_id"].isin(listed_users)].drop_duplicates(["user_id", "video_id"])
        if pos.empty:
            continue
        n_pos = pos.groupby("user_id").size()
        hits = lists.merge(pos[["user_id", "video_id"]], on=["user_id", "video_id"])
        dcg = (1.0 / np.log2(hits["rank"].to_numpy(float) + 1)) if len(hits) else np.zeros(0)
        per_user = pd.DataFrame({"user_id": n_pos.index, "n_positives": n_pos.to_numpy()})
        agg = pd.DataFrame({"user_id": hits["user_id"], "dcg": dcg}).groupby("user_id").agg(
            hits=("dcg", "size"), dcg=("dcg", "sum"))
        per_user = per_user.merge(agg, on="user_id", how="left").fillna({"hits": 0, "dcg": 0.0})
        ideal_gains = np.cumsum(1.0 / np.log2(np.arange(1, k + 1) + 1))
        idcg = ideal_gains[np.minimum(per_user["n_positives"].to_numpy(), k) - 1]
        per_user["task"] = task
        per_user["recall"] = per_user["hits"] / per_user["n_positives"]
        per_user["ndcg"] = per_user["dcg"] / idcg
        per_user["hit_rate"] = (per_user["hits"] > 0).astype(float)
        out.append(per_user)
    columns = ["task", "user_id", "n_positives", "hits", "recall", "ndcg", "hit_rate"]
    if not out:
        return pd.DataFrame(columns=columns)
    return pd.concat(out, ignore_index=True)[columns]


def coverage(lists: pd.DataFrame, catalog_size: int, k: int) -> float:
    """Distinct videos over every user's top ``k`` / the catalog size."""
    return float(lists.loc[lists["rank"] <= k, "video_id"].nunique()) / max(int(catalog_size), 1)


def summarise(per_user: pd.DataFrame, lists: pd.DataFrame, catalog_size: int, k: int) -> pd.DataFrame:
    """``task, metric, slice, value, n`` rows: the per-user means and the coverage."""
    rows = []
    for task, g in per_user.groupby("task", sort=True):
        for metric in LIST_METRICS:
            rows.append((task, metric, list_slice(k), float(g[metric].mean()), int(len(g))))
    n_users = int(lists.loc[lists["rank"] <= k, "user_id"].nunique())
    rows.append(("all", "coverage", list_slice(k), coverage(lists, catalog_size, k), n_users))
    return pd.DataFrame(rows, columns=["task", "metric", "slice", "value", "n"])


# -- paired bootstrap over users (the A/B report) -------------------------------------------------

def compare_lists(lists_a: pd.DataFrame, lists_b: pd.DataFrame, positives: pd.DataFrame, k: int,
                  catalog_size: int, n_boot: int = 200, seed: int = 0, confidence: float = 0.95) -> pd.DataFrame:
    """A/B rows (``evaluation.ab.RESULT_COLUMNS``) of the list metrics of two arms on the users who
    have a list in both: paired bootstrap over those users (one resample matrix for every task,
    metric and the coverage)."""
    from evaluation.ab import RESULT_COLUMNS, _stat_row, user_resample_counts

    users = np.intersect1d(lists_a["user_id"].unique(), lists_b["user_id"].unique())
    lists_a, lists_b = (l[l["user_id"].isin(users) & (l["rank"] <= k)] for l in (lists_a, lists_b))
    counts = user_resample_counts(len(users), n_boot, seed)  # (n_boot, users)
    code = {u: i for i, u in enumerate(users)}
    rows = []
    per = {arm: per_user_metrics(lst, positives, k) for arm, lst in (("a", lists_a), ("b", lists_b))}
    for task in sorted(set(per["a"]["task"]) & set(per["b"]["task"])):
        a = per["a"][per["a"]["task"] == task].set_index("user_id")
        b = per["b"][per["b"]["task"] == task].set_index("user_id")
        common = a.index.intersection(b.index)  # users with a positive: the same in both arms
        codes = np.array([code[u] for u in common])
        w = counts[:, codes]
        denom = np.where(w.sum(1) > 0, w.sum(1), np.nan)
        for metric in LIST_METRICS:
            va, vb = a.loc[common, metric].to_numpy(float), b.loc[common, metric].to_numpy(float)
            rows.append(_stat_row(task, metric, list_slice(k), va.mean(), vb.mean(), (w @ va) / denom,
                                  (w @ vb) / denom, len(common), len(common), confidence))
    cover = {arm: _coverage_boot(lst, code, counts) for arm, lst in (("a", lists_a), ("b", lists_b))}
    point = {arm: coverage(lst, catalog_size, k) for arm, lst in (("a", lists_a), ("b", lists_b))}
    rows.append(_stat_row("all", "coverage", list_slice(k), point["a"], point["b"], cover["a"] / max(catalog_size, 1),
                          cover["b"] / max(catalog_size, 1), len(users), len(users), confidence))
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

"""From task scores to a ranked list: the objective and the top K per user.

The objective is a weighted sum of task scores, ``sum_t weight_t * score_t``. The default
(``conf.settings.RankingSettings.objective``) weighs click, long view and like probabilities 1
each: the expected number of positive actions a candidate earns. :func:`top_k` keeps, per (date,
user), the K candidates with the highest objective; a video the user got in several requests of
the date counts once, at its best; ties are broken by ``video_id`` (then ``request_id``), so a
rerun gives the same list.

One more term may join the sum: ``retrieval=W`` adds ``W * retrieval_score`` (the retrieval
stage's fused reciprocal-rank score, 0 when a candidate has none). The task scores are
probabilities *given the video is shown*; the retrieval score carries what the models never saw:
which videos get shown and engaged with at all (popularity, co-visitation), so a blend can rank
better than either alone on replay.

>>> parse_objective("click=1, long_view=2,like=5")
(('click', 1.0), ('long_view', 2.0), ('like', 5.0))
>>> objective_spec((("click", 1.0), ("like", 0.5)))
'click=1,like=0.5'
"""
from __future__ import annotations

from typing import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from conf.tables import score_column

Objective = tuple[tuple[str, float], ...]
RETRIEVAL_TERM = "retrieval"  # objective term over the candidate's retrieval_score, not a task score


def parse_objective(text: str) -> Objective:
    """``"click=1,long_view=2,like=5"`` -> weights; a malformed term is a ``ValueError``."""
    weights = []
    for term in (t.strip() for t in text.split(",") if t.strip()):
        task, sep, value = term.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = None
        if not sep or not task.strip() or weight is None:
            raise ValueError(f"expected TASK=WEIGHT terms separated by commas, got {term!r} in {text!r}")
        weights.append((task.strip(), weight))
    if not weights:
        raise ValueError(f"an objective needs at least one TASK=WEIGHT, got {text!r}")
    if len({t for t, _ in weights}) != len(weights):
        raise ValueError(f"a task appears twice in the objective {text!r}")
    return tuple(weights)


def objective_spec(weights: Objective) -> str:
    return ",".join(f"{t}={w:g}" for t, w in weights)


def objective_column(weights: Objective) -> Column:
    """``sum_t weight_t * score_<t>`` (null when a weighted score is null), plus ``weight *
    retrieval_score`` for a ``retrieval`` term (0 for a candidate without one)."""
    total = None
    for task, weight in weights:
        value = (F.coalesce(F.col("retrieval_score"), F.lit(0.0)) if task == RETRIEVAL_TERM
                 else F.col(score_column(task)))
        term = F.lit(float(weight)) * value
        total = term if total is None else total + term
    return total


def top_k(scores: DataFrame, weights: Objective, k: int, group: Sequence[str] = ("date", "user_id")) -> DataFrame:
    """``scores`` rows (``request_id, video_id, score_<task>`` + the ``group`` columns) -> the best
    ``k`` per group with ``objective`` and ``rank`` (1 = best). Rows whose objective is null or NaN
    are left out (count them before calling)."""
    rows = scores.withColumn("objective", objective_column(weights).cast("double"))
    rows = rows.where(F.col("objective").isNotNull() & ~F.isnan("objective"))
    once = Window.partitionBy(*group, "video_id").orderBy(F.col("objective").desc(), F.col("request_id"))
    rows = rows.withColumn("_best", F.row_number().over(once)).where(F.col("_best") == 1).drop("_best")
    order = Window.partitionBy(*group).orderBy(F.col("objective").desc(), F.col("video_id"), F.col("request_id"))
    return rows.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= int(k))

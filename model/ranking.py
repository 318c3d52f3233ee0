"""From task scores to a ranked list: the objective and the top K per user.

The objective is a weighted sum of task scores, ``sum_t weight_t * score_t``, optionally times an
exposure factor (below). The default (``conf.settings.RankingSettings.objective``,
``click=1,long_view=1,like=1,popularity=2``) weighs click, long view and like probabilities 1 each
(the expected number of positive actions given a showing) times the popularity prior
``(1 + n)^2``. :func:`top_k` keeps, per (date,
user), the K candidates with the highest objective; a video the user got in several requests of
the date counts once, at its best; ties are broken by ``video_id`` (then ``request_id``), so a
rerun gives the same list. :func:`top_k_by` is that cut for any order (the replay's baselines,
evaluation/lists.py, use it too); :func:`ranked_lists` is the rank job's step: a date's scores of
one model version -> its ``recommendations`` rows.

One more term may join the sum: ``retrieval=W`` adds ``W * retrieval_score`` (the retrieval
stage's fused reciprocal-rank score, 0 when a candidate has none). The task scores are
probabilities *given the video is shown*; the retrieval score carries what the models never saw:
which videos get shown and engaged with at all (popularity, co-visitation), so a blend can rank
better than either alone on replay.

A model trained on the entire space (features/space.py) also scores ``exposed``: P(the user is
shown the video | it is a candidate). The task scores are P(action | shown), so
``exposed*TASK=W,...`` multiplies the task terms by ``score_exposed``:
``P(exposed) x sum_t w_t P(t | shown)``, the expected number of positive actions *if listed*
(ESMM's pCTCVR = pCTR x pCVR over the whole space). Its name is :data:`NAMED_OBJECTIVES`'s
``expected_actions``. A ``retrieval`` term stays outside the product.

A model trained on impressions only has no P(exposed); ``popularity=A`` gives it the exposure
prior the replay's propensities use (evaluation/lists.py): the task terms times ``(1 + n)^A``,
``n`` the video's clicks in the ``popularity_lookback_days`` before the request time, counting only
labels visible then (:func:`features.retrieval.click_counts`, the popularity baseline's count).
``P(exposed) ∝ (1 + n)^A`` x ``sum_t w_t P(t | shown)``: popularity says which videos get shown at
all, the model which of them this user engages with. ``A`` is chosen on the valid day
(README, "Lists" and the popularity prior under "Measured").

>>> parse_objective("click=1, long_view=2,like=5")
(('click', 1.0), ('long_view', 2.0), ('like', 5.0))
>>> objective_spec((("click", 1.0), ("like", 0.5)))
'click=1,like=0.5'
>>> w = parse_objective("expected_actions")
>>> w
(('exposed*', 1.0), ('click', 1.0), ('long_view', 1.0), ('like', 1.0))
>>> objective_spec(w), objective_tasks(w)
('exposed*click=1,long_view=1,like=1', ['exposed', 'click', 'long_view', 'like'])
>>> objective_tasks(parse_objective("click=1,popularity=0.5,retrieval=2"))
['click']
"""
from __future__ import annotations

from typing import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from conf.tables import score_column

Objective = tuple[tuple[str, float], ...]
RETRIEVAL_TERM = "retrieval"  # objective term over the candidate's retrieval_score, not a task score
POPULARITY_TERM = "popularity"  # popularity=A: the task terms times (1 + POPULARITY_COL)^A
POPULARITY_COL = "popularity_clicks"  # the candidate video's clicks before the request (click_counts)
MULTIPLIER = "*"  # "exposed*click=1,...": the task terms times score_exposed; kept as the term ("exposed*", 1.0)
NAMED_OBJECTIVES = {"expected_actions": "exposed*click=1,long_view=1,like=1"}


def parse_objective(text: str) -> Objective:
    """``"click=1,long_view=2,like=5"`` (optionally ``TASK*`` first, a name of
    :data:`NAMED_OBJECTIVES`) -> weights; a malformed term is a ``ValueError``."""
    text = NAMED_OBJECTIVES.get(text.strip(), text)
    weights = []
    head, star, rest = text.partition(MULTIPLIER)
    if star:
        if not head.strip() or "=" in head or "," in head:
            raise ValueError(f"expected TASK*TASK=WEIGHT,..., got {text!r}")
        weights.append((head.strip() + MULTIPLIER, 1.0))
        text = rest
    for term in (t.strip() for t in text.split(",") if t.strip()):
        task, sep, value = term.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = None
        if not sep or not task.strip() or weight is None:
            raise ValueError(f"expected TASK=WEIGHT terms separated by commas, got {term!r} in {text!r}")
        weights.append((task.strip(), weight))
    has_tasks = bool(objective_tasks([(t, w) for t, w in weights if not t.endswith(MULTIPLIER)]))
    if not has_tasks and not any(t == RETRIEVAL_TERM for t, _ in weights):
        raise ValueError(f"an objective needs at least one TASK=WEIGHT, got {text!r}")
    if not has_tasks and needs_popularity(weights):
        raise ValueError(f"popularity=A multiplies the task terms: name at least one TASK=WEIGHT, got {text!r}")
    if len({t for t, _ in weights}) != len(weights):
        raise ValueError(f"a task appears twice in the objective {text!r}")
    return tuple(weights)


def objective_spec(weights: Objective) -> str:
    head = "".join(t for t, _ in weights if t.endswith(MULTIPLIER))
    return head + ",".join(f"{t}={w:g}" for t, w in weights if not t.endswith(MULTIPLIER))


def objective_tasks(weights: Objective) -> list[str]:
    """The tasks whose ``score_<task>`` the objective reads (the multiplier first)."""
    return [t.rstrip(MULTIPLIER) for t, _ in weights if t not in (RETRIEVAL_TERM, POPULARITY_TERM)]


def needs_popularity(weights: Objective) -> bool:
    """Whether the objective reads :data:`POPULARITY_COL` (a ``popularity`` term)."""
    return any(t == POPULARITY_TERM for t, _ in weights)


def objective_column(weights: Objective) -> Column:
    """``sum_t weight_t * score_<t>`` (null when a weighted score is null), times ``score_<m>``
    for an ``m*`` multiplier and ``(1 + popularity_clicks)^A`` for a ``popularity`` term (0 clicks
    when null), plus ``weight * retrieval_score`` for a ``retrieval`` term (0 for a candidate
    without one)."""
    tasks, retrieval = None, None
    for task, weight in weights:
        if task.endswith(MULTIPLIER) or task in (RETRIEVAL_TERM, POPULARITY_TERM):
            continue
        term = F.lit(float(weight)) * F.col(score_column(task))
        tasks = term if tasks is None else tasks + term
    for task, weight in weights:
        if task.endswith(MULTIPLIER):
            tasks = F.col(score_column(task.rstrip(MULTIPLIER))) * tasks
        elif task == POPULARITY_TERM:
            prior = F.pow(F.lit(1.0) + F.coalesce(F.col(POPULARITY_COL).cast("double"), F.lit(0.0)), F.lit(float(weight)))
            tasks = tasks * prior
        elif task == RETRIEVAL_TERM:
            retrieval = F.lit(float(weight)) * F.coalesce(F.col("retrieval_score"), F.lit(0.0))
    if retrieval is None:
        return tasks
    return retrieval if tasks is None else tasks + retrieval


def top_k_by(rows: DataFrame, order: Sequence[Column], k: int, group: Sequence[str] = ("date", "user_id"),
             tie_break: Sequence[str] = ()) -> DataFrame:
    """``rows`` + ``rank`` (1 = best): per ``group`` the best ``k`` distinct videos by ``order`` (a
    video in several rows of the group counts once, at its best position; ties broken by
    ``video_id``, then by the ``tie_break`` columns)."""
    after = [F.col(c) for c in tie_break]
    once = Window.partitionBy(*group, "video_id").orderBy(*order, *after)
    rows = rows.withColumn("_best", F.row_number().over(once)).where(F.col("_best") == 1).drop("_best")
    ranked = Window.partitionBy(*group).orderBy(*order, F.col("video_id"), *after)
    return rows.withColumn("rank", F.row_number().over(ranked)).where(F.col("rank") <= int(k))


def top_k(scores: DataFrame, weights: Objective, k: int, group: Sequence[str] = ("date", "user_id")) -> DataFrame:
    """``scores`` rows (``request_id, video_id, score_<task>`` + the ``group`` columns) -> the best
    ``k`` per group with ``objective`` and ``rank`` (1 = best). Rows whose objective is null or NaN
    are left out (count them before calling)."""
    rows = scores.withColumn("objective", objective_column(weights).cast("double"))
    rows = rows.where(F.col("objective").isNotNull() & ~F.isnan("objective"))
    return top_k_by(rows, [F.col("objective").desc()], k, group, tie_break=("request_id",))


def with_popularity(rows: DataFrame, log: DataFrame, date: str, settings) -> DataFrame:
    """``rows`` (with ``video_id`` and ``request_time_ms``) + :data:`POPULARITY_COL`: the video's
    clicks in the ``settings.retrieval.popularity_lookback_days`` before the row's request time,
    labels visible then (the popularity baseline's count; 0 without one). ``log``: ``bronze_log``."""
    from features.candidates import T_COL
    from features.retrieval import click_counts

    times = rows.select(T_COL).where(F.col(T_COL).isNotNull()).distinct()
    events = log.where(F.col("date") <= F.lit(date).cast("date"))
    counts = click_counts(events, times, settings.retrieval.popularity_lookback_days).withColumnRenamed(
        "clicks", POPULARITY_COL)
    return rows.join(counts, [T_COL, "video_id"], "left").fillna({POPULARITY_COL: 0.0})


class RankingInputError(ValueError):
    """The lake lacks what a ranking needs (no scores of the model, tasks of the objective unscored)."""


def ranked_lists(spark, settings, model, date: str, source: str, weights: Objective, k: int):
    """The ``recommendations`` rows of one model version (``model``: a pinned reference with
    ``name`` and ``version``) on one date (a DataFrame in RECOMMENDATIONS_SCHEMA order), the list
    entries kept, the scored candidates left out for a null / NaN objective and the scored
    candidates in all. :class:`RankingInputError` when the scores are missing."""
    import datetime as dt

    from conf.lake import read_table, table_exists
    from conf.schemas import RECOMMENDATIONS_SCHEMA
    from conf.tables import BRONZE_LOG, CANDIDATES, SCORES
    from features.candidates import T_COL

    if not table_exists(spark, settings, SCORES):
        raise RankingInputError(f"the scores table does not exist yet: run `infnet score --model {model} --date {date}` first")
    scores = read_table(spark, settings, SCORES).where(
        (F.col("date") == F.lit(date).cast("date")) & (F.col("model_name") == model.name)
        & (F.col("model_version") == model.version))
    scores = scores.where(F.col("source") == source)  # an older lake gained the column (conf.lake.upgrade_lake)
    if scores.limit(1).count() == 0:
        raise RankingInputError(f"no scores of {model} for {source} candidates on {date}: run `infnet build_candidates "
                                f"--source {source} --date {date}` and `infnet score --model {model} --source {source} "
                                f"--date {date}` first")
    named = [t for t in objective_tasks(weights) if score_column(t) in scores.columns]
    scored = scores.agg(*[F.count(score_column(t)).alias(t) for t in named]).first().asDict() if named else {}
    # a column another model gave the table is there but null for this one (score_exposed)
    missing = [t for t in objective_tasks(weights) if not scored.get(t)]
    if missing:
        raise RankingInputError(f"--objective names tasks without scores of {model}: {missing}"
                                + (" (score_exposed needs a model trained on the entire space: build_features --feature "
                                   "feature_time=request --feature exposure_negatives=N)" if "exposed" in missing else ""))
    meta = (read_table(spark, settings, CANDIDATES)
            .where((F.col("date") == F.lit(date).cast("date")) & (F.col("source") == source))
            .groupBy(F.col("request_id").alias("_m_request"), F.col("video_id").alias("_m_video"))
            .agg(F.first("channels").alias("channels"), F.max("retrieval_score").alias("retrieval_score"),
                 F.first(T_COL).alias(T_COL)))
    rows = scores.join(meta, (F.col("request_id") == F.col("_m_request")) & (F.col("video_id") == F.col("_m_video")),
                       "left")
    if needs_popularity(weights):
        rows = with_popularity(rows, read_table(spark, settings, BRONZE_LOG), date, settings)
    rows = rows.withColumn("objective", objective_column(weights).cast("double")).cache()
    n = rows.count()
    dropped = rows.where(F.col("objective").isNull() | F.isnan("objective")).count()
    best = top_k(rows, weights, k).cache()
    kept = best.count()
    rows.unpersist()
    out = best.select(
        *[(F.col(f.name) if f.name in best.columns else F.lit(None)).cast(f.dataType).alias(f.name)
          for f in RECOMMENDATIONS_SCHEMA.fields
          if f.name not in ("objective_spec", "ranked_at", "source", "model_name", "model_version")],
        F.lit(model.name).alias("model_name"), F.lit(model.version).alias("model_version"),
        F.lit(source).alias("source"), F.lit(objective_spec(weights)).alias("objective_spec"),
        F.lit(dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)).alias("ranked_at"),
    )
    return out.select(*[F.col(f.name).cast(f.dataType) for f in RECOMMENDATIONS_SCHEMA.fields]), kept, dropped, n

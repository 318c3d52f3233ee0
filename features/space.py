"""Training rows as the nightly job sees them: features as of the request time, and the entire
space of candidates it ranks.

Two ``FeatureSettings`` choices, both written into the spec's ``options``:

- ``feature_time="request"``: a training row of date D is featurised as of D's request time
  (``RetrievalSettings.request_time``, the cut ``build_candidates --source retrieval`` uses), not
  just before its own impression. Rows are built by the score job's per-key featuriser
  (``features.candidate_features.featurise_candidates``) over candidate-shaped rows, so training and
  serving are one code path: the user's statistics and sequences stop at the request time, exactly
  as when the nightly job scores that user, and a row's ``time_ms`` is the request time. The
  context is the request's too: its hour, and the request's tab (``features.retrieval.request_tabs``:
  the user's most frequent tab before it), since the nightly job cannot know the tab an impression
  will be shown in.
- ``exposure_negatives=N`` (> 0, needs ``feature_time="request"``): **entire-space training**
  (after ESMM, Ma et al. 2018: learn over the space the ranker ranks, not only over what was
  shown). Per date D and user (every user active on D-1, as the nightly job serves them, plus the
  users shown something on D): the retrieval candidates of D (``features.retrieval``, strictly
  before the request time) and the user's impressions of D. Task ``exposed`` = 1 on an impression
  (retrieved or not), 0 on a candidate the user was not shown that day. The engagement tasks keep
  training on shown rows only (their masks are 0 on unshown rows). Unshown candidates are
  subsampled per request to at most N (a deterministic hash order, so a rebuild gives the same
  rows) and each kept one carries the weight ``unshown / kept`` of its request against 1 for an
  exposure positive: the exposure loss is a weighted mean (model/train.py), so the weighted
  negatives stand for every unshown candidate and P(exposed) stays calibrated over the whole
  candidate set. By default (``exposure_outside_candidates`` off) only the shown *candidates* are
  exposure positives: ``exposed`` is then P(shown | retrieved), what ranking a candidate set
  needs; the impressions retrieval missed still train the engagement tasks. With it on they are
  positives too (the whole space), and on the valid day the exposure head then learned to tell
  "shown but not retrieved" from "retrieved", which ranks the candidates below random.
  ``mask_exposed`` holds these weights times ``N / candidates_per_request`` (at most 1, as every mask;
  a weighted mean does not change when all weights are scaled). A video shown to the user several
  times on D is one exposure positive (its first impression; ``mask_exposed`` 0 on the
  repeats, which still train the engagement tasks).

Unshown rows get a deterministic ``impression_id`` (``"u"`` + a hash of request and video): the
examples key stays unique and a logged impression's id is never reused.

>>> from conf.settings import FeatureSettings
>>> check_feature_time(FeatureSettings(exposure_negatives=20))
Traceback (most recent call last):
...
ValueError: exposure_negatives > 0 (entire-space training) needs feature_time='request', got 'impression'
"""
from __future__ import annotations

import datetime as dt
from typing import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from conf.settings import FeatureSettings, RetrievalSettings, Settings
from features.candidate_features import featurise_candidates
from features.candidates import T_COL
from features.examples import example_columns
from features.labels import EXPOSURE_TASK, label_columns
from features.retrieval import make_requests, request_tabs, request_time_ms, retrieval_candidates
from features.spec import FeatureSpec
from features.vocabulary import Vocabulary

FEATURE_TIMES = ("impression", "request")
SHOWN = "_shown"  # 1 on a logged impression, 0 on an unshown retrieval candidate
WEIGHT = "_exposure_weight"  # mask_exposed: 1 / the request's subsampling rate on unshown rows
LOG_LABELS = ("is_click", "is_like", "long_view", "play_time_ms")


def check_feature_time(fs: FeatureSettings) -> None:
    """A ``ValueError`` for a feature time outside :data:`FEATURE_TIMES` or entire-space training
    without request-time features."""
    if fs.feature_time not in FEATURE_TIMES:
        raise ValueError(f"feature_time must be one of {FEATURE_TIMES}, got {fs.feature_time!r}")
    if fs.exposure_negatives < 0:
        raise ValueError(f"exposure_negatives must be >= 0, got {fs.exposure_negatives}")
    if fs.exposure_negatives > 0 and fs.feature_time != "request":
        raise ValueError("exposure_negatives > 0 (entire-space training) needs feature_time='request', "
                         f"got {fs.feature_time!r}")


def date_requests(log: DataFrame, dates: Sequence[str], rs: RetrievalSettings) -> DataFrame:
    """One request per (user, date) at the date's request time, ids as the retrieval stage makes
    them: every user with an impression on the day before (whom the nightly job serves) or on the
    date itself (whose impressions become rows)."""
    frames = []
    for date in dates:
        day = dt.date.fromisoformat(date)
        users = log.where(F.col("date").isin(day, day - dt.timedelta(days=1))).select("user_id")
        frames.append(make_requests(users, date, request_time_ms(date, rs.request_time)))
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out


def shown_rows(log: DataFrame, requests: DataFrame) -> DataFrame:
    """The impressions of the requests' dates as candidate rows of their user's request
    (``request_id, impression_id, user_id, video_id, request_time_ms, date``, the log's labels,
    ``SHOWN`` = 1 and ``WEIGHT`` = 1 on the first impression of a (user, video, date), else 0)."""
    r = requests.select("request_id", F.col("user_id").alias("_r_user"), T_COL, F.col("date").alias("_r_date"))
    joined = log.join(r, (F.col("user_id") == F.col("_r_user")) & (F.col("date") == F.col("_r_date")))
    first = F.row_number().over(Window.partitionBy("user_id", "video_id", "date").orderBy("time_ms", "impression_id"))
    return joined.select(
        "request_id", "impression_id", "user_id", "video_id", T_COL, "date", *LOG_LABELS,
        F.lit(1).alias(SHOWN), F.when(first == 1, F.lit(1.0)).otherwise(F.lit(0.0)).alias(WEIGHT))


def only_candidates_exposed(shown: DataFrame, candidates: DataFrame) -> DataFrame:
    """:func:`shown_rows` with ``WEIGHT`` 0 on the impressions of videos outside the user's request
    (``exposure_outside_candidates`` off): they still train the engagement tasks, not ``exposed``."""
    retrieved = candidates.select(F.col("request_id").alias("_c_request"), F.col("video_id").alias("_c_video"),
                                  F.lit(1.0).alias("_retrieved")).distinct()
    joined = shown.join(retrieved, (F.col("request_id") == F.col("_c_request")) & (F.col("video_id") == F.col("_c_video")),
                        "left")
    return joined.withColumn(WEIGHT, F.col(WEIGHT) * F.coalesce(F.col("_retrieved"), F.lit(0.0))).select(*shown.columns)


def _unshown_id(request: Column, video: Column) -> Column:
    return F.concat(F.lit("u"), F.sha2(F.concat_ws(":", F.lit("unshown"), request, video), 256).substr(1, 23))


def unshown_sample(candidates: DataFrame, log: DataFrame, per_request: int, seed: int = 0) -> DataFrame:
    """The candidates whose user was not shown the video on the candidate's date, at most
    ``per_request`` per request (the first by a hash of (seed, request, video): deterministic),
    each with ``WEIGHT`` = the request's unshown candidates / those kept, ``SHOWN`` = 0 and
    zero labels, in :func:`shown_rows`' columns."""
    shown = log.select(F.col("user_id").alias("_s_user"), F.col("video_id").alias("_s_video"),
                       F.col("date").alias("_s_date")).distinct()
    unshown = candidates.join(shown, (F.col("user_id") == F.col("_s_user")) & (F.col("video_id") == F.col("_s_video"))
                              & (F.col("date") == F.col("_s_date")), "left_anti")
    order = F.xxhash64(F.lit(int(seed)), F.col("request_id"), F.col("video_id"))
    w = Window.partitionBy("request_id")
    ranked = (unshown.withColumn("_n_unshown", F.count(F.lit(1)).over(w))
              .withColumn("_pick", F.row_number().over(w.orderBy(order, F.col("video_id")))))
    kept = ranked.where(F.col("_pick") <= int(per_request))
    n_kept = F.least(F.col("_n_unshown"), F.lit(int(per_request)))
    return kept.select(
        "request_id", _unshown_id(F.col("request_id"), F.col("video_id")).alias("impression_id"), "user_id",
        "video_id", T_COL, "date", *[F.lit(0).alias(c) for c in LOG_LABELS[:-1]], F.lit(0).cast("long").alias("play_time_ms"),
        F.lit(0).alias(SHOWN), (F.col("_n_unshown") / n_kept).cast("double").alias(WEIGHT))


def space_label_columns(exposure: bool, weight_scale: float = 1.0) -> list[Column]:
    """Label and mask expressions over :func:`shown_rows` / :func:`unshown_sample` rows, in spec
    order: the engagement tasks from the log's labels, masked to shown rows; then ``exposed``,
    whose mask is ``WEIGHT * weight_scale`` (capped at 1)."""
    cols = label_columns(F.when(F.col(SHOWN) == 1, 1.0).otherwise(0.0))
    if exposure:
        cols += [F.col(SHOWN).cast("int").alias(EXPOSURE_TASK.column),
                 F.least(F.col(WEIGHT) * F.lit(float(weight_scale)), F.lit(1.0)).cast("float")
                 .alias(EXPOSURE_TASK.mask_column)]
    return cols


def build_request_examples(
    log: DataFrame,
    users: DataFrame,
    videos: DataFrame,
    history: DataFrame,
    settings: Settings,
    dates: Sequence[str],
    spec: FeatureSpec,
    vocabulary: Vocabulary | None = None,
) -> DataFrame:
    """The examples rows of ``dates`` (:func:`features.examples.example_columns` order) with
    features as of each date's request time, plus the unshown retrieval candidates with entire-space
    training on (see the module docstring). ``log`` is bronze_log up to at least the last date."""
    fs, rs = settings.features, settings.retrieval
    check_feature_time(fs)
    last = max(dt.date.fromisoformat(d) for d in dates)
    events = log.where(F.col("date") <= F.lit(last))
    requests = date_requests(events, dates, rs)
    requests = requests.join(request_tabs(events, requests, rs), "request_id", "left")
    rows = shown_rows(events.where(F.col("date").isin(*[dt.date.fromisoformat(d) for d in dates])), requests)
    if fs.exposure_negatives > 0:
        candidates = retrieval_candidates(events, videos, requests, rs, history, fs.label_delay)
        if not fs.exposure_outside_candidates:
            rows = only_candidates_exposed(rows, candidates)
        rows = rows.unionByName(unshown_sample(candidates, events, fs.exposure_negatives, fs.hash_seed))
    rows = rows.join(requests.select("request_id", "tab"), "request_id")
    features = featurise_candidates(rows, events, users, videos, history, settings, vocabulary)
    passthrough = ("request_id", "impression_id", "user_id", "video_id", T_COL, "date", *LOG_LABELS, SHOWN, WEIGHT)
    flat = features.flat(passthrough)
    scale = min(1.0, fs.exposure_negatives / max(rs.candidates_per_request, 1))  # unshown <= candidates_per_request
    labelled = flat.select("*", *space_label_columns(fs.exposure_negatives > 0, scale)).withColumnRenamed(T_COL, "time_ms")
    return labelled.select(*example_columns(spec))

"""Task labels and masks of the examples table.

``label_click``, ``label_like``, ``label_long_view``: int 0/1 from the log's ``is_click``,
``is_like``, ``long_view``; ``label_play_time = log1p(play_time_ms / 1000)`` (float, seconds) as a
regression target; ``mask_<task> = 1.0`` for every task (every logged impression observes every
label; the masks exist so later sources with partial labels fit the same contract).

Entire-space training (``FeatureSettings.exposure_negatives`` > 0, features/space.py) adds
:data:`EXPOSURE_TASK`: ``label_exposed`` = 1 when the user was shown the video on the row's date,
0 for a retrieval candidate that was not shown; the engagement tasks' masks are 0 on unshown rows
and ``mask_exposed`` carries the subsampling weight.

>>> [t.column for t in TASKS]
['label_click', 'label_like', 'label_long_view', 'label_play_time']
"""
from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

from features.spec import TaskField

TASKS = (
    TaskField("click"), TaskField("like"), TaskField("long_view"), TaskField("play_time", kind="regression"),
)
BINARY_SOURCES = {"click": "is_click", "like": "is_like", "long_view": "long_view"}
EXPOSURE_TASK = TaskField("exposed")


def spec_tasks(exposure: bool) -> tuple[TaskField, ...]:
    """The spec's tasks: the engagement tasks, then the exposure task when entire-space training is on.

    >>> [t.name for t in spec_tasks(True)]
    ['click', 'like', 'long_view', 'play_time', 'exposed']
    """
    return TASKS + ((EXPOSURE_TASK,) if exposure else ())


def label_columns(mask: Column | None = None) -> list[Column]:
    """Label and mask expressions over log columns, in spec order (label, mask per task) for the
    engagement tasks; every mask is ``mask`` (default 1.0: a logged impression observes every label)."""
    mask = F.lit(1.0) if mask is None else mask
    cols: list[Column] = []
    for task in TASKS:
        if task.kind == "binary":
            label = F.col(BINARY_SOURCES[task.name]).cast("int")
        else:
            label = F.log1p(F.greatest(F.col("play_time_ms"), F.lit(0)) / 1000.0).cast("float")
        cols += [label.alias(task.column), mask.cast("float").alias(task.mask_column)]
    return cols


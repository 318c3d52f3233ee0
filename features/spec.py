"""The feature spec: the contract between the ``examples`` table and every model.

It lists, in order, the categorical fields (one int column each, already bucketed), the behaviour
sequences (one ``array<int>`` of hashed video ids each, newest first, plus a parallel array of time
gaps), and the tasks (label and mask columns). Training stores the spec in its model artifact and
scoring refuses a model whose spec does not match the features it is given.

Index conventions (the same for every field):

- categorical: ``0`` is the reserved bucket for null / unseen values; real values hash to
  ``1 .. vocab_size - 1``.
- sequences: ``0`` is padding (never a real item); items hash like ``video_id`` to ``1 .. vocab_size-1``.
  Arrays are **newest first** and hold at most ``max_len`` items, all strictly before the impression.
- gaps: ``log1p(seconds between the event and the impression)``, ``>= 0``; items seeded from the
  pre-window history have no timestamp and carry the gap to the history's ``last_time_ms``.
- dense (optional): one float column ``dense_<name>`` per :class:`DenseField` (raw point-in-time
  values, already transformed, e.g. ``log1p`` of a count or the logit of a smoothed rate); null = 0.

Parts added after the first specs were stored (``options``, ``dense``, a categorical field's
``vocabulary``) are left out of :meth:`FeatureSpec.to_dict` while they hold their default, so a
stored spec written before they existed keeps its fingerprint and still loads.

>>> spec = FeatureSpec(
...     categorical=(CategoricalField("user_id", 100, side="user"), CategoricalField("video_id", 50, side="item")),
...     sequences=(SequenceField("click", 50, max_len=5),),
...     tasks=(TaskField("click"), TaskField("play_time", kind="regression")),
... )
>>> FeatureSpec.from_json(spec.to_json()) == spec
True
>>> spec.categorical[0].column, spec.sequences[0].column, spec.tasks[1].mask_column
('cat_user_id', 'seq_click', 'mask_play_time')
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

SPEC_FORMAT = 1


# options that shape the training rows only (features/space.py), not a candidate's features
TRAINING_OPTIONS = ("feature_time", "exposure_negatives", "exposure_space")


@dataclass(frozen=True)
class CategoricalField:
    name: str
    vocab_size: int  # including the reserved bucket 0
    side: Literal["user", "item", "context"] = "context"  # user side is shared by a request's candidates
    embed_dim: int | None = None  # None: the model's default width
    # None: hashed buckets; a vocabulary name (e.g. "video_id"): exact ids from the stored vocabulary,
    # 0 = null or an id first seen after the vocabulary was built (models may give 0 a cold-start row)
    vocabulary: str | None = None

    @property
    def column(self) -> str:
        return f"cat_{self.name}"


@dataclass(frozen=True)
class SequenceField:
    name: str  # behaviour type: click, long_view, like, ...
    vocab_size: int  # hashed video id buckets, including padding 0
    max_len: int = 50

    @property
    def column(self) -> str:
        return f"seq_{self.name}"

    @property
    def gap_column(self) -> str:
        return f"seq_{self.name}_gap"


@dataclass(frozen=True)
class DenseField:
    name: str  # e.g. user_n_prior_log1p
    side: Literal["user", "item", "context"] = "context"

    @property
    def column(self) -> str:
        return f"dense_{self.name}"


@dataclass(frozen=True)
class TaskField:
    name: str  # click, like, long_view, play_time
    kind: Literal["binary", "regression"] = "binary"

    @property
    def column(self) -> str:
        return f"label_{self.name}"

    @property
    def mask_column(self) -> str:
        return f"mask_{self.name}"


@dataclass(frozen=True)
class FeatureSpec:
    categorical: tuple[CategoricalField, ...]
    sequences: tuple[SequenceField, ...]
    tasks: tuple[TaskField, ...]
    hash_seed: int = 42
    sequence_order: str = "newest_first"
    key_columns: tuple[str, ...] = ("impression_id", "user_id", "video_id", "time_ms", "date")
    extra: dict = field(default_factory=dict, compare=False)  # free-form notes (source versions, ...)
    dense: tuple[DenseField, ...] = ()  # raw point-in-time values, one float column each
    # choices of the feature code a model depends on (in the fingerprint), e.g. when an event's labels
    # become visible ("label_visibility": "end") or the vocabulary version; {} for the first specs
    options: dict = field(default_factory=dict, hash=False)

    # -- views ------------------------------------------------------------------------------
    @property
    def binary_tasks(self) -> tuple[TaskField, ...]:
        return tuple(t for t in self.tasks if t.kind == "binary")

    @property
    def feature_columns(self) -> list[str]:
        cols = [c.column for c in self.categorical]
        for s in self.sequences:
            cols += [s.column, s.gap_column]
        return cols + [d.column for d in self.dense]

    @property
    def label_columns(self) -> list[str]:
        return [c for t in self.tasks for c in (t.column, t.mask_column)]

    def serving_view(self) -> "FeatureSpec":
        """The spec without what only shapes training rows (the tasks, :data:`TRAINING_OPTIONS`):
        what the score job's featuriser must agree on with a model."""
        options = {k: v for k, v in self.options.items() if k not in TRAINING_OPTIONS}
        return replace(self, tasks=(), options=options)

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["format"] = SPEC_FORMAT
        # later additions are omitted at their defaults: older stored specs keep their fingerprint
        for key in ("dense", "options"):
            if not d[key]:
                del d[key]
        for c in d["categorical"]:
            if c["vocabulary"] is None:
                del c["vocabulary"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        d = dict(d)
        if d.pop("format", SPEC_FORMAT) != SPEC_FORMAT:
            raise ValueError("unsupported feature spec format")
        return cls(
            categorical=tuple(CategoricalField(**c) for c in d.pop("categorical")),
            sequences=tuple(SequenceField(**s) for s in d.pop("sequences")),
            tasks=tuple(TaskField(**t) for t in d.pop("tasks")),
            dense=tuple(DenseField(**x) for x in d.pop("dense", ())),
            key_columns=tuple(d.pop("key_columns", cls.key_columns)),
            **d,
        )

    @classmethod
    def from_json(cls, text: str) -> "FeatureSpec":
        return cls.from_dict(json.loads(text))

    def fingerprint(self) -> str:
        """Hash of everything a model depends on (not the free-form ``extra``)."""
        d = self.to_dict()
        d.pop("extra", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


class FeatureSpecMismatch(ValueError):
    """A model was trained on a different feature spec than the one offered to it."""


def check_compatible(expected: FeatureSpec, actual: FeatureSpec, what: str = "model") -> None:
    """Raise :class:`FeatureSpecMismatch` naming the first differences, or return quietly."""
    if expected.fingerprint() == actual.fingerprint():
        return
    diffs = []
    a, b = expected.to_dict(), actual.to_dict()
    for key in sorted(set(a) | set(b)):
        if key != "extra" and a.get(key) != b.get(key):
            diffs.append(f"{key}: expected {a.get(key)!r:.200} got {b.get(key)!r:.200}")
    raise FeatureSpecMismatch(
        f"feature spec mismatch for {what} (expected {expected.fingerprint()}, got {actual.fingerprint()}): "
        + "; ".join(diffs[:3])
    )


def demo_spec(seq_len: int = 8) -> FeatureSpec:
    """A small spec with the shape of the real one, for tests and docstrings."""
    return FeatureSpec(
        categorical=(
            CategoricalField("user_id", 101, side="user"),
            CategoricalField("user_active_degree", 6, side="user"),
            CategoricalField("video_id", 51, side="item"),
            CategoricalField("author_id", 31, side="item"),
            CategoricalField("hour", 25, side="context"),
            CategoricalField("tab", 16, side="context"),
        ),
        sequences=tuple(SequenceField(n, 51, max_len=seq_len) for n in ("click", "long_view", "like")),
        tasks=(TaskField("click"), TaskField("like"), TaskField("long_view"), TaskField("play_time", "regression")),
    )

"""Promotion by evidence: whether an A/B report lets a candidate model version take a registry alias.

A candidate is promoted when the report compares it with another version and shows it **winning on
the primary metric** (the 95 % CI of its advantage above zero) and **losing on no guard metric**,
all on the report's overall slice (``all``). A metric is ``task:metric`` as the ``ab_reports``
table has it (``click:auc``, ``mtl:mtl_auc``, ``play_time:rmse``); the verdicts are the report's
own (``wins`` / ``loses`` / ``ties`` for the treatment), read from the candidate's side: when the
candidate is the report's control, a treatment win is the candidate's loss.
Defaults: ``conf.settings.PromotionSettings``.

>>> rows = [{"control": "mmoe@1", "treatment": "infnet@2", "task": "click", "metric": "auc", "slice": "all",
...          "verdict": "wins", "delta": 0.01, "ci_low": 0.004, "ci_high": 0.016},
...         {"control": "mmoe@1", "treatment": "infnet@2", "task": "like", "metric": "auc", "slice": "all",
...          "verdict": "ties", "delta": -0.002, "ci_low": -0.01, "ci_high": 0.006}]
>>> promotion_decision(rows, "infnet@2", "click:auc", ("like:auc",)).promote
True
>>> print(promotion_decision(rows, "mmoe@1", "click:auc", ("like:auc",)).reason)
mmoe@1 does not win on click:auc against infnet@2: loses (delta -0.01, 95 % CI [-0.016, -0.004])
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

OVERALL_SLICE = "all"
_FLIP = {"wins": "loses", "loses": "wins"}


class PromotionError(ValueError):
    """The report cannot decide the promotion (it does not name the candidate, lacks a metric)."""


@dataclass(frozen=True)
class Promotion:
    promote: bool
    reason: str  # one line: why (not)
    opponent: str  # the other arm of the report


def split_metric(metric: str) -> tuple[str, str]:
    """``click:auc`` -> ("click", "auc"); a ``ValueError`` for anything else.

    >>> split_metric("click:auc")
    ('click', 'auc')
    """
    task, sep, name = metric.partition(":")
    if not sep or not task or not name or ":" in name:
        raise ValueError(f"expected TASK:METRIC (e.g. click:auc), got {metric!r}")
    return task, name


def _candidate_view(row: Mapping, side: int) -> tuple[str, float, float, float]:
    """(verdict, delta, ci_low, ci_high) with the candidate as the treatment."""
    verdict = str(row["verdict"])
    delta, lo, hi = (float("nan") if row[k] is None else float(row[k]) for k in ("delta", "ci_low", "ci_high"))
    if side < 0:
        return _FLIP.get(verdict, verdict), -delta, -hi, -lo
    return verdict, delta, lo, hi


def _describe(metric: str, view: tuple[str, float, float, float]) -> str:
    verdict, delta, lo, hi = view
    return f"{metric}: {verdict} (delta {delta:+.4g}, 95 % CI [{lo:+.4g}, {hi:+.4g}])".replace("+", "")


def promotion_decision(rows: Sequence[Mapping], candidate: str, primary: str, guards: Sequence[str]) -> Promotion:
    """Whether ``candidate`` (``name@version``) may be promoted on the A/B report ``rows`` (the
    ``ab_reports`` rows of one ``report_id``, as mappings); :class:`PromotionError` when the report
    cannot say (see the module docstring)."""
    if not rows:
        raise PromotionError("the report has no rows")
    control, treatment = str(rows[0]["control"]), str(rows[0]["treatment"])
    if candidate not in (control, treatment):
        raise PromotionError(f"the report compares {control} (control) with {treatment} (treatment), not {candidate}")
    side, opponent = (1, control) if candidate == treatment else (-1, treatment)
    overall = {f"{r['task']}:{r['metric']}": r for r in rows if r["slice"] == OVERALL_SLICE}
    for metric in (primary, *guards):
        split_metric(metric)  # a ValueError naming the form for a malformed one
    missing = [m for m in (primary, *guards) if m not in overall]
    if missing:
        raise PromotionError(f"the report has no overall row for {', '.join(missing)} "
                             f"(it has {', '.join(sorted(overall)) or 'none'})")
    view = _candidate_view(overall[primary], side)
    if view[0] != "wins":
        return Promotion(False, f"{candidate} does not win on {primary} against {opponent}: "
                         + _describe(primary, view).split(": ", 1)[1], opponent)
    lost = [_describe(g, v) for g in guards if (v := _candidate_view(overall[g], side))[0] == "loses"]
    if lost:
        return Promotion(False, f"{candidate} wins on {primary} against {opponent} but loses on a guard: "
                         + "; ".join(lost), opponent)
    return Promotion(True, f"{candidate} wins on {_describe(primary, view)} against {opponent} "
                     f"and loses on no guard ({', '.join(guards) or 'none'})", opponent)

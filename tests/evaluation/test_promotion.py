"""Promotion by evidence (evaluation/promotion.py): primary win, guard losses, the candidate's side."""
from __future__ import annotations

import pytest

from evaluation.promotion import PromotionError, promotion_decision, split_metric


def row(task, metric, verdict, delta, lo, hi, slice_="all", control="mmoe@1", treatment="infnet@2"):
    return {"control": control, "treatment": treatment, "task": task, "metric": metric, "slice": slice_,
            "verdict": verdict, "delta": delta, "ci_low": lo, "ci_high": hi}


REPORT = [row("click", "auc", "wins", 0.01, 0.004, 0.016), row("like", "auc", "ties", -0.003, -0.01, 0.004),
          row("long_view", "auc", "wins", 0.002, 0.001, 0.003),
          row("click", "auc", "loses", -0.02, -0.03, -0.01, slice_="tab=1")]  # slices never decide


def test_a_primary_win_without_a_guard_loss_promotes():
    decision = promotion_decision(REPORT, "infnet@2", "click:auc", ("like:auc", "long_view:auc"))
    assert decision.promote and decision.opponent == "mmoe@1"
    assert decision.reason.startswith("infnet@2 wins on click:auc: wins (delta 0.01, 95 % CI [0.004, 0.016])")


def test_a_guard_loss_or_a_tie_on_the_primary_blocks():
    losing_guard = [*REPORT[:1], row("like", "auc", "loses", -0.01, -0.02, -0.005)]
    decision = promotion_decision(losing_guard, "infnet@2", "click:auc", ("like:auc",))
    assert not decision.promote and "loses on a guard: like:auc: loses (delta -0.01" in decision.reason
    assert not promotion_decision(REPORT, "infnet@2", "like:auc", ()).promote  # a tie is no win


def test_the_control_as_candidate_reads_the_verdicts_from_its_side():
    flipped = [row("click", "auc", "loses", -0.01, -0.016, -0.004), row("like", "auc", "wins", 0.01, 0.005, 0.02)]
    decision = promotion_decision(flipped, "mmoe@1", "click:auc", ())
    assert decision.promote and "CI [0.004, 0.016]" in decision.reason
    # the treatment's like win is the control's guard loss
    assert not promotion_decision(flipped, "mmoe@1", "click:auc", ("like:auc",)).promote
    assert not promotion_decision(flipped, "infnet@2", "click:auc", ()).promote


def test_a_report_that_cannot_decide_is_an_error():
    with pytest.raises(PromotionError, match=r"compares mmoe@1 \(control\) with infnet@2 \(treatment\), not infnet@3"):
        promotion_decision(REPORT, "infnet@3", "click:auc", ())
    with pytest.raises(PromotionError, match="no overall row for play_time:rmse"):
        promotion_decision(REPORT, "infnet@2", "click:auc", ("play_time:rmse",))
    with pytest.raises(PromotionError, match="no rows"):
        promotion_decision([], "infnet@2", "click:auc", ())
    with pytest.raises(ValueError, match="TASK:METRIC"):
        split_metric("auc")

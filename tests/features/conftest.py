"""Shared fixtures of the feature tests: the hand-built timeline, featurised once per session."""
from __future__ import annotations

from dataclasses import replace

import pytest
from feature_timeline import SEQ_LEN, featurise


@pytest.fixture(scope="session")
def feature_settings(settings):
    """Hashed ids (the point-in-time oracles are written for them); test_vocabulary.py covers exact ids."""
    return replace(settings.features, seq_len=SEQ_LEN, exact_vocab_max_size=0)


@pytest.fixture(scope="session")
def timeline_rows(spark, feature_settings):
    """impression_id -> featurised row (as a dict)."""
    return {r["impression_id"]: r.asDict() for r in featurise(spark, feature_settings, 0).collect()}

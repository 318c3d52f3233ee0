"""Specs stored before the spec grew options, dense fields and vocabularies still load with their fingerprint."""
from __future__ import annotations

from dataclasses import replace

from features.examples import build_spec
from features.spec import FeatureSpec


def test_a_spec_without_the_new_parts_keeps_its_fingerprint():
    from conf.settings import FeatureSettings

    old_style = replace(FeatureSettings(), label_delay=False, exact_vocab_max_size=0, dense_stats=False)
    spec = build_spec(old_style)
    d = spec.to_dict()
    assert "options" not in d and "dense" not in d and all("vocabulary" not in c for c in d["categorical"])
    # pinned: the fingerprint of the default spec before this change (lakes built then must still load)
    assert spec.fingerprint() == "d1b8b156766c5928"
    assert FeatureSpec.from_dict(d) == spec and FeatureSpec.from_dict(d).fingerprint() == spec.fingerprint()


def test_each_new_choice_changes_the_fingerprint():
    from conf.settings import FeatureSettings

    base = replace(FeatureSettings(), label_delay=False, exact_vocab_max_size=0, dense_stats=False)
    prints = {build_spec(replace(base, **change)).fingerprint()
              for change in ({}, {"label_delay": True}, {"dense_stats": True}, {"count_buckets_per_doubling": 4},
                             {"rate_buckets": 100})}
    assert len(prints) == 5
    dense = build_spec(replace(base, dense_stats=True))
    assert [f.column for f in dense.dense][:2] == ["dense_user_n_prior_log1p", "dense_user_click_rate_logit"]
    assert dense.feature_columns[-len(dense.dense):] == [f.column for f in dense.dense]
    assert FeatureSpec.from_json(dense.to_json()) == dense


def test_build_features_takes_feature_setting_overrides_as_typed_values():
    import argparse

    import pytest

    from conf.settings import parse_feature_override
    from conf.syntax import flag_type
    from jobs.build_features import build_parser

    parse_feature_setting = flag_type(parse_feature_override)

    assert parse_feature_setting("rate_buckets=100") == ("rate_buckets", 100)
    assert parse_feature_setting("dense_stats=true") == ("dense_stats", True)
    assert parse_feature_setting("label_delay=0") == ("label_delay", False)
    for bad in ("nope=1", "rate_buckets=x", "dense_stats=maybe", "rate_buckets"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_feature_setting(bad)
    args = build_parser().parse_args(["--feature", "rate_buckets=50", "--feature", "dense_stats=1"])
    assert dict(args.feature) == {"rate_buckets": 50, "dense_stats": True}

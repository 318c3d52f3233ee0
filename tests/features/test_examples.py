"""The spec and the examples table: columns in spec order, labels, and the spec stored per version."""
from __future__ import annotations

import feature_timeline as tl
from features.examples import build_examples, build_spec, example_columns


def test_spec_is_derivable_from_settings_and_round_trips(feature_settings):
    from features.spec import FeatureSpec

    spec = build_spec(feature_settings)
    assert FeatureSpec.from_json(spec.to_json()) == spec
    assert [s.name for s in spec.sequences] == ["click", "long_view", "like"]
    assert all(s.max_len == feature_settings.seq_len for s in spec.sequences)
    assert [(t.name, t.kind) for t in spec.tasks] == [
        ("click", "binary"), ("like", "binary"), ("long_view", "binary"), ("play_time", "regression")]
    assert build_spec(feature_settings).fingerprint() == spec.fingerprint()


def test_examples_have_one_row_per_impression_in_spec_order(spark, feature_settings):
    log, users, videos, history = tl.bronze_frames(spark)
    examples, spec = build_examples(log, users, videos, history, feature_settings, dates=["2022-04-25"])
    assert examples.columns == example_columns(spec)
    rows = examples.collect()
    day0 = [e for e in tl.EVENTS if e[2] < 86_400_000]
    assert len(rows) == len(day0) == len({r["impression_id"] for r in rows})
    r = next(r for r in rows if r["video_id"] == 14)
    assert (r["label_click"], r["label_long_view"], r["label_like"], r["mask_click"]) == (0, 0, 0, 1.0)
    assert abs(r["label_play_time"] - 0.6931472) < 1e-6  # log1p(1000 ms / 1000)
    assert str(examples.schema["seq_click"].dataType) == "ArrayType(IntegerType(), True)"
    assert str(examples.schema["seq_click_gap"].dataType) == "ArrayType(FloatType(), True)"

"""Lake files on S3-compatible storage from Python: the model store and training snapshots read
through ``conf.storage`` with the lake's S3 settings (moto server on 127.0.0.1)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conf.settings import ObjectStoreSettings
from conf.storage import arrow_filesystem
from features.spec import demo_spec
from model.predict import predict_columns
from model.registry import build_model
from model.store import ModelStore, RegistryError
from model.synthetic import synthetic_examples

SPEC = demo_spec(seq_len=5)
SMALL = {"embed_dim": 8, "bottom_hidden": [16], "tower_hidden": [8]}


def test_the_model_store_round_trips_on_s3a(s3_env, tmp_path):
    root = "s3a://lake/store-test/models"
    store = ModelStore(root, registry_uri=f"sqlite:///{tmp_path}/registry.db")  # the artifacts on S3, the index in SQLite
    model = build_model("shared_bottom", SPEC, SMALL, seed=1).eval()
    first = store.save("ranker", model, SPEC, architecture="shared_bottom", metrics={"mtl_auc": 0.5})
    second = store.save("ranker", build_model("shared_bottom", SPEC, SMALL, seed=2), SPEC, architecture="shared_bottom")
    assert (first.ref, second.ref) == ("ranker@1", "ranker@2")
    assert store.list_models() == {"ranker": [1, 2]} and store.resolve("ranker") == ("ranker", 2)
    loaded, info = store.load("ranker@1")
    rows = synthetic_examples(SPEC, 32, seed=3)
    for task, values in predict_columns(model, SPEC, rows).items():
        np.testing.assert_array_equal(values, predict_columns(loaded, SPEC, rows)[task])
    assert info.metrics == {"mtl_auc": 0.5} and info.path.startswith(f"{root}/ranker/") and info.path == first.path
    # an artifact folder nobody registered (a save cut off before registering) is not a version
    fs, path = arrow_filesystem(f"{root}/ranker/unfinished/weights.pt")
    with fs.open_output_stream(path) as out:
        out.write(b"partial")
    assert store.list_models() == {"ranker": [1, 2]}
    third = store.save("ranker", model, SPEC, architecture="shared_bottom")
    assert third.version == 3 and store.info("ranker").version == 3
    with pytest.raises(RegistryError, match="needs a registry URI"):
        ModelStore(root).list_models()


def test_s3_settings_come_from_the_environment(s3_env):
    fs, path = arrow_filesystem("s3a://lake/env-test/x.parquet")
    with fs.open_output_stream(path) as out:
        pq.write_table(pa.table({"a": [1, 2]}), out)
    explicit, _ = arrow_filesystem("s3a://lake", ObjectStoreSettings(endpoint=s3_env["INFNET_S3_ENDPOINT"],
                                                                     access_key="k", secret_key="s"))
    with explicit.open_input_file(path) as f:
        assert pq.read_table(f).column("a").to_pylist() == [1, 2]

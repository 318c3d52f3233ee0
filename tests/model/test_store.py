"""The model store: save -> load round trip, registry versions and aliases, a pre-registry store,
clear errors; the predictor on top of it."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from conf.syntax import ModelRef, parse_ref
from features.spec import FeatureSpecMismatch, demo_spec
from model.registry import build_model
from model.predict import load_predictor, predict_columns
from model.store import ModelNotFound, ModelStore
from model.synthetic import synthetic_examples

SPEC = demo_spec(seq_len=5)
SMALL = {"embed_dim": 8, "bottom_hidden": [16], "tower_hidden": [8]}


ARCH = "shared_bottom"


def make_model(seed: int = 0):
    return build_model(ARCH, SPEC, SMALL, seed=seed).eval()


def save(root, name="ranker", seed=0, **kw):
    return ModelStore(root).save(name, make_model(seed), SPEC, architecture=ARCH, model_config={},
                      train_config={"lr": 0.001}, examples_version=3,
                      date_split={"train": ["2022-04-25"], "valid": ["2022-04-26"]},
                      metrics={"test": {"click": {"auc": 0.7}}}, **kw)


def test_save_load_gives_identical_predictions(tmp_path):
    root = str(tmp_path / "models")
    model = make_model(1)
    info = ModelStore(root).save("ranker", model, SPEC, architecture=ARCH, examples_version=5,
                      date_split={"train": ["2022-04-25"]}, metrics={"mtl_auc": 0.5})
    assert info.ref == "ranker@1"
    loaded, loaded_info = ModelStore(root).load("ranker@1")
    rows = synthetic_examples(SPEC, 64, seed=4)
    before = predict_columns(model, SPEC, rows)
    after = predict_columns(loaded, SPEC, rows)
    assert set(after) == {t.name for t in SPEC.tasks}
    for task in before:
        np.testing.assert_array_equal(before[task], after[task])
    assert all(0 < p < 1 for p in after["click"])
    assert loaded_info.examples_version == 5 and loaded_info.spec == SPEC
    assert loaded_info.spec_fingerprint == SPEC.fingerprint() and loaded_info.code_revision
    stored = json.loads((Path(loaded_info.path) / "info.json").read_text())
    assert stored["metrics"] == {"mtl_auc": 0.5} and stored["architecture"] == ARCH
    assert Path(loaded_info.path).parent == tmp_path / "models" / "ranker"


def test_name_resolves_to_newest_and_versions_increase(tmp_path):
    root = str(tmp_path)
    assert [save(root, seed=s).version for s in range(3)] == [1, 2, 3]
    assert ModelStore(root).resolve("ranker") == ("ranker", 3)
    assert ModelStore(root).info("ranker@000002").version == 2
    assert ModelStore(root).list_models() == {"ranker": [1, 2, 3]}
    # an artifact folder nobody registered (a save that crashed before registering) is not a version
    (tmp_path / "ranker" / "unfinished").mkdir()
    assert ModelStore(root).resolve("ranker") == ("ranker", 3)
    assert save(root).version == 4


def test_missing_name_or_version_lists_what_exists(tmp_path):
    root = str(tmp_path)
    save(root)
    with pytest.raises(ModelNotFound, match=r"no version 9: versions 1 exist \(newest ranker@1\)"):
        ModelStore(root).load("ranker@9")
    with pytest.raises(ModelNotFound, match=r"no model named 'other'.*ranker@\{1\}"):
        ModelStore(root).load("other")
    with pytest.raises(ModelNotFound, match="store is empty"):
        ModelStore(str(tmp_path / "empty")).resolve("ranker")
    with pytest.raises(ValueError, match="bad model version"):
        parse_ref("ranker@latest")  # MLflow reserves it


def test_aliases_name_versions_and_move(tmp_path):
    store = ModelStore(str(tmp_path))
    save(str(tmp_path), seed=0), save(str(tmp_path), seed=1)
    with pytest.raises(ModelNotFound, match=r"model ranker has no alias 'champion' \(aliases: none; infnet promote"):
        store.resolve("ranker@champion")
    store.set_alias("ranker", "champion", 1)
    store.set_alias("ranker", "challenger", 2)
    assert store.pin(ModelRef("ranker", "champion")) == ModelRef("ranker", "1")
    assert store.info("ranker@challenger").ref == "ranker@2"
    store.set_alias("ranker", "champion", 2)  # moves: one version per alias
    assert store.aliases("ranker") == {"challenger": 2, "champion": 2}
    with pytest.raises(ModelNotFound, match="no version 7"):
        store.set_alias("ranker", "champion", 7)
    with pytest.raises(ValueError, match="bad alias"):
        store.set_alias("ranker", "v3", 1)
    loaded, info = store.load("ranker@champion")
    assert info.version == 2 and info.weights_sha256


def test_a_pre_registry_store_is_registered_with_its_version_numbers(tmp_path):
    """Folders ``<name>/000001/`` of the store before the registry keep their references."""
    import shutil

    new = tmp_path / "new"
    infos = [save(str(new), seed=s) for s in range(2)]
    old = tmp_path / "old"
    for number, info in zip((1, 3), infos):  # version 2 was an unfinished save: never complete
        folder = old / "ranker" / f"{number:06d}"
        shutil.copytree(info.path, folder)
        stored = json.loads((folder / "info.json").read_text())
        (folder / "info.json").write_text(json.dumps({**stored, "version": number}))
    (old / "ranker" / "000002").mkdir()
    store = ModelStore(str(old))
    assert store.list_models() == {"ranker": [1, 3]}
    assert store.info("ranker").path.endswith("ranker/000003")
    assert store.load("ranker@1")[1].weights_sha256 == infos[0].weights_sha256
    assert save(str(old)).version == 4  # the registry numbers on from there


def test_a_registry_that_does_not_answer_is_one_line(tmp_path):
    from model.store import RegistryError

    (tmp_path / "file").write_text("")  # a sqlite path under a file: no database can be made there
    store = ModelStore(str(tmp_path / "models"), registry_uri=f"sqlite:///{tmp_path}/file/registry.db")
    with pytest.raises(RegistryError, match=r"^model registry sqlite:///.*registry.db: ") as err:
        store.list_models()
    assert "\n" not in str(err.value) and isinstance(err.value, ConnectionError)


def test_spec_mismatch_is_a_clear_error(tmp_path):
    root = str(tmp_path)
    save(root)
    other = dataclasses.replace(SPEC, categorical=SPEC.categorical[:-1])
    with pytest.raises(FeatureSpecMismatch, match="model ranker@1"):
        ModelStore(root).load("ranker", expected_spec=other)
    predictor = load_predictor(root, "ranker")
    predictor.check_spec(SPEC)  # same spec: quiet
    with pytest.raises(FeatureSpecMismatch):
        predictor.check_spec(other)


def test_predictor_accepts_arrow_pandas_and_dicts(tmp_path):
    root = str(tmp_path)
    save(root)
    predictor = load_predictor(root, "ranker@1")
    table = synthetic_examples(SPEC, 50, seed=2)
    from_arrow = predictor.predict(table, chunk_rows=16)  # chunking must not change results
    from_pandas = predictor.predict(table.to_pandas())
    from_dict = predictor.predict({c: table.column(c).to_pylist() for c in SPEC.feature_columns})
    for task in predictor.task_names:
        assert from_arrow[task].shape == (50,)
        np.testing.assert_allclose(from_arrow[task], from_pandas[task], rtol=1e-6)
        np.testing.assert_allclose(from_arrow[task], from_dict[task], rtol=1e-6)
    with pytest.raises(KeyError, match="cat_user_id"):
        predictor.predict(table.drop_columns(["cat_user_id"]).to_pandas())


def test_a_truncated_or_altered_weights_file_is_one_line_naming_it(tmp_path):
    from model.store import CorruptModel

    info = save(str(tmp_path))
    weights = Path(info.path) / "weights.pt"
    original = weights.read_bytes()
    assert json.loads((weights.parent / "info.json").read_text())["weights_sha256"] == info.weights_sha256
    weights.write_bytes(original[:1000])  # cut, as a failed copy leaves it
    with pytest.raises(CorruptModel, match=r"^ranker@1: .*weights.pt is not the file that was saved \(1,000 bytes") as err:
        ModelStore(str(tmp_path)).load("ranker")
    assert "\n" not in str(err.value)
    altered = bytearray(original)
    altered[-10] ^= 1  # one bit, same size: only the checksum notices
    weights.write_bytes(bytes(altered))
    with pytest.raises(CorruptModel, match="is not the file that was saved"):
        ModelStore(str(tmp_path)).load("ranker@1")


def test_an_artifact_without_a_checksum_still_loads_or_names_what_does_not_fit(tmp_path):
    from model.store import CorruptModel

    folder = Path(save(str(tmp_path)).path)
    stored = json.loads((folder / "info.json").read_text())
    stored.pop("weights_sha256")  # as an older code version wrote it
    (folder / "info.json").write_text(json.dumps(stored))
    model, info = ModelStore(str(tmp_path)).load("ranker@1")
    assert info.weights_sha256 is None and model is not None
    (folder / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(CorruptModel, match=r"^ranker@1: .*weights.pt cannot be read as weights \(16 bytes\)"):
        ModelStore(str(tmp_path)).load("ranker@1")
    stored["model_config"] = {**SMALL, "bottom_hidden": [32]}  # the code now builds another shape
    (folder / "info.json").write_text(json.dumps(stored))
    other = save(str(tmp_path), name="other")
    (folder / "weights.pt").write_bytes((Path(other.path) / "weights.pt").read_bytes())
    with pytest.raises(CorruptModel, match=r"does not fit the shared_bottom this code builds .*shapes differ"):
        ModelStore(str(tmp_path)).load("ranker@1")

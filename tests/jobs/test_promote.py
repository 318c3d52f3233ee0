"""``infnet promote`` (jobs/promote.py): moves a registry alias on a winning report, else one line and
exit 2 with nothing moved. No Spark: the report is a Delta table written here with delta-rs."""
from __future__ import annotations

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from conf.settings import Settings
from features.spec import demo_spec
from jobs.promote import main
from model.registry import build_model
from model.store import ModelStore

SPEC = demo_spec(seq_len=5)


def report(report_id, click_verdict, like_verdict, control="ranker@1", treatment="ranker@2"):
    cis = {"wins": (0.01, 0.004, 0.016), "loses": (-0.01, -0.016, -0.004), "ties": (0.0, -0.01, 0.01)}
    rows = [(report_id, control, treatment, task, "auc", "all", verdict, *cis[verdict])
            for task, verdict in (("click", click_verdict), ("like", like_verdict), ("long_view", "ties"))]
    names = ["report_id", "control", "treatment", "task", "metric", "slice", "verdict", "delta", "ci_low", "ci_high"]
    return pa.Table.from_pylist([dict(zip(names, r)) for r in rows])


def two_versions(root) -> tuple[Settings, ModelStore]:
    """A lake whose registry holds ranker@1 and ranker@2 (tiny models), no alias."""
    settings = Settings().with_lake(str(root))
    store = ModelStore.of(settings)
    for seed in (0, 1):
        store.save("ranker", build_model("shared_bottom", SPEC, {"embed_dim": 4, "bottom_hidden": [8], "tower_hidden": [4]},
                                         seed=seed), SPEC, architecture="shared_bottom")
    return settings, store


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("promote_lake")
    settings, store = two_versions(root)
    path = settings.lake.table_path("ab_reports")
    for table in (report("aaa111", "wins", "ties"), report("bbb222", "wins", "loses"), report("ccc333", "ties", "ties")):
        write_deltalake(path, table, mode="append")
    return str(root), store


def test_a_winning_report_moves_the_alias(lake, capsys):
    root, store = lake
    # another alias than the default: the tests below check that champion (unset) never moves
    assert main(["--lake", root, "--candidate", "ranker@2", "--report", "aaa111", "--alias", "production"]) == 0
    assert store.aliases("ranker")["production"] == 2
    assert capsys.readouterr().out.startswith("ranker@production -> version 2 (new alias): ranker@2 wins on click:auc")


@pytest.mark.parametrize("args, message", [
    (["--candidate", "ranker@2", "--report", "bbb222"], "not promoted: ranker@2 wins on click:auc against ranker@1 but "
                                                        "loses on a guard: like:auc: loses"),
    (["--candidate", "ranker@2", "--report", "ccc333"], "not promoted: ranker@2 does not win on click:auc"),
    (["--candidate", "ranker@1", "--report", "aaa111"],
     "not promoted: ranker@1 does not win on click:auc against ranker@2: loses"),
    (["--candidate", "ranker@2", "--report", "zzz999"], "no A/B report 'zzz999'"),
    (["--candidate", "ranker@9", "--report", "aaa111"], "model ranker has no version 9"),
    (["--candidate", "ranker@2", "--report", "aaa111", "--primary", "auc"], "expected TASK:METRIC"),
    (["--candidate", "ranker@2", "--report", "aaa111", "--alias", "v1"], "bad alias 'v1'"),
    (["--candidate", "ranker@2", "--against", "ranker@1"], "--against needs --dates"),
    (["--candidate", "ranker@2", "--against", "ranker@1", "--dates", "2022-05-04"], "no A/B report '"),
])
def test_anything_else_is_one_line_and_moves_nothing(lake, capsys, args, message):
    root, store = lake
    before = store.aliases("ranker")
    assert main(["--lake", root, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"promote: error: {message}") and err.count("\n") == 1, err
    assert store.aliases("ranker") == before


def test_against_finds_the_report_ab_report_wrote_for_the_pinned_arms(tmp_path, capsys):
    from evaluation.ab import report_id_for

    settings, store = two_versions(tmp_path)
    store.set_alias("ranker", "champion", 1)
    store.set_alias("ranker", "challenger", 2)
    report_id = report_id_for("ranker@1", "ranker@2", ["2022-05-03", "2022-05-04"])
    write_deltalake(settings.lake.table_path("ab_reports"), report(report_id, "wins", "ties"))
    flags = ["--lake", str(tmp_path), "--candidate", "ranker@challenger", "--against", "ranker@champion"]
    assert main([*flags, "--dates", "2022-05-03"]) == 2  # another day range: another report, none
    assert "no A/B report" in capsys.readouterr().err and store.aliases("ranker")["champion"] == 1
    assert main([*flags, "--dates", "2022-05-03..2022-05-04"]) == 0
    assert capsys.readouterr().out.startswith("ranker@champion -> version 2 (was version 1)")
    assert main([*flags, "--dates", "2022-05-03..2022-05-04"]) == 0  # the champion is the challenger now
    assert capsys.readouterr().out.startswith("ranker@champion is already version 2: nothing to move")


def test_if_absent_sets_only_a_first_alias(tmp_path, capsys):
    settings, store = two_versions(tmp_path)
    flags = ["--lake", str(tmp_path), "--alias", "champion", "--if-absent"]
    assert main([*flags, "--candidate", "ranker@1"]) == 0
    assert "new alias: the name's first" in capsys.readouterr().out
    assert main([*flags, "--candidate", "ranker@2"]) == 0
    assert capsys.readouterr().out.startswith("ranker@champion stays version 1")
    assert store.aliases("ranker") == {"champion": 1}

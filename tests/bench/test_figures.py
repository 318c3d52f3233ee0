"""bench.figures and the --json output of bench.scoring / bench.ranking: the keys a script checks."""
import json

import pytest

from bench.figures import Figures, interleaved, per_round, summary
from bench.ranking import job_figures


def test_summary_and_rounds():
    s = summary([4.0, 1.0, 2.0, 10.0])
    assert (s["median"], s["min"], s["max"]) == (3.0, 1.0, 10.0)
    assert s["spread"] == pytest.approx(3.0)
    order = []
    runs = interleaved({"a": lambda: order.append("a") or 1.0, "b": lambda: order.append("b") or 2.0}, 3)
    assert order == ["a", "b"] * 3  # every round runs each arm once: a load change hits both alike
    assert per_round(runs["b"], runs["a"]) == [2.0, 2.0, 2.0]


def test_ranking_figures_have_the_checked_keys(tmp_path):
    fig = Figures("bench.ranking", {"date": "2022-05-04"})
    job_figures(fig, [{"build candidates (retrieval)": 3.0, "score": 2.0}, {"build candidates (retrieval)": 5.0,
                                                                          "score": 2.0}], 1000, 5, 50, "infnet@1")
    path = tmp_path / "out" / "ranking.json"
    fig.write(str(path))
    data = json.loads(path.read_text())
    assert data["total_seconds"] == 6.0 and data["candidates"] == 1000 and data["cores"] >= 1
    assert data["stage_seconds"]["build candidates (retrieval)"]["seconds"] == 4.0
    assert data["stage_seconds"]["build candidates (retrieval)"]["repeats"] == [3.0, 5.0]
    assert data["stage_seconds"]["score"]["candidates_per_s"] == 500.0
    assert len(data["load_average"]["start"]) == 3 and data["settings"] == {"date": "2022-05-04"}


def test_a_tiny_scoring_run_writes_the_checked_keys(tmp_path):
    from bench import scoring

    path = tmp_path / "scoring.json"
    scoring.main(["--rows", "800", "--per-request", "200", "--threads", "1", "--repeats", "2", "--skip-spark",
                  "--skip-hstu", "--profile-candidates", "400", "--profile-calls", "1", "--call-sizes", "200,400",
                  "--sweep-candidates", "400", "--call-candidates", "400", "--shapes", "n_heads=1",
                  "--json", str(path)])
    data = json.loads(path.read_text())
    for key in ("reuse_vs_naive_1thread", "infnet_vs_mmoe_time_per_candidate", "fold_vs_copy_1thread", "cores"):
        assert isinstance(data[key], (int, float)) and data[key] > 0, key
    ratio = data["ratios"]["infnet_vs_mmoe_time_per_candidate"]
    assert len(ratio["repeats"]) == 2 and ratio["min"] <= ratio["median"] <= ratio["max"]
    assert set(data["rates"]) >= {"calls_200_1thread", "calls_400_1thread", "infnet_reuse_1thread"}
    assert "infnet_n_heads=1_vs_mmoe_time_per_candidate" in data["ratios"]
    stages = data["profile"]["infnet"]["stages_us_per_candidate"]
    assert any("phi_cat" in label for label in stages) and any("blocks.1: softmax pass over S'" in label for label in stages)

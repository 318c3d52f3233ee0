"""The A/B report: the HTML parses, embeds every plot as a PNG, and the summary has one line per task."""
from __future__ import annotations

import base64
from html.parser import HTMLParser

import numpy as np
import pandas as pd

from evaluation.ab import ABConfig, ABResult, PairCounts, build_curves, compare_arms
from evaluation.report import plot_titles, render_html, render_markdown
from features.spec import TaskField

TASKS = (TaskField("click"), TaskField("like"), TaskField("play_time", "regression"))
CONFIG = ABConfig(n_boot=40, seed=1, ks=(3,), slices=("tab", "new_item"))


def small_result() -> ABResult:
    rng = np.random.default_rng(5)
    n_users, per_user = 40, 6
    n = n_users * per_user
    pdf = pd.DataFrame({
        "user_id": np.repeat(np.arange(n_users), per_user),
        "request_id": np.repeat(np.arange(n_users * 2), per_user // 2),
        "video_id": rng.integers(0, 100, n),
        "tab": rng.integers(0, 2, n),
        "new_item": rng.random(n) < 0.4,
    })
    for t in TASKS:
        y = (rng.random(n) < 0.35).astype(float) if t.kind == "binary" else np.log1p(rng.exponential(10, n))
        a = np.clip(0.3 + 0.2 * y + rng.normal(0, 0.2, n), 0, 1) if t.kind == "binary" else y + rng.normal(0, 1, n)
        pdf[t.column], pdf[t.mask_column] = y, 1
        pdf[f"score_{t.name}_a"], pdf[f"score_{t.name}_b"] = a, a.copy()
    pdf["score_click_b"] = np.clip(pdf["label_click"] + rng.normal(0, 0.3, n), 0, 1)  # B better on click
    return ABResult("infnet@1", "mmoe@1", "2022-05-08..2022-05-09", compare_arms(pdf, TASKS, CONFIG),
                    build_curves(pdf, TASKS, CONFIG), PairCounts(n, n, n, n), n_users, n_users * 2, CONFIG)


class ImageCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[dict] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))


def test_html_embeds_every_plot():
    result = small_result()
    page = render_html(result)
    parser = ImageCollector()
    parser.feed(page)
    parser.close()
    # ROC for 2 binary tasks + calibration for 3 tasks + overall deltas + top-K deltas + per-slice for 3 tasks
    expected = ["ROC - click", "ROC - like", "Calibration - click", "Calibration - like",
                "Calibration - play_time", "Deltas B - A with 95% CI", "Top-K replay deltas B - A",
                "Per-slice deltas - click (auc)", "Per-slice deltas - like (auc)", "Per-slice deltas - play_time (rmse)"]
    assert plot_titles(result) == expected
    assert [img["alt"] for img in parser.images] == expected
    for img in parser.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        assert base64.b64decode(img["src"][len(prefix):])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "link" not in parser.tags and "script" not in parser.tags  # self-contained
    assert page.count("<table>") == 2 and "click@3" in page


def test_markdown_has_one_line_per_task():
    md = render_markdown(small_result())
    lines = [line for line in md.splitlines() if line.startswith("- ")]
    assert [line.split("**")[1] for line in lines] == ["click", "like", "play_time", "mtl"]
    assert lines[0].startswith("- **click**: B wins on auc")
    assert lines[1].startswith("- **like**: B ties on auc")
    assert lines[2].startswith("- **play_time**: B ties on rmse")
    assert "mmoe@1 (B) vs infnet@1 (A)" in md


def test_the_report_shows_adjusted_p_values_and_the_slice_family():
    result = small_result()
    page, md = render_html(result), render_markdown(result)
    assert "<th>p_adjusted</th>" in page and "Benjamini-Hochberg" in page
    slices = [line for line in md.splitlines() if line.startswith("Slices:")]
    # 2 tab values + 2 new_item values per task, 3 tasks; 120 rows per slice at most (< 100 rows: too small)
    assert len(slices) == 1 and "of 12 B wins" in slices[0] and "n >= 100" in slices[0]

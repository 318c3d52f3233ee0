"""Render an :class:`evaluation.ab.ABResult` as a self-contained HTML page and a short Markdown summary.

The HTML embeds every plot as a base64 PNG (matplotlib, Agg backend), so the file can be mailed or
opened from object storage without its folder. Plots, in order (:func:`plot_titles`): ROC per
binary task (both arms), calibration per task (binned mean prediction vs mean label, both arms),
the deltas B - A with 95 % CIs for every metric, the top-K replay deltas, and per task the deltas of
its primary metric per slice.

The Markdown summary has one line per task: B wins, loses or ties with A on the task's primary
metric (AUC; RMSE for regression; a tie when the CI contains 0), then one line on the slices: how
many have a verdict from the Benjamini-Hochberg adjusted p-values and how many are too small
(``evaluation.ab.adjust_slice_verdicts``). The tables show the raw and the adjusted p-value.

Given the A/B rows of the two arms' ranked lists (``evaluation.lists.compare_list_arms``), both
end with a ranked-lists section (:func:`list_section_lines`: the candidate sets' recall ceiling,
the propensity fits, one line per list metric; in the HTML the notes and the table).
"""
from __future__ import annotations

import base64
import html
import io
import math
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from evaluation.ab import MTL_TASK, PRIMARY_METRIC, TOO_SMALL, ABResult, verdict  # noqa: E402

ARM_LABELS = {"a": "A (control)", "b": "B (treatment)"}
ARM_COLORS = {"a": "#4c72b0", "b": "#dd8452"}


def _fmt(x: float, digits: int = 4, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _is_topk(metric: str) -> bool:
    return "@" in metric


def _primary_rows(result: ABResult) -> pd.DataFrame:
    """One row per task (slice ``all``) holding its primary metric, MTL-AUC last."""
    t = result.table
    primary = set(PRIMARY_METRIC.values()) | {"mtl_auc"}
    rows = t[(t["slice"] == "all") & t["metric"].isin(primary)]
    kinds = {task: entry["kind"] for task, entry in result.curves.items()}
    keep = [
        r for _, r in rows.iterrows()
        if r["task"] == MTL_TASK or r["metric"] == PRIMARY_METRIC.get(kinds.get(r["task"], "binary"))
    ]
    return pd.DataFrame(keep, columns=t.columns)


def summary_lines(result: ABResult) -> list[str]:
    """``- click: B wins on auc: 0.7012 -> 0.7135 (delta +0.0123, 95% CI [...], p=0.010)``."""
    pct = int(round(result.config.confidence * 100))
    lines = []
    for _, r in _primary_rows(result).iterrows():
        lines.append(
            f"- **{r['task']}**: B {verdict(r)} on {r['metric']}: {_fmt(r['control_value'])} -> "
            f"{_fmt(r['treatment_value'])} (delta {_fmt(r['delta'], sign=True)}, {pct}% CI "
            f"[{_fmt(r['ci_low'], sign=True)}, {_fmt(r['ci_high'], sign=True)}], p={_fmt(r['p_value'], 3)})"
        )
    return lines


LISTS_HEADING = "Ranked lists (replay on the logged positives of the date)"


def list_section_lines(lists: pd.DataFrame) -> list[str]:
    """The Markdown lines of the ranked-lists section: the ceiling, the propensity fits, the rows."""
    from evaluation.lists import summary_lines as list_summary_lines

    ceiling = lists.attrs.get("ceiling") or {}
    lines = []
    if ceiling:
        lines.append("Recall ceiling of the candidate sets (all candidates of a user's requests; what any order "
                     "could reach), naive / IPS: "
                     + ", ".join(f"{task} {c[0]:.4f} / {c[1]:.4f}" for task, c in ceiling.items()) + ".")
    for date, fits in (lists.attrs.get("propensity_fits") or {}).items():
        lines += [f"Propensities {date}: {fit.describe()}." for fit in fits.values()]
    return [*lines, *([""] if lines else []), *list_summary_lines(lists)]


def _has_rows(lists: pd.DataFrame | None) -> bool:
    return lists is not None and len(lists) > 0


def render_markdown(result: ABResult, lists: pd.DataFrame | None = None) -> str:
    """The summary (module docstring), with the ranked-lists section when ``lists`` has rows."""
    markdown = _markdown_summary(result)
    if _has_rows(lists):
        markdown += f"\n## {LISTS_HEADING}\n\n" + "\n".join(list_section_lines(lists)) + "\n"
    return markdown


def _markdown_summary(result: ABResult) -> str:
    c, cfg = result.counts, result.config
    header = [
        f"# Offline A/B: {result.treatment} (B) vs {result.control} (A), {result.dates}",
        "",
        f"{c.matched_rows} candidates scored by both ({c.labelled_rows} with labels), {result.n_users} users, "
        f"{result.n_requests} requests; paired bootstrap over users, n_boot={cfg.n_boot}, seed={cfg.seed}.",
        "",
    ]
    return "\n".join(header + summary_lines(result) + slice_lines(result)) + "\n"


def slice_lines(result: ABResult) -> list[str]:
    """``Slices: 2 of 14 win, 1 loses (Benjamini-Hochberg over 12 slices with n >= 100; 2 too small).``"""
    t = result.table
    rows = t[(t["slice"] != "all") & ~t["slice"].astype(str).str.contains("list@")]
    if rows.empty:
        return []
    v = rows.apply(verdict, axis=1)
    small = int((v == TOO_SMALL).sum())
    return ["", f"Slices: {int((v == 'wins').sum())} of {len(rows)} B wins, {int((v == 'loses').sum())} loses "
                f"(Benjamini-Hochberg over the {len(rows) - small} slices with n >= {result.config.min_slice_n}; "
                f"{small} too small for a verdict)."]


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------

def _png(draw: Callable[[], plt.Figure]) -> str:
    fig = draw()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _roc(task: str, roc: dict) -> Callable[[], plt.Figure]:
    def draw():
        fig, ax = plt.subplots(figsize=(4.2, 4))
        for arm, (fpr, tpr) in roc.items():
            ax.plot(fpr, tpr, color=ARM_COLORS[arm], label=ARM_LABELS[arm])
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC - {task}")
        ax.legend(loc="lower right")
        return fig
    return draw


def _calibration(task: str, calib: dict) -> Callable[[], plt.Figure]:
    def draw():
        fig, ax = plt.subplots(figsize=(4.2, 4))
        lo = min(min(p.min(), y.min()) for p, y in calib.values())
        hi = max(max(p.max(), y.max()) for p, y in calib.values())
        for arm, (pred, label) in calib.items():
            ax.plot(pred, label, marker="o", color=ARM_COLORS[arm], label=ARM_LABELS[arm])
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
        ax.set(xlabel="mean prediction (bin)", ylabel="mean label (bin)", title=f"Calibration - {task}")
        ax.legend(loc="upper left")
        return fig
    return draw


def _delta_bars(rows: pd.DataFrame, title: str, label: Callable[[pd.Series], str],
                group: str = "metric") -> Callable[[], plt.Figure]:
    """Horizontal bars of delta with CI whiskers, one panel per ``group`` value (shared scale inside)."""
    def draw():
        groups = list(dict.fromkeys(rows[group]))
        fig, axes = plt.subplots(len(groups), 1, figsize=(6.5, 0.9 + 0.35 * len(rows) + 0.5 * len(groups)),
                                 squeeze=False)
        for ax, g in zip(axes[:, 0], groups):
            part = rows[rows[group] == g]
            ys = range(len(part))
            err_lo = (part["delta"] - part["ci_low"]).clip(lower=0).fillna(0).to_numpy(float)
            err_hi = (part["ci_high"] - part["delta"]).clip(lower=0).fillna(0).to_numpy(float)
            colors = [{"wins": "#55a868", "loses": "#c44e52"}.get(verdict(r), "#8c8c8c") for _, r in part.iterrows()]
            ax.barh(list(ys), part["delta"].fillna(0).to_numpy(float), xerr=[err_lo, err_hi], color=colors, capsize=3)
            ax.set_yticks(list(ys), [label(r) for _, r in part.iterrows()], fontsize=8)
            ax.axvline(0, color="black", lw=0.8)
            ax.set_title(str(g), fontsize=9)
        axes[0, 0].figure.suptitle(title)
        fig.tight_layout()
        return fig
    return draw


def plot_specs(result: ABResult) -> list[tuple[str, Callable[[], plt.Figure]]]:
    """(title, draw) for every plot of the report, in page order."""
    t = result.table
    specs = []
    for task, entry in result.curves.items():
        if "roc" in entry:
            specs.append((f"ROC - {task}", _roc(task, entry["roc"])))
    for task, entry in result.curves.items():
        specs.append((f"Calibration - {task}", _calibration(task, entry["calibration"])))
    overall = t[(t["slice"] == "all") & ~t["metric"].map(_is_topk)]
    if len(overall):
        specs.append(("Deltas B - A with 95% CI", _delta_bars(overall, "Deltas B - A with 95% CI", lambda r: r["task"])))
    topk = t[(t["slice"] == "all") & t["metric"].map(_is_topk)]
    if len(topk):
        specs.append(("Top-K replay deltas B - A", _delta_bars(
            topk, "Top-K replay deltas B - A", lambda r: r["metric"], group="task")))
    for task in dict.fromkeys(t.loc[t["slice"] != "all", "task"]):
        part = t[(t["task"] == task) & (t["slice"] != "all")]
        title = f"Per-slice deltas - {task} ({part['metric'].iloc[0]})"
        specs.append((title, _delta_bars(part, title, lambda r: f"{r['slice']} (n={r['n']})", group="task")))
    return specs


def plot_titles(result: ABResult) -> list[str]:
    return [title for title, _ in plot_specs(result)]


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
td:nth-child(-n+3), th { text-align: left; }
.wins { background: #e6f4ea; } .loses { background: #fce8e6; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figcaption { font-size: 13px; text-align: center; }
"""


def _table_html(table: pd.DataFrame) -> str:
    cols = ["task", "metric", "slice", "control_value", "treatment_value", "delta", "rel_delta",
            "ci_low", "ci_high", "p_value", "p_adjusted", "n", "n_users"]
    head = "".join(f"<th>{c}</th>" for c in cols + ["verdict"])
    body = []
    for _, r in table.iterrows():
        v = verdict(r)
        cells = []
        for c in cols:
            x = r.get(c, float("nan"))
            cells.append(html.escape(str(x)) if isinstance(x, str) or c in ("n", "n_users")
                         else _fmt(x, 5, sign=c in ("delta", "rel_delta", "ci_low", "ci_high")))
        body.append(f'<tr class="{v}">' + "".join(f"<td>{c}</td>" for c in cells) + f"<td>{v}</td></tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(result: ABResult, lists: pd.DataFrame | None = None) -> str:
    """The whole report as one HTML string (plots inline, no external files), with the
    ranked-lists section (its notes, then the table) when ``lists`` has rows."""
    page = _html_page(result)
    if _has_rows(lists):
        notes = "".join(f"<p>{html.escape(line)}</p>" for line in list_section_lines(lists)
                        if line and not line.startswith("- "))
        page = page.replace("</body>", f"<h2>{LISTS_HEADING}</h2>" + notes + _table_html(lists) + "</body>")
    return page


def _html_page(result: ABResult) -> str:
    figures = []
    for title, draw in plot_specs(result):
        t = html.escape(title)
        figures.append(
            f'<figure><img alt="{t}" title="{t}" src="data:image/png;base64,{_png(draw)}">'
            f"<figcaption>{t}</figcaption></figure>"
        )
    summary = "".join(f"<li>{html.escape(line[2:]).replace('**', '')}</li>" for line in summary_lines(result))
    c, cfg = result.counts, result.config
    t = result.table
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Offline A/B: {html.escape(result.treatment)} vs {html.escape(result.control)}</title>
<style>{_CSS}</style></head><body>
<h1>Offline A/B: {html.escape(result.treatment)} (B) vs {html.escape(result.control)} (A)</h1>
<p>Dates {html.escape(result.dates)}. Control rows {c.control_rows}, treatment rows {c.treatment_rows},
matched on (request_id, video_id, impression_id) {c.matched_rows}, with labels {c.labelled_rows};
{result.n_users} users, {result.n_requests} requests. 95&nbsp;% CIs and p-values from a paired
bootstrap over users (n_boot={cfg.n_boot}, seed={cfg.seed}); a tie is a CI that contains 0. Per-slice
verdicts: Benjamini-Hochberg adjusted p-value (p_adjusted) below {1 - cfg.confidence:.2f} over the slices with
at least {cfg.min_slice_n} rows; smaller slices are too_small.</p>
<h2>Summary</h2><ul>{summary}</ul>
<h2>Plots</h2>
{''.join(figures)}
<h2>Overall metrics</h2>
{_table_html(t[t['slice'] == 'all'])}
<h2>Per-slice metrics</h2>
{_table_html(t[t['slice'] != 'all'])}
</body></html>
"""

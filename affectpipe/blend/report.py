"""A self-contained HTML report of a blend: score tables and inline PNG plots (no network)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: render to memory only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from affectpipe.blend.tasks import rules_for  # noqa: E402
from affectpipe.fsutil import write_text_atomic  # noqa: E402
from affectpipe.metrics import ccc, expr_f1_per_class  # noqa: E402
from affectpipe.schema import AU_COLUMNS, EXPR_NAMES  # noqa: E402

STYLE = """
body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px}
th{background:#eee}td.num{text-align:right;font-family:monospace}
.warn{background:#fff3cd;border:2px solid #e0a800;padding:.8em;font-weight:bold}
img{max-width:100%}
"""
STAGE_LABELS = {
    "blend": "blend (weights tuned on validation)",
    "calibration": "+ VA affine calibration",
    "offsets": "+ EXPR class offsets",
    "thresholds": "+ per-AU thresholds",
    "smoothing": "+ temporal smoothing (final)",
}


def _png(fig: plt.Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _num(value: float) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{c}</td>' if i else f"<td>{html.escape(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _va_plot(outcome) -> str:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    valid = rules_for("va").labelled(outcome.val_labels)
    for d, (ax, name) in enumerate(zip(axes, ("valence", "arousal"), strict=True)):
        truth, pred = outcome.val_labels[valid, d], outcome.val_outputs[valid, d]
        ax.hexbin(truth, pred, gridsize=40, extent=(-1, 1, -1, 1), mincnt=1, cmap="viridis")
        ax.plot([-1, 1], [-1, 1], color="red", linewidth=1)
        ax.set(xlabel=f"true {name}", ylabel=f"predicted {name}")
        ax.set_title(f"{name}: CCC {ccc(truth, pred):.3f}")
    return _png(fig)


def _expr_plots(outcome) -> str:
    valid = outcome.val_labels >= 0
    truth, pred = outcome.val_labels[valid], outcome.val_outputs[valid].astype(np.int64)
    confusion = np.zeros((len(EXPR_NAMES), len(EXPR_NAMES)), dtype=np.int64)
    np.add.at(confusion, (truth, pred), 1)
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    ax1.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(EXPR_NAMES)):
        for j in range(len(EXPR_NAMES)):
            ax1.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7)
    ax1.set_xticks(range(8), EXPR_NAMES, rotation=45, ha="right")
    ax1.set_yticks(range(8), EXPR_NAMES)
    ax1.set(xlabel="predicted", ylabel="true", title="confusion (row-normalised colour)")
    f1 = expr_f1_per_class(outcome.val_labels, outcome.val_outputs)
    ax2.bar(range(8), f1, color="tab:blue")
    ax2.set_xticks(range(8), EXPR_NAMES, rotation=45, ha="right")
    ax2.set(ylim=(0, 1), ylabel="F1", title=f"per-class F1 (macro {np.mean(f1):.3f})")
    return _png(fig)


def _au_plot(outcome) -> str:
    details = outcome.val_details["f1_per_au"]
    f1 = np.array([details[c] for c in AU_COLUMNS])
    thresholds = outcome.blend.post["thresholds"]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(range(len(AU_COLUMNS)), f1, color="tab:green")
    for i, t in enumerate(thresholds):
        ax.text(i, min(f1[i] + 0.02, 0.97), f"t={t:.3f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(AU_COLUMNS)), [c.upper() for c in AU_COLUMNS])
    ax.set(
        ylim=(0, 1), ylabel="F1", title=f"per-AU F1 with tuned thresholds (mean {f1.mean():.3f})"
    )
    return _png(fig)


PLOTS = {"va": _va_plot, "expr": _expr_plots, "au": _au_plot}


def _task_section(task: str, outcome, info: dict[str, Any]) -> str:
    rules = rules_for(task)
    rows = [[f"candidate {name}", _num(s)] for name, s in outcome.candidate_scores.items()]
    for stage, value in outcome.blend.stage_scores.items():
        label = STAGE_LABELS[stage]
        if task == "au" and stage == "blend":
            label += ", global threshold 0.5"
        rows.append([label, _num(value)])
    rows.append(
        [f"cross-fitted final ({outcome.crossfit_folds} video folds)", _num(outcome.crossfit_score)]
    )
    weights = "; ".join(
        f"{group}: " + ", ".join(f"{n} {w:.2f}" for n, w in ws.items())
        for group, ws in info["weights"].items()
    )
    smoothing = info["smoothing"]
    window = (
        "none"
        if smoothing["half_width"] == 0
        else f"{smoothing['kernel']}, {smoothing['half_width']} listed frames each side"
    )
    post = html.escape(str({k: np.round(v, 3).tolist() for k, v in info[rules.post_name].items()}))
    return (
        f"<h2>{task.upper()}</h2>"
        + _table(["validation score", "value"], rows)
        + f"<p>Weights: {html.escape(weights)}<br>Smoothing: {html.escape(window)}<br>"
        f"{rules.post_name}: {post}</p>"
        + f"<p><i>Data: {html.escape(info['data']['tuned'])}. Cross-fitted: "
        f"{html.escape(info['data']['crossfit'])}.</i></p>" + PLOTS[task](outcome)
    )


def write_report(
    path: Path,
    outcomes: dict,
    document: dict[str, Any],
    metadata: dict[str, Any],
    notes: list[str] | tuple[str, ...] = (),
) -> Path:
    """Write `report.html` (self-contained: styles inline, plots as base64 PNG)."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>affectpipe blend report: {html.escape(str(metadata.get('dataset', '')))}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Blend report: dataset {html.escape(str(metadata.get('dataset', '?')))}, "
        f"run {html.escape(document['run'])}</h1>",
    ]
    parts += [f'<p class="warn">{html.escape(n)}</p>' for n in notes]
    summary_rows = [
        [task.upper(), _num(s["best_single"]), _num(s["tuned"]), _num(s["crossfit"])]
        for task, s in document["scores"].items()
    ]
    if document["p_mtl"]:
        p = document["p_mtl"]
        summary_rows.append(
            ["P_MTL", _num(p["best_single"]), _num(p["tuned"]), _num(p["crossfit"])]
        )
    parts.append(
        _table(
            ["task", "best single candidate", "blend, tuned on val", "blend, cross-fitted"],
            summary_rows,
        )
    )
    parts.append(
        "<p>The tuned score is measured on the validation rows it was tuned on and is "
        "optimistic; the cross-fitted score tunes on some validation videos and scores the "
        "others, rotating over folds: expect the test score nearer to it.</p>"
    )
    for task, outcome in outcomes.items():
        parts.append(_task_section(task, outcome, document["tasks"][task]))
    files = document["submission_files"]
    parts.append(f"<h2>Submission files ({len(files)})</h2><ul>")
    parts += [f"<li>{html.escape(f)}</li>" for f in files[:50]]
    parts.append("</ul>" + (f"<p>... and {len(files) - 50} more</p>" if len(files) > 50 else ""))
    if document["warnings"]:
        parts.append("<h2>Warnings</h2><ul>")
        parts += [f"<li>{html.escape(w)}</li>" for w in document["warnings"]]
        parts.append("</ul>")
    parts.append("</body></html>")
    write_text_atomic(path, "\n".join(parts))
    return path

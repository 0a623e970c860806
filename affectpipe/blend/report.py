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

from affectpipe.blend.stage_registry import get_blend_stage  # noqa: E402
from affectpipe.blend.task_rules import rules_for  # noqa: E402
from affectpipe.fsutil import write_text_atomic  # noqa: E402
from affectpipe.metrics import ccc, expr_f1_per_class  # noqa: E402
from affectpipe.schema import AU_COLUMNS, EXPR_NAMES  # noqa: E402
from affectpipe.tasks import DECISION_THRESHOLD  # noqa: E402

STYLE = """
body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px}
th{background:#eee}td.num{text-align:right;font-family:monospace}
.warn{background:#fff3cd;border:2px solid #e0a800;padding:.8em;font-weight:bold}
.note{background:#eef5ff;padding:.5em}
img{max-width:100%}
"""
STAGE_LABELS = {
    "blend": "blend (weights tuned on validation)",
    "calibration": "+ VA affine calibration",
    "offsets": "+ EXPR class offsets",
    "thresholds": "+ per-AU thresholds",
    "smoothing": "+ temporal smoothing",
}  # the base's stages; the later ones label themselves (`BlendStage.label`)


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
        ax.set_title(
            f"{name}: CCC {ccc(truth, pred):.3f} tuned, "
            f"{_crossfit(outcome, f'ccc_{name}')} cross-fitted"
        )
    return _png(fig)


def _crossfit(outcome, key: str) -> str:
    """A cross-fitted score of the outcome, formatted ("n/a" without a cross-fit)."""
    return _num((outcome.crossfit_details or {}).get(key))


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
    title = f"per-class F1, tuned (macro {np.mean(f1):.3f}; cross-fitted "
    ax2.set(ylim=(0, 1), ylabel="F1", title=title + f"{_crossfit(outcome, 'p_expr')})")
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
        ylim=(0, 1),
        ylabel="F1",
        title=f"per-AU F1 as submitted, tuned (mean {f1.mean():.3f}; cross-fitted "
        f"{_crossfit(outcome, 'p_au')})",
    )
    return _png(fig)


PLOTS = {"va": _va_plot, "expr": _expr_plots, "au": _au_plot}
TRACE_VIDEOS = 3
# Validation "videos" with fewer rows than this (median) are photo collections (a person's
# photos, say): their order carries no time, so no time series is drawn.
MIN_TRACE_ROWS = 5


def trace_videos(outcome) -> np.ndarray | None:
    """Codes of the validation videos the time series show (those with the most labelled
    rows, at most TRACE_VIDEOS), or None for a collection of photos."""
    videos = outcome.val_videos
    if videos is None or not len(videos):
        return None
    counts = np.bincount(videos)
    if np.median(counts[counts > 0]) < MIN_TRACE_ROWS:
        return None
    labelled = rules_for(outcome.task).labelled(outcome.val_labels)
    with_labels = np.bincount(videos[labelled], minlength=len(counts))
    chosen = np.argsort(-with_labels, kind="stable")[:TRACE_VIDEOS]
    return chosen[with_labels[chosen] > 0]


def _video_rows(outcome, video: int) -> np.ndarray:
    rows = np.flatnonzero(outcome.val_videos == video)
    return rows[np.argsort(outcome.val_frames[rows], kind="stable")]


def _va_traces(outcome, videos: np.ndarray) -> plt.Figure:
    fig, axes = plt.subplots(len(videos), 2, figsize=(12, 2.4 * len(videos)), squeeze=False)
    for (ax_v, ax_a), video in zip(axes, videos, strict=True):
        rows = _video_rows(outcome, video)
        frames = outcome.val_frames[rows]
        for d, (ax, name) in enumerate(((ax_v, "valence"), (ax_a, "arousal"))):
            ax.plot(
                frames, outcome.val_labels[rows, d], color="black", linewidth=1.5, label="label"
            )
            ax.plot(
                frames,
                outcome.val_outputs[rows, d],
                color="tab:blue",
                linewidth=1,
                label="submitted blend",
            )
            ax.set(ylim=(-1.05, 1.05), xlabel="frame", ylabel=name)
            ax.legend(fontsize=7, loc="upper right")
    return fig


def _strip(ax, codes: np.ndarray, n_classes: int, cmap: str) -> None:
    """Categorical codes (NaN: no label, drawn white) as a coloured strip."""
    colours = plt.get_cmap(cmap, n_classes)
    ax.imshow(
        np.ma.masked_invalid(codes),
        aspect="auto",
        interpolation="nearest",
        cmap=colours,
        vmin=-0.5,
        vmax=n_classes - 0.5,
    )


def _expr_traces(outcome, videos: np.ndarray) -> plt.Figure:
    fig, axes = plt.subplots(len(videos), 1, figsize=(12, 1.3 * len(videos) + 0.8), squeeze=False)
    for ax, video in zip(axes[:, 0], videos, strict=True):
        rows = _video_rows(outcome, video)
        labels = np.where(outcome.val_labels[rows] >= 0, outcome.val_labels[rows], np.nan)
        _strip(ax, np.stack([labels, outcome.val_outputs[rows].astype(float)]), 8, "tab10")
        ax.set_yticks([0, 1], ["label", "submitted"])
        ticks = np.linspace(0, len(rows) - 1, min(len(rows), 8)).astype(int)
        ax.set_xticks(ticks, outcome.val_frames[rows][ticks])
    handles = [plt.Rectangle((0, 0), 1, 1, color=plt.get_cmap("tab10", 8)(i)) for i in range(8)]
    fig.legend(handles, EXPR_NAMES, ncol=8, fontsize=7, loc="lower center")
    fig.subplots_adjust(bottom=0.25 if len(videos) == 1 else 0.12)
    return fig


def _au_traces(outcome, videos: np.ndarray) -> plt.Figure:
    fig, axes = plt.subplots(len(videos), 2, figsize=(12, 2.8 * len(videos)), squeeze=False)
    names = [c.upper() for c in AU_COLUMNS]
    for (ax_label, ax_pred), video in zip(axes, videos, strict=True):
        rows = _video_rows(outcome, video)
        labels = np.where(outcome.val_labels[rows] >= 0, outcome.val_labels[rows], np.nan)
        for ax, values, title in (
            (ax_label, labels, "label"),
            (ax_pred, outcome.val_outputs[rows].astype(float), "submitted (active)"),
        ):
            _strip(ax, values.T, 2, "Greys")
            ax.set_yticks(range(len(names)), names, fontsize=6)
            ticks = np.linspace(0, len(rows) - 1, min(len(rows), 6)).astype(int)
            ax.set_xticks(ticks, outcome.val_frames[rows][ticks])
            ax.set(title=title, xlabel="frame")
    return fig


TRACES = {"va": _va_traces, "expr": _expr_traces, "au": _au_traces}


def _trace_plot(task: str, outcome) -> str:
    """The submitted blend's outputs along a few validation videos, beside the labels."""
    videos = trace_videos(outcome)
    if videos is None:
        return (
            "<p><i>No time series: the validation rows are single photos or very short "
            "clips (fewer than "
            f"{MIN_TRACE_ROWS} rows per video on median), whose order carries no time.</i></p>"
        )
    if not len(videos):
        return ""
    fig = TRACES[task](outcome, videos)
    fig.tight_layout()
    score = _num(outcome.crossfit_score)
    return (
        "<h3>Time series on validation videos: labels and the submitted blend "
        f"(tuned on these rows; cross-fitted score {score})</h3>" + _png(fig)
    )


def _item_table(rules, outcome, post: dict[str, list[float]]) -> tuple[str, list[str]]:
    """Per class / AU / dimension: label support, tuned and cross-fitted scores, the tuned
    correction; and a warning per item without support."""
    tuned = rules.per_item(outcome.val_details)
    crossfit = rules.per_item(outcome.crossfit_details) if outcome.crossfit_details else {}
    metric = rules.task.item_metric
    header = ["item", "train support", "val support", f"{metric} tuned", f"{metric} cross-fitted"]
    header += list(post)
    rows = []
    absent: dict[str, list[str]] = {"validation": [], "training": []}
    for i, item in enumerate(tuned):
        train, val = outcome.support["train"][item], outcome.support["val"][item]
        row = [item, str(train), str(val), _num(tuned[item]), _num(crossfit.get(item))]
        rows.append(row + [f"{values[i]:.3f}" for values in post.values()])
        if not val:
            absent["validation"].append(item)
        if not train:
            absent["training"].append(item)
    what = {"va": "labelled rows", "expr": "rows of the class"}.get(rules.name, "positives")
    warnings = []
    if absent["validation"]:
        warnings.append(
            f"{rules.name.upper()}: no {what} in validation for "
            f"{', '.join(absent['validation'])}: their {metric} is 0 by definition and says "
            "nothing (the present-class score leaves them out)"
        )
    if absent["training"]:
        warnings.append(
            f"{rules.name.upper()}: no {what} in training for {', '.join(absent['training'])}"
            ": the heads cannot have learnt them"
        )
    return _table(header, rows), warnings


def _weights_table(outcome, weights: dict[str, dict[str, float]]) -> str:
    groups = list(weights)
    rows = [
        [name, *(f"{weights[g].get(name, 0.0):.3f}" for g in groups)] for name in outcome.candidates
    ]
    return _table(["candidate", *(f"weight ({g})" for g in groups)], rows)


def _stage_note(stage: str, fitted) -> str:
    """The tuned parameter of a stage in force."""
    if stage in fitted.in_force:
        return get_blend_stage(stage).describe(fitted.in_force[stage])
    if stage == "smoothing":
        return f"{fitted.kernel}, half-width {fitted.half_width}" if fitted.half_width else ""
    return ""


def _stage_table(task: str, outcome) -> str:
    """Stage -> tuned score, cross-fitted score, whether the submission applies it and why."""
    rules = rules_for(task)
    fitted = outcome.blend
    rows = []
    for stage, tuned in fitted.stage_scores.items():
        label = STAGE_LABELS.get(stage) or get_blend_stage(stage).label
        if rules.post_name == "thresholds" and stage == "blend":
            label += f", global threshold {DECISION_THRESHOLD}"
        decision = fitted.decisions.get(stage)
        crossfit = fitted.crossfit_stage_scores.get(stage, float("nan"))
        if decision is None:
            kept = "yes" if stage == "blend" else "as tuned (no cross-fit)"
        elif decision["kept"]:
            kept = " ".join(filter(None, ["yes:", decision["why"], _stage_note(stage, fitted)]))
        else:
            kept = f"no: {decision['why']}"
        rows.append([label, _num(tuned), _num(crossfit), html.escape(kept)])
    note = (
        "<p><i>Each row adds its stage to the rows above it, as tuned on every row (the "
        "cross-fitted column tunes them inside every fold). A stage is kept only when the "
        "pipeline with it cross-fits higher than without it; the correction and smoothing "
        "are judged together (a correction can lose on the raw mix and win on smoothed "
        "outputs), each later stage over what is kept before it. A "
        "dropped correction or smoothing stage is switched off and the stages after it are "
        "tuned again without it.</i></p>"
    )
    header = ["stage", "tuned (val)", "cross-fitted", "kept"]
    return _table(header, rows) + note


def _task_section(task: str, outcome, info: dict[str, Any]) -> str:
    rules = rules_for(task)
    rows = [[f"candidate {name}", _num(s)] for name, s in outcome.candidate_scores.items()]
    rows.append(
        [f"cross-fitted final ({outcome.crossfit_folds} video folds)", _num(outcome.crossfit_score)]
    )
    for kind, label in (("blend", "blend"), ("single", "best single candidate")):
        rows.append([f"{label}: cross-fitted", _num(outcome.alternatives[kind]["crossfit"])])
    present = outcome.present_class_line()
    if present:
        key = rules.present_metric
        crossfit = (outcome.crossfit_details or {}).get(key)
        rows.append(
            ["present classes only (not ABAW's metric): tuned", _num(outcome.val_details[key])]
        )
        rows.append(["present classes only (not ABAW's metric): cross-fitted", _num(crossfit)])
    smoothing = info["smoothing"]
    window = (
        "none"
        if smoothing["half_width"] == 0
        else f"{smoothing['kernel']}, {smoothing['half_width']} listed frames each side"
    )
    items, warnings = _item_table(rules, outcome, info[rules.post_name])
    used = "the blend" if outcome.choice == "blend" else "the best single candidate"
    note_class = "warn" if "does not score above" in outcome.choice_note else "note"
    fill = outcome.fill
    return (
        f"<h2>{task.upper()}</h2>"
        + f'<p class="{note_class}">Submission uses {used}. {html.escape(outcome.choice_note)}</p>'
        + (f'<p class="note">{html.escape(present)}</p>' if present else "")
        + _table(["validation score", "value"], rows)
        + "<h3>Stages</h3>"
        + _stage_table(task, outcome)
        + f"<h3>Per item ({html.escape(rules.items)}): "
        f"support, scores and tuned {html.escape(rules.post_name)}</h3>"
        + items
        + "".join(f'<p class="warn">{html.escape(w)}</p>' for w in warnings)
        + "<h3>Weights</h3>"
        + _weights_table(outcome, info["weights"])
        + f"<p>Smoothing: {html.escape(window)}</p>"
        + _table(
            [
                "test rows listed",
                "predicted",
                "interpolated (image, no prediction)",
                "interpolated (no image file)",
                "training prior",
            ],
            [
                [
                    str(fill.listed),
                    str(fill.listed - fill.interpolated - fill.imageless - fill.prior),
                    str(fill.interpolated),
                    str(fill.imageless),
                    str(fill.prior),
                ]
            ],
        )
        + f"<p><i>Data: {html.escape(info['data']['tuned'])}. Cross-fitted: "
        f"{html.escape(info['data']['crossfit'])}.</i></p>"
        + PLOTS[task](outcome)
        + _trace_plot(task, outcome)
    )


def _sha_cell(record: dict[str, Any]) -> str:
    """The weights' sha256, the model file's for a descriptor (its landmark model), else
    'not applicable' (features read from files, no weights)."""
    if record.get("weights_sha256"):
        return str(record["weights_sha256"])
    if record.get("model_sha256"):
        return f"{record['model_sha256']} (landmark model)"
    return "not applicable"


def _provenance_section(prov: dict[str, Any]) -> str:
    rows = [
        ["date (UTC)", prov["date"]],
        ["command", prov["command"]],
        *([f"{name} version", str(v)] for name, v in prov["versions"].items()),
        ["manifest", prov["manifest"]["path"]],
        ["manifest fingerprint", str(prov["manifest"]["fingerprint"])],
    ]
    esc = html.escape
    features = _table(
        ["backbone", "used by a candidate", "weights sha256", "random init", "file"],
        [
            [
                b,
                "yes" if r["used"] else "no",
                esc(_sha_cell(r)),
                "YES" if r["random_init"] else "no",
                esc(r["path"]),
            ]
            for b, r in prov["features"].items()
        ],
    )
    predictions = _table(
        ["task", "candidate", "prediction file sha256"],
        [
            [t, esc(name), esc(sha)]
            for t, files in prov["predictions"].items()
            for name, sha in files.items()
        ],
    )
    return (
        "<h2>Provenance</h2>"
        + _table(["", ""], [[k, html.escape(v)] for k, v in rows])
        + "<h3>Feature files</h3>"
        + features
        + "<h3>Inputs</h3>"
        + predictions
    )


def _submission_section(document: dict[str, Any]) -> str:
    status = document["submission"]
    files = [entry["path"] for entry in document["submission_files"]]
    if status["missing"]:
        head = (
            '<p class="warn">INCOMPLETE: the test list asks for '
            + html.escape(", ".join(status["requested"]))
            + "; not written: "
            + html.escape("; ".join(f"{k}: {v}" for k, v in status["missing"].items()))
            + "</p>"
        )
    elif status["requested"]:
        head = "<p>Complete: " + html.escape(", ".join(status["requested"])) + "</p>"
    else:
        head = "<p>The dataset has no test rows: no submission asked for.</p>"
    items = "".join(f"<li>{html.escape(f)}</li>" for f in files[:50])
    more = f"<p>... and {len(files) - 50} more</p>" if len(files) > 50 else ""
    return f"<h2>Submission files ({len(files)})</h2>{head}<ul>{items}</ul>{more}"


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
    parts.append(_submission_section(document))
    kinds = ("best_single", "tuned", "crossfit", "single_crossfit", "submitted_crossfit")
    summary_rows = [
        [task.upper(), *(_num(s[k]) for k in kinds), outcomes[task].choice]
        for task, s in document["scores"].items()
    ]
    if document["p_mtl"]:
        p = document["p_mtl"]
        summary_rows.append(["P_MTL", *(_num(p[k]) for k in kinds), ""])
    parts.append(
        _table(
            [
                "task",
                "best single candidate (val)",
                "blend, tuned on val",
                "blend, cross-fitted",
                "best single, cross-fitted",
                "submitted, cross-fitted",
                "submission uses",
            ],
            summary_rows,
        )
    )
    parts.append(
        "<p>The tuned score is measured on the validation rows it was tuned on and is "
        "optimistic; the cross-fitted score tunes on some validation videos and scores the "
        "others, rotating over folds: expect the test score nearer to it. The best single "
        "candidate is chosen, corrected and smoothed the same way; the submission uses it "
        "when it cross-fits better than the blend.</p>"
    )
    for task, outcome in outcomes.items():
        parts.append(_task_section(task, outcome, document["tasks"][task]))
    if document["warnings"]:
        parts.append("<h2>Warnings</h2><ul>")
        parts += [f"<li>{html.escape(w)}</li>" for w in document["warnings"]]
        parts.append("</ul>")
    parts.append(_provenance_section(document["provenance"]))
    parts.append("</body></html>")
    write_text_atomic(path, "\n".join(parts))
    return path

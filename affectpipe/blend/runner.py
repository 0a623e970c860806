"""`blend.run`: tune every task of a run on validation, write submissions, blend.json, report."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from affectpipe import __version__
from affectpipe.blend import submission
from affectpipe.blend.interpolate import fill_missing, interpolate_at
from affectpipe.blend.predictions import available_tasks, load_candidates
from affectpipe.blend.smoothing import VideoOrder, group_codes
from affectpipe.blend.tasks import TaskRules, rules_for
from affectpipe.blend.tuning import (
    BlendOptions,
    TaskBlend,
    continuous_outputs,
    tune_task,
)
from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.fsutil import file_lock, write_text_atomic
from affectpipe.manifest import read_manifest, read_manifest_metadata
from affectpipe.metrics import mtl_score

log = logging.getLogger(__name__)


class NoValidationLabels(InputError):
    """A task has predictions but no validation label to tune its blend on."""


@dataclass
class TaskOutcome:
    """One task's tuned blend, its validation scores and its test-row outputs."""

    task: str
    candidates: list[str]
    blend: TaskBlend
    candidate_scores: dict[str, float]
    crossfit_score: float
    crossfit_folds: int
    val_details: dict[str, Any]
    val_labels: np.ndarray
    val_outputs: np.ndarray
    test_rows: np.ndarray  # manifest rows, in manifest order
    test_continuous: np.ndarray
    test_outputs: np.ndarray
    n_val: int
    n_val_labelled: int
    n_val_videos: int
    filled: dict[str, int] = field(default_factory=dict)

    @property
    def final_score(self) -> float:
        return self.blend.stage_scores["smoothing"]


@dataclass
class BlendResult:
    blend_dir: Path
    blend_json: Path
    report: Path | None
    submission_files: list[Path]
    outcomes: dict[str, TaskOutcome]
    scores: dict[str, dict[str, float]]  # task -> {"tuned": .., "crossfit": .., "best_single": ..}
    p_mtl: dict[str, float] | None
    warnings: list[str]


def _tune_task(
    rules: TaskRules,
    manifest: pd.DataFrame,
    groups: np.ndarray,
    paths: DatasetPaths,
    run: str,
    options: BlendOptions,
    warnings: list[str],
    candidates: Sequence[str] | None = None,
) -> TaskOutcome:
    frames = manifest["frame"].to_numpy(np.int64)
    split = manifest["split"].to_numpy(str)
    labels_all = rules.labels(manifest)
    prior = rules.prior(labels_all[split == "train"])
    cands = load_candidates(paths, run, rules.name, manifest, candidates)
    rows = cands.rows
    filled_values, filled = [], {"interpolated": 0, "prior_rows": 0}
    for name, values in zip(cands.names, cands.values, strict=True):
        out, report = fill_missing(values, groups[rows], frames[rows], prior)
        filled_values.append(out)
        filled["interpolated"] += report.filled_rows
        filled["prior_rows"] += report.prior_rows
        if report.prior_groups:
            warnings.append(
                f"{rules.name}/{name}: {report.prior_groups} video(s) without any prediction "
                f"got the train prior ({report.prior_rows} rows)"
            )
    values = np.stack(filled_values)
    is_val = split[rows] == "val"
    val_rows, test_rows = rows[is_val], rows[split[rows] == "test"]
    val_labels = labels_all[val_rows]
    labelled = rules.labelled(val_labels)
    if not labelled.any():
        raise NoValidationLabels(
            f"task {rules.name}: no labelled validation rows to tune the blend on"
        )
    val_values = values[:, is_val]
    val_order = VideoOrder.of(groups[val_rows], frames[val_rows])
    fitted, crossfit = tune_task(
        rules, val_values, val_labels, groups[val_rows], frames[val_rows], options
    )
    identity = rules.identity_post()
    candidate_scores = {
        name: rules.score(val_labels[labelled], rules.decide(v[labelled], identity))
        for name, v in zip(cands.names, val_values, strict=True)
    }
    val_continuous = continuous_outputs(rules, fitted, val_values, val_order)
    val_outputs = rules.decide(val_continuous, fitted.post)
    test_order = VideoOrder.of(groups[test_rows], frames[test_rows])
    test_values = values[:, split[rows] == "test"]
    test_continuous = continuous_outputs(rules, fitted, test_values, test_order)
    return TaskOutcome(
        task=rules.name,
        candidates=cands.names,
        blend=fitted,
        candidate_scores=candidate_scores,
        crossfit_score=rules.score(val_labels, crossfit[0]) if crossfit else float("nan"),
        crossfit_folds=crossfit[1] if crossfit else 0,
        val_details=rules.details(val_labels, val_outputs),
        val_labels=val_labels,
        val_outputs=val_outputs,
        test_rows=test_rows,
        test_continuous=test_continuous,
        test_outputs=rules.decide(test_continuous, fitted.post),
        n_val=len(val_rows),
        n_val_labelled=int(labelled.sum()),
        n_val_videos=len(np.unique(groups[val_rows])),
        filled=filled,
    )


def _per_video_outputs(
    rules: TaskRules, outcome: TaskOutcome, manifest: pd.DataFrame
) -> dict[str, np.ndarray]:
    """Outputs for frames 1..last of each test video, interpolated where a frame is unlisted."""
    sub = manifest.iloc[outcome.test_rows]
    out = {}
    for video, positions in sub.groupby("video", sort=False).indices.items():
        frames = sub["frame"].to_numpy(np.int64)[positions]
        every_frame = np.arange(1, frames.max() + 1)
        values = interpolate_at(frames, outcome.test_continuous[positions], every_frame)
        out[str(video)] = rules.decide(values, outcome.blend.post)
    return out


def write_submissions(
    manifest: pd.DataFrame,
    metadata: dict[str, Any],
    outcomes: dict[str, TaskOutcome],
    out_dir: Path,
    warnings: list[str],
) -> list[Path]:
    """Write the files the dataset's test list calls for; returns their paths."""
    test_list = metadata.get("test_list") or {}
    style = test_list.get("style") or ("mtl" if metadata.get("format") == "abaw-mtl" else None)
    if not outcomes or not len(next(iter(outcomes.values())).test_rows):
        warnings.append("the manifest has no test rows: no submission written")
        return []
    images = manifest["image"].to_numpy(str)
    written: list[Path] = []
    if style == "mtl":
        missing = [t for t in ("va", "expr", "au") if t not in outcomes]
        if missing:
            warnings.append(f"MTL submission needs all three tasks; missing {missing}")
            return []
        rows = outcomes["va"].test_rows
        written.append(
            submission.write_mtl(
                out_dir / submission.MTL_FILE_NAME,
                images[rows].tolist(),
                outcomes["va"].test_outputs,
                outcomes["expr"].test_outputs,
                outcomes["au"].test_outputs,
            )
        )
    elif style == "video-names":
        for task, outcome in outcomes.items():
            folder = out_dir / submission.TASK_FILE_NAMES[task]
            for video, outputs in _per_video_outputs(rules_for(task), outcome, manifest).items():
                written.append(submission.write_video_file(folder / f"{video}.txt", task, outputs))
    else:  # "frame-lines" or a dataset without a declared style: one file per task
        for task, outcome in outcomes.items():
            name = f"{submission.TASK_FILE_NAMES[task]}_predictions.txt"
            written.append(
                submission.write_task_file(
                    out_dir / name,
                    task,
                    images[outcome.test_rows].tolist(),
                    outcome.test_outputs,
                    test_list.get("header"),
                )
            )
    return written


def summarise(outcomes: dict[str, TaskOutcome]) -> tuple[dict, dict | None]:
    scores = {
        task: {
            "best_single": max(o.candidate_scores.values()),
            "tuned": o.final_score,
            "crossfit": o.crossfit_score,
        }
        for task, o in outcomes.items()
    }
    p_mtl = None
    if all(t in scores for t in ("va", "expr", "au")):
        p_mtl = {
            kind: mtl_score(scores["va"][kind], scores["expr"][kind], scores["au"][kind])
            for kind in ("best_single", "tuned", "crossfit")
        }
    return scores, p_mtl


def blend_json(
    outcomes: dict[str, TaskOutcome],
    scores: dict,
    p_mtl: dict | None,
    files: list[Path],
    options: BlendOptions,
    run: str,
    warnings: list[str],
) -> dict[str, Any]:
    tasks = {}
    for task, o in outcomes.items():
        rules = rules_for(task)
        tasks[task] = {
            "candidates": o.candidates,
            "candidate_scores": o.candidate_scores,
            **o.blend.to_json(o.candidates, rules),
            "stage_scores": o.blend.stage_scores,
            "crossfit_score": o.crossfit_score,
            "crossfit_folds": o.crossfit_folds,
            "validation": o.val_details,
            "data": {
                "tuned": (
                    f"validation: {o.n_val} rows ({o.n_val_labelled} labelled) in "
                    f"{o.n_val_videos} videos; tuned and scored on the same rows (optimistic)"
                ),
                "crossfit": (
                    f"validation, {o.crossfit_folds} folds of whole videos: every fold scored "
                    "by a blend tuned on the other folds, scores pooled over all rows"
                ),
            },
            "filled_rows": o.filled,
            "test_rows": len(o.test_rows),
        }
    return {
        "run": run,
        "package_version": __version__,
        "options": {
            "correction": options.correction,
            "smoothing": options.smoothing,
            "kernels": list(options.kernels),
            "max_steps": options.max_steps,
            "crossfit_folds": options.crossfit_folds,
            "seed": options.seed,
        },
        "tasks": tasks,
        "scores": scores,
        "p_mtl": p_mtl,
        "submission_files": [str(f) for f in files],
        "warnings": warnings,
    }


def random_init_note(paths: DatasetPaths) -> str | None:
    """A warning when some cached feature file was computed with random backbone weights."""
    import h5py

    from affectpipe.features import decode_attrs

    names = []
    for path in sorted(paths.features_dir.glob("*.h5")):
        try:
            with h5py.File(path, "r") as handle:
                attrs = decode_attrs(handle.attrs)
        except OSError:
            continue  # unreadable files are reported by the stages that read them
        if attrs.get("random_init"):
            names.append(str(attrs.get("backbone", path.stem)))
    if not names:
        return None
    return (
        f"RANDOM-INIT FEATURES ({', '.join(names)}): these backbones were built with random "
        "weights, not the pretrained models; their features are random projections and the "
        "scores say nothing about the real backbones."
    )


def run(
    paths: DatasetPaths,
    *,
    run: str = "default",
    out_dir: Path | None = None,
    tasks: Sequence[str] | None = None,
    progress: bool = True,
    options: BlendOptions | None = None,
    notes: Sequence[str] = (),
    report: bool = True,
    candidates: Sequence[str] | None = None,
) -> BlendResult:
    """Tune blends for the run's tasks on validation; write submissions, blend.json, report.

    Submission files go to `out_dir` (default `runs/<run>/blend/submission`); `notes` are
    shown prominently at the top of the report (e.g. that features come from random weights).
    `report=False` skips report.html (plots take a few seconds). `candidates` (``NAME`` or
    ``TASK/NAME``) picks prediction files by hand, from any heads invocation of the run.
    """
    options = options or BlendOptions()
    detected = random_init_note(paths)
    notes = [*notes, *([detected] if detected and not notes else [])]
    manifest = read_manifest(paths.manifest)
    metadata = read_manifest_metadata(paths.manifest)
    requested = bool(tasks)
    tasks = list(tasks) if tasks else available_tasks(paths, run)
    if not tasks:
        raise InputError(f"no predictions under {paths.run(run) / 'preds'}: run `pipeline heads`")
    groups = group_codes(manifest["split"].to_numpy(str), manifest["video"].to_numpy(str))
    warnings: list[str] = []
    blend_dir = paths.blend_dir(run)
    out_dir = Path(out_dir) if out_dir else blend_dir / "submission"
    with file_lock(paths.lock):
        outcomes = {}
        for task in tqdm(tasks, desc="blend", unit="task", disable=not progress):
            try:
                outcomes[task] = _tune_task(
                    rules_for(task), manifest, groups, paths, run, options, warnings, candidates
                )
            except NoValidationLabels as exc:
                if requested:
                    raise
                warnings.append(f"skipped: {exc}")
        if not outcomes:
            raise InputError("no task could be blended: " + "; ".join(warnings))
        files = write_submissions(manifest, metadata, outcomes, out_dir, warnings)
        scores, p_mtl = summarise(outcomes)
        document = blend_json(outcomes, scores, p_mtl, files, options, run, warnings)
        document["notes"] = list(notes)
        json_path = blend_dir / "blend.json"
        write_text_atomic(json_path, json.dumps(document, indent=2, allow_nan=True) + "\n")
        report_path = blend_dir / "report.html"
        if report:
            from affectpipe.blend.report import write_report  # matplotlib: only when needed

            write_report(report_path, outcomes, document, metadata, notes)
    for warning in warnings:
        log.warning(warning)
    return BlendResult(
        blend_dir,
        json_path,
        report_path if report else None,
        files,
        outcomes,
        scores,
        p_mtl,
        warnings,
    )

"""`blend.run`: tune every task of a run on validation, write submissions, blend.json, report.

A blend either delivers the submission the dataset's test list asks for or says what is
missing and why (`BlendResult.missing`; the CLI exits 1 unless `--partial`). Per task, the
cross-fitted blend competes with the cross-fitted best single candidate (the same tuning
restricted to one candidate); the submission uses the better one unless `prefer="blend"`.

Commit order, so that a killed blend never leaves a blend.json that describes other files
than the submission beside it: everything is tuned first (nothing written); then the
previous blend.json and report go, with the submission files it recorded (only those in
this output folder and unchanged since); the new submission files and the report are
written, and blend.json last, recording each file's sha256.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from affectpipe.blend.blend_record import (
    blend_json,
    feature_records,
    forget_previous,
    provenance,
    random_init_note,
    summarise,
)
from affectpipe.blend.candidate_outputs import available_tasks, load_candidates
from affectpipe.blend.interpolate import fill_missing
from affectpipe.blend.options import BlendOptions
from affectpipe.blend.smoothing import VideoOrder, group_codes
from affectpipe.blend.stage_registry import TOL, BlendInputs, blend_stages
from affectpipe.blend.submission_plan import plan_submissions, request_outputs
from affectpipe.blend.task_rules import TaskRules, rules_for
from affectpipe.blend.tuning import (
    TaskBlend,
    apply_tuned,
    take_inputs,
    tune_variants,
)
from affectpipe.config import BLEND_PREFER, DEFAULT_MAX_FILLED, DatasetPaths
from affectpipe.data.summary import no_validation_message
from affectpipe.errors import InputError, NoValidationError
from affectpipe.fsutil import file_lock, sha256_file, write_text_atomic
from affectpipe.manifest import listed_test_rows, read_manifest, read_manifest_metadata
from affectpipe.schema import TASKS
from affectpipe.submission import get_style, requested_submissions

log = logging.getLogger(__name__)


class NoValidationLabels(NoValidationError):
    """A task has predictions but no validation label to tune its blend on."""


@dataclass(frozen=True)
class FillCounts:
    """How the listed test rows of a task got their values from the candidates used."""

    listed: int
    interpolated: int  # rows with an image but no prediction: from neighbouring frames
    imageless: int  # rows without an image file, interpolated from neighbouring frames
    prior: int  # rows of a video without any prediction: the training prior

    def unpredicted(self, lists_imageless_frames: bool) -> int:
        """Rows without a real prediction; per-task lists ask for frames without an image,
        so filling those is expected there (abaw-formats.md §3.5)."""
        expected = self.imageless if lists_imageless_frames else 0
        return self.interpolated + self.imageless + self.prior - expected

    def to_json(self) -> dict[str, int]:
        return {
            "listed": self.listed,
            "interpolated": self.interpolated,
            "imageless_interpolated": self.imageless,
            "prior": self.prior,
        }


@dataclass
class TaskOutcome:
    """One task's tuned blend (or single candidate), its validation scores and test outputs."""

    task: str
    candidates: list[str]
    blend: TaskBlend  # the one the submission uses (see `choice`)
    choice: str  # "blend" or "single"
    choice_note: str
    alternatives: dict[str, dict[str, float]]  # "blend"/"single" -> {"tuned", "crossfit"}
    candidate_scores: dict[str, float]
    crossfit_score: float
    crossfit_folds: int
    val_details: dict[str, Any]
    crossfit_details: dict[str, Any] | None
    support: dict[str, dict[str, int]]  # "train"/"val" -> {class or AU or dimension: count}
    val_labels: np.ndarray
    val_outputs: np.ndarray
    test_rows: np.ndarray  # manifest rows, in manifest (= list) order
    test_continuous: np.ndarray
    test_outputs: np.ndarray
    n_val: int
    n_val_labelled: int
    n_val_videos: int
    fill: FillCounts
    filled: dict[str, int] = field(default_factory=dict)  # over val and test, all candidates
    # Candidates' (filled) validation values [M, n_val, K] with each row's video and frame,
    # for the report's per-video time series.
    val_candidates: np.ndarray | None = None
    val_videos: np.ndarray | None = None
    val_frames: np.ndarray | None = None

    def present_class_line(self) -> str | None:
        """The score over the classes / AUs present in the validation labels, labelled, when
        some are absent (ABAW's metric, the one tuned, counts an absent one as 0)."""
        rules = rules_for(self.task)
        key = rules.present_metric
        support = self.support["val"]
        present = sum(1 for count in support.values() if count)
        if key is None or present == len(support):
            return None
        crossfit = (self.crossfit_details or {}).get(key, float("nan"))
        return (
            f"{self.task}: present-class macro F1 over the {present} of {len(support)} "
            f"{rules.items} with validation labels: tuned "
            f"{self.val_details[key]:.4f}, cross-fitted {crossfit:.4f} (the ABAW metric above, "
            "tuned and submitted, averages all of them)"
        )

    @property
    def final_score(self) -> float:
        return self.blend.final_score


@dataclass
class BlendResult:
    blend_dir: Path
    blend_json: Path
    report: Path | None
    submission_files: list[Path]
    outcomes: dict[str, TaskOutcome]
    scores: dict[str, dict[str, float]]  # task -> {"tuned", "crossfit", "best_single", ...}
    p_mtl: dict[str, float] | None
    warnings: list[str]
    requested: list[str] = field(default_factory=list)  # submission names the test list asks
    missing: dict[str, str] = field(default_factory=dict)  # requested name -> why not written
    choices: list[str] = field(default_factory=list)  # per task: blend or single, and why
    # Wall seconds by stage: load, fit <task> (tuning and cross-fit), apply, provenance, write
    # submission, report; and within "fit <task>", "tune <task>" and "crossfit <task>" (the
    # full fit's and the folds' seconds, summed over the worker processes when there are several).
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.missing

    def shortfall(self, partial: bool = False) -> str | None:
        """Why the run did not deliver (the CLI exits 1 with it), or None when it did.

        With `partial`, per-task output is accepted as long as some submission file exists.
        """
        if not self.missing or (partial and self.submission_files):
            return None
        lines = [f"  {name}: {why}" for name, why in self.missing.items()]
        written = ", ".join(p.name for p in self.submission_files[:5]) or "none"
        hint = " (--partial accepts them)" if self.submission_files else ""
        return (
            "the submission the test list asks for was not written:\n"
            + "\n".join(lines)
            + f"\nwritten instead: {written}{hint}"
        )


def _choose(
    rules: TaskRules,
    fits: dict[str, tuple[TaskBlend, float]],
    names: list[str],
    prefer: str,
) -> tuple[str, str]:
    """'blend' or 'single', and a sentence saying which and why."""
    (_, blend_score), (single_fit, single_score) = fits["blend"], fits["single"]
    task = rules.name
    if not np.isfinite(blend_score):
        return "blend", f"{task}: no cross-fit (too few labelled validation videos): blend used"
    picked = ", ".join(
        f"{group.name}: {names[int(np.argmax(row))]}"
        if len(rules.groups) > 1
        else names[int(np.argmax(row))]
        for group, row in zip(rules.groups, single_fit.weights, strict=True)
    )
    # The blend's weights are a stage like the others: kept only when they raise the
    # cross-fitted score over the best single candidate (a tie shows no gain).
    if blend_score <= single_score + TOL:
        loss = (
            f"{task}: the cross-fitted blend ({blend_score:.4f}) does not score above the "
            f"cross-fitted best single candidate ({single_score:.4f})"
        )
        if prefer == "blend":
            return "blend", f"{loss}; the blend is used as --prefer blend asks"
        return "single", f"{loss}: the submission uses {picked} (--prefer blend to override)"
    return "blend", (
        f"{task}: blend used: cross-fitted {blend_score:.4f} vs {single_score:.4f} for the best "
        "single candidate"
    )


def _test_fill(
    reports: list, used: np.ndarray, is_test: np.ndarray, has_image: np.ndarray
) -> FillCounts:
    """Fill counts of the test rows over the candidates the chosen blend uses."""
    prior = np.any([r.prior[is_test] for r, u in zip(reports, used, strict=True) if u], axis=0)
    interpolated = np.any(
        [r.interpolated[is_test] for r, u in zip(reports, used, strict=True) if u], axis=0
    )
    interpolated &= ~prior
    return FillCounts(
        listed=int(is_test.sum()),
        interpolated=int((interpolated & has_image).sum()),
        imageless=int((interpolated & ~has_image).sum()),
        prior=int(prior.sum()),
    )


def _text(column: pd.Series) -> np.ndarray:
    """A string column as a numpy str array, converting each distinct value once."""
    codes, uniques = pd.factorize(column)
    return np.asarray(uniques, dtype=str)[codes]


def _group_codes(manifest: pd.DataFrame) -> np.ndarray:
    """Code of each row's video within its split (smoothing and filling never cross it)."""
    return group_codes(manifest["split"], manifest["video"])


Fits = Callable[[], tuple[dict[str, Any], float]]  # a task's fits: (their result, wall seconds)


def _tune_task(
    rules: TaskRules,
    manifest: pd.DataFrame,
    metadata: dict[str, Any],
    columns: tuple[np.ndarray, np.ndarray, np.ndarray],
    paths: DatasetPaths,
    run: str,
    options: BlendOptions,
    warnings: list[str],
    candidates: Sequence[str] | None = None,
    seconds: dict[str, float] | None = None,
) -> Generator[Fits, tuple[dict[str, Any], float], TaskOutcome]:
    """One task in two steps, so that its fits can run beside other tasks' work
    (`_tune_tasks`): the first `next` loads the task and yields its fits (a callable
    returning their result and wall seconds); `send` that back and it finishes the task,
    returning the outcome.

    `columns`: the manifest's split (text), frame and group (video within split) per row.
    `seconds` gets the stages' wall times added ("load", "fit <task>" with its "tune <task>"
    and "crossfit <task>" parts, "apply")."""
    seconds = {} if seconds is None else seconds
    start = time.perf_counter()
    split, frames, groups = columns
    labels_all = rules.labels(manifest)
    prior = rules.prior(labels_all[split == "train"])
    # Validation rows and this task's test-list rows (per-task lists share one manifest).
    wanted = split == "val"
    wanted[listed_test_rows(manifest, metadata, rules.name)] = True
    cands = load_candidates(paths, run, rules.name, manifest, candidates, np.flatnonzero(wanted))
    rows, values = cands.rows, cands.values
    reports, filled = [], {"interpolated": 0, "prior_rows": 0}
    for m, name in enumerate(cands.names):
        values[m], report = fill_missing(values[m], groups[rows], frames[rows], prior)
        reports.append(report)
        filled["interpolated"] += report.filled_rows
        filled["prior_rows"] += report.prior_rows
        if report.prior_groups:
            warnings.append(
                f"{rules.name}/{name}: {report.prior_groups} video(s) without any prediction "
                f"got the train prior ({report.prior_rows} rows)"
            )
    is_val, is_test = split[rows] == "val", split[rows] == "test"
    val_rows, test_rows = rows[is_val], rows[is_test]
    val_labels = labels_all[val_rows]
    labelled = rules.labelled(val_labels)
    if not labelled.any():
        raise NoValidationLabels(
            f"task {rules.name}: no labelled validation rows to tune the blend on"
        )
    val_values = values[:, is_val]
    val_order = VideoOrder.of(groups[val_rows], frames[val_rows])
    # The later stages' inputs on the blend's rows (a stage switched off reads nothing).
    on_rows = BlendInputs(paths, manifest, rows, prior)
    inputs = {
        stage.name: stage.inputs(on_rows) for stage in blend_stages(rules) if options.runs(stage)
    }
    val_inputs, test_inputs = take_inputs(inputs, is_val), take_inputs(inputs, is_test)
    seconds["load"] = seconds.get("load", 0.0) + time.perf_counter() - start
    fit_seconds: dict[str, float] = {}

    def fits() -> tuple[dict[str, Any], float]:
        begin = time.perf_counter()
        tuned = tune_variants(
            rules,
            val_values,
            val_labels,
            groups[val_rows],
            frames[val_rows],
            # The best single candidate: the same tuning, greedy selection stopping at one.
            {"blend": options, "single": replace(options, max_steps=1)},
            val_inputs,
            seconds=fit_seconds,
        )
        return tuned, time.perf_counter() - begin

    # tuning and cross-fit, wall (they may run beside other tasks' loading and applying)
    tuned, seconds[f"fit {rules.name}"] = yield fits
    for stage, spent in fit_seconds.items():  # within it, per fit (summed over workers)
        seconds[f"{stage} {rules.name}"] = spent
    start = time.perf_counter()
    crossfit_scores = {
        kind: rules.score(val_labels, cf[0]) if cf else float("nan")
        for kind, (_, cf) in tuned.items()
    }
    choice, note = _choose(
        rules,
        {kind: (fit, crossfit_scores[kind]) for kind, (fit, _) in tuned.items()},
        cands.names,
        options.prefer,
    )
    fitted, crossfit = tuned[choice]
    identity = rules.identity_post()
    candidate_scores = {
        name: rules.score(val_labels[labelled], rules.decide(v[labelled], identity))
        for name, v in zip(cands.names, val_values, strict=True)
    }
    _, val_outputs = apply_tuned(rules, fitted, val_values, val_order, val_inputs)
    test_order = VideoOrder.of(groups[test_rows], frames[test_rows])
    test_continuous, test_outputs = apply_tuned(
        rules, fitted, values[:, is_test], test_order, test_inputs
    )
    used = (fitted.weights > 0).any(axis=0)
    has_image = manifest["has_image"].to_numpy(bool)[test_rows]
    outcome = TaskOutcome(
        task=rules.name,
        candidates=cands.names,
        blend=fitted,
        choice=choice,
        choice_note=note,
        alternatives={
            kind: {"tuned": fit.final_score, "crossfit": crossfit_scores[kind]}
            for kind, (fit, _) in tuned.items()
        },
        candidate_scores=candidate_scores,
        crossfit_score=crossfit_scores[choice],
        crossfit_folds=crossfit[1] if crossfit else 0,
        val_details=rules.details(val_labels, val_outputs),
        crossfit_details=rules.details(val_labels, crossfit[0]) if crossfit else None,
        support={
            "train": rules.support(labels_all[split == "train"]),
            "val": rules.support(val_labels),
        },
        val_labels=val_labels,
        val_outputs=val_outputs,
        test_rows=test_rows,
        test_continuous=test_continuous,
        test_outputs=test_outputs,
        n_val=len(val_rows),
        n_val_labelled=int(labelled.sum()),
        n_val_videos=len(np.unique(groups[val_rows])),
        fill=_test_fill(reports, used, is_test, has_image),
        filled=filled,
        val_candidates=val_values,
        val_videos=groups[val_rows],
        val_frames=frames[val_rows],
    )
    seconds["apply"] = seconds.get("apply", 0.0) + time.perf_counter() - start
    return outcome


def _tune_tasks(
    steps: dict[str, Generator],
    skip: Callable[[str, NoValidationLabels], None],
    progress: bool,
    seconds: dict[str, float],
) -> dict[str, TaskOutcome]:
    """Run `_tune_task`s, each task's fits (which keep the worker processes busy) beside the
    main thread loading the next task and finishing the previous one. One thread runs the
    fits, one task's at a time. A task without validation labels goes to `skip`. `seconds`
    gets "waiting for fits": the wall time the main thread had nothing else to do."""
    outcomes: dict[str, TaskOutcome] = {}

    def finish(step: Generator, fits: Future) -> TaskOutcome:
        start = time.perf_counter()
        fitted = fits.result()
        seconds["waiting for fits"] = seconds.get("waiting for fits", 0.0) + (
            time.perf_counter() - start
        )
        bar.update()
        try:
            step.send(fitted)
        except StopIteration as done:
            return done.value
        raise RuntimeError("_tune_task yielded twice")

    runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blend-fits")
    bar = tqdm(total=len(steps), desc="blend", unit="task", disable=not progress)
    previous = None
    try:
        for task, step in steps.items():
            try:
                fits = next(step)  # loads the task
            except NoValidationLabels as exc:
                skip(task, exc)
                bar.update()
                continue
            current = (task, step, runner.submit(fits))
            if previous is not None:
                outcomes[previous[0]] = finish(*previous[1:])
            previous = current
        if previous is not None:
            outcomes[previous[0]] = finish(*previous[1:])
    finally:
        runner.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return dict(sorted(outcomes.items(), key=lambda item: list(steps).index(item[0])))


def _reasons_for_unblended(
    requested_tasks: set[str],
    blended: Sequence[str],
    explicit: bool,
    skipped: dict[str, str],
    paths: DatasetPaths,
    run: str,
) -> dict[str, str]:
    reasons = dict(skipped)
    for task in sorted(requested_tasks - set(blended) - set(skipped)):
        if explicit:
            reasons[task] = "not blended (only --task " + " --task ".join(blended) + " asked)"
        else:
            reasons[task] = (
                f"no predictions under {paths.run(run) / 'preds' / task} (`pipeline heads` "
                f"trained no {task} candidate: no {task} labels or no usable features)"
            )
    return reasons


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
    max_filled: float = DEFAULT_MAX_FILLED,
    candidates: Sequence[str] | None = None,
) -> BlendResult:
    """Tune blends for the run's tasks on validation; write submissions, blend.json, report.

    Submission files go to `out_dir` (default `runs/<run>/blend/submission`); `notes` are
    shown prominently at the top of the report (e.g. that features come from random weights).
    `report=False` skips report.html (plots take a few seconds). A requested submission
    that cannot be written (a task without predictions or validation labels, or more than
    `max_filled` of its listed test rows without a real prediction) is named with the
    reason in `BlendResult.missing`; the per-task files of the other tasks are written.
    `candidates` (``NAME`` or ``TASK/NAME``) picks prediction files by hand, from any heads
    invocation of the run.
    """
    from affectpipe.heads.fitted import refuse_pickles

    start = time.perf_counter()
    refuse_pickles(paths.run(run))
    options = options or BlendOptions()
    if options.prefer not in BLEND_PREFER:
        raise InputError(f"prefer must be one of {BLEND_PREFER}, not {options.prefer!r}")
    features = feature_records(paths)
    detected = random_init_note(features)
    notes = [*notes, *([detected] if detected and not notes else [])]
    manifest = read_manifest(paths.manifest)
    metadata = read_manifest_metadata(paths.manifest)
    if not (manifest["split"] == "val").any():
        raise NoValidationError(no_validation_message(metadata))
    explicit = bool(tasks)
    tasks = list(tasks) if tasks else available_tasks(paths, run)
    if not tasks:
        raise InputError(f"no predictions under {paths.run(run) / 'preds'}: run `pipeline heads`")
    split = _text(manifest["split"])
    columns = (split, manifest["frame"].to_numpy(np.int64), _group_codes(manifest))
    seconds = {"load": time.perf_counter() - start}
    warnings: list[str] = []
    skipped: dict[str, str] = {}
    blend_dir = paths.blend_dir(run)
    out_dir = Path(out_dir) if out_dir else blend_dir / "submission"
    with file_lock(paths.lock):

        def skip(task: str, exc: NoValidationLabels) -> None:
            if explicit:
                raise exc
            warnings.append(f"skipped: {exc}")
            skipped[task] = str(exc)

        steps = {
            task: _tune_task(
                rules_for(task),
                manifest,
                metadata,
                columns,
                paths,
                run,
                options,
                warnings,
                candidates,
                seconds,
            )
            for task in tasks
        }
        outcomes = _tune_tasks(steps, skip, progress, seconds)
        if not outcomes:
            raise InputError("no task could be blended: " + "; ".join(warnings))
        train = manifest[split == "train"]
        labelled_tasks = [
            task for task in TASKS if rules_for(task).labelled(rules_for(task).labels(train)).any()
        ]
        requests = requested_submissions(manifest, metadata, labelled_tasks)
        reasons = _reasons_for_unblended(
            {t for r in requests for t in r.tasks}, list(outcomes), explicit, skipped, paths, run
        )
        writes, missing = plan_submissions(requests, outcomes, reasons, max_filled)
        if not requests:
            warnings.append("the manifest has no test rows: no submission asked for or written")
        scores, p_mtl = summarise(outcomes)
        document = blend_json(outcomes, scores, p_mtl, options, run, warnings)
        document["notes"] = list(notes)
        start = time.perf_counter()
        document["provenance"] = provenance(paths, run, metadata, outcomes, features)
        seconds["provenance"] = time.perf_counter() - start  # sha256 of every input file
        json_path = blend_dir / "blend.json"
        report_path = blend_dir / "report.html"
        forget_previous(json_path, report_path, out_dir)
        start = time.perf_counter()
        images = manifest["image"].to_numpy(object)
        files = [
            path
            for request in writes
            for path in get_style(request.style).write(
                out_dir, request, images, request_outputs(request, outcomes, manifest)
            )
        ]
        document["submission"] = {
            "requested": [r.name for r in requests],
            "written": [r.name for r in writes],
            "missing": missing,
            "complete": not missing,
            "max_filled": max_filled,
        }
        document["submission_files"] = [
            {"path": str(path), "sha256": sha256_file(path)} for path in files
        ]
        seconds["write submission"] = time.perf_counter() - start
        if report:
            from affectpipe.blend.report import write_report  # matplotlib: only when needed

            start = time.perf_counter()
            write_report(report_path, outcomes, document, metadata, notes)
            seconds["report"] = time.perf_counter() - start
        document["stage_seconds"] = seconds  # wall; blend.json's own writing not included
        write_text_atomic(json_path, json.dumps(document, indent=2, allow_nan=True) + "\n")
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
        requested=[r.name for r in requests],
        missing=missing,
        choices=[o.choice_note for o in outcomes.values()],
        stage_seconds=seconds,
    )

"""`heads.train`: fit every candidate, write heads, predictions and the metrics table.

Candidates sharing a feature set share its loading and its scaler, so a feature set is
read, gathered and projected once per run. Each candidate: fit on the train rows that have
ok features and a valid label for its task (MLP and LightGBM early-stop on ~10 % of the
train videos, held out: the val split stays unseen, its score honest), predict every val
and test row (NaN where the features are not ok), score on val. With
``folds=K`` the train and val rows get out-of-fold predictions instead, from K refits on
train+val grouped by video, so a blend can be tuned on honest predictions.

Fits run on one thread each; the candidates of a feature set are spread over worker
processes (``[heads] workers``, default one per usable core) when the data is large enough
to pay for starting them. Results are identical either way.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.model_selection import GroupKFold
from tqdm.auto import tqdm

from affectpipe import __version__, predictions
from affectpipe.config import DEFAULT_RUN, DatasetPaths
from affectpipe.errors import InputError
from affectpipe.fsutil import file_lock, write_text_atomic
from affectpipe.heads.candidates import Candidate, load_config, select_candidates
from affectpipe.heads.featuresets import LoadedFeatures, available_backbones, load_feature_set
from affectpipe.heads.fitted import FittedHead
from affectpipe.heads.models import MODELS, make_model
from affectpipe.heads.preprocess import FeatureScaler
from affectpipe.heads.tasks import TASK_DEFS, get_task
from affectpipe.heads.temporal import fit_temporal_candidate, sequence_groups
from affectpipe.manifest import read_manifest
from affectpipe.schema import TASKS

SCALER_SAMPLE_ROWS = 20000  # train rows the scaler / PCA is estimated on
CHUNK_ROWS = 16384
PARALLEL_MIN_VALUES = 1 << 22  # scaled feature values (rows x columns) worth worker processes
EARLY_STOPPING_SHARE = 0.1  # share of train videos held out to early-stop MLP / LightGBM fits
EARLY_STOPPING_MIN_ROWS = 1000  # fewer train rows: too few held out to early-stop on (noise)


@dataclass
class CandidateResult:
    task: str
    candidate: str
    features: str
    model: str
    scores: dict[str, float]
    fit_seconds: float
    cpu_seconds: float  # process CPU time of the fit, all threads (robust to a busy machine)
    n_train: int
    n_val: int
    head_path: str
    preds_path: str
    oof_scores: dict[str, float] | None = None


@dataclass
class HeadsResult:
    run: str
    results: list[CandidateResult]
    seconds: float
    metrics_path: Path
    stage_seconds: dict[str, float]  # load (read + gather), scale (fit + transform), fit, write
    skipped: dict[str, str] = field(default_factory=dict)  # task -> why it was not trained
    skipped_candidates: dict[str, str] = field(default_factory=dict)  # "task/name" -> why
    record_path: Path | None = None  # runs/<run>/heads/run.json
    invocation: str = ""
    notes: list[str] = field(default_factory=list)  # e.g. fewer components than configured

    def table(self) -> str:
        return format_table(self.results)

    def skipped_lines(self) -> list[str]:
        """One line per skipped task or candidate, with the reason."""
        return (
            [f"skipped task {task}: {why}" for task, why in self.skipped.items()]
            + [f"skipped candidate {name}: {why}" for name, why in self.skipped_candidates.items()]
            + [f"note: {note}" for note in self.notes]
        )


def format_table(results: Sequence[CandidateResult]) -> str:
    """One line per candidate: its validation metrics and fit time."""
    lines = [
        f"{'task':<5} {'candidate':<48} {'P_VA':>6} {'CCC_V':>6} {'CCC_A':>6} "
        f"{'P_EXPR':>6} {'P_AU':>6} {'n_train':>8} {'fit_s':>6}"
    ]
    for r in results:
        cells = [r.scores.get(k) for k in ("p_va", "ccc_valence", "ccc_arousal", "p_expr", "p_au")]
        text = " ".join(f"{v:6.3f}" if v is not None else f"{'':6}" for v in cells)
        lines.append(f"{r.task:<5} {r.candidate:<48} {text} {r.n_train:8d} {r.fit_seconds:6.2f}")
    return "\n".join(lines)


def scale_features(
    loaded: LoadedFeatures, fit_rows: np.ndarray, n_components: int
) -> tuple[np.ndarray, FeatureScaler]:
    """Fit the scaler on (evenly spaced) train rows; transform every ok row, in chunks.

    Returns Z [n_rows, width out] (zeros for rows that are not ok) and the scaler.
    """
    sample = fit_rows[:: max(1, len(fit_rows) // SCALER_SAMPLE_ROWS)]
    scaler = FeatureScaler(n_components=n_components).fit(loaded.take(sample))
    Z = np.zeros((len(loaded.ok), scaler.n_features_out), dtype=np.float32)
    ok_rows = np.flatnonzero(loaded.ok)
    for start in range(0, len(ok_rows), CHUNK_ROWS):
        chunk = ok_rows[start : start + CHUNK_ROWS]
        Z[chunk] = scaler.transform(loaded.take(chunk))
    return Z, scaler


def label_rows(manifest: pd.DataFrame, task: str, strict: bool) -> tuple[np.ndarray, np.ndarray]:
    """(labels, rows usable for `task`); strict keeps only rows valid for all three tasks."""
    spec = get_task(task)
    y = spec.targets(manifest)
    valid = spec.valid_rows(y)
    if strict:
        for other in TASKS:
            other_spec = TASK_DEFS[other]
            valid &= other_spec.valid_rows(other_spec.targets(manifest))
            if other == "au":  # strict also means all 12 AUs labelled
                valid &= (other_spec.targets(manifest) >= 0).all(axis=1)
    return y, valid


@dataclass(frozen=True)
class Rows:
    """The manifest as the fits need it: numpy arrays only, cheap to send to worker processes."""

    split: np.ndarray  # "train" / "val" / "test" per row
    video: np.ndarray  # integer video code per row
    labels: dict[str, tuple[np.ndarray, np.ndarray]]  # task -> (labels, valid rows)
    frame: np.ndarray  # frame number per row (sequence heads)

    @classmethod
    def of(cls, manifest: pd.DataFrame, tasks: Sequence[str], strict: bool) -> Rows:
        return cls(
            split=manifest["split"].to_numpy(dtype="U5"),
            video=pd.factorize(manifest["video"])[0].astype(np.int64),
            labels={task: label_rows(manifest, task, strict) for task in tasks},
            frame=manifest["frame"].to_numpy(dtype=np.int64),
        )


def fit_candidate(
    candidate: Candidate,
    Z: np.ndarray,
    ok: np.ndarray,
    rows: Rows,
    seed: int,
    seeds: int,
    folds: int,
) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """Fit one candidate on scaled features Z; returns the model, outputs for every row (NaN
    where none) and info (scores, timings, row counts). Runs in a worker process as well."""
    task = get_task(candidate.task)
    y, valid = rows.labels[candidate.task]
    if getattr(MODELS[candidate.model], "sequence_input", False):
        model = make_model(candidate.model, candidate.task, candidate.params, 1, seed)
        groups = sequence_groups(rows.split, rows.video)
        return fit_temporal_candidate(
            model, candidate.task, Z, ok, rows.split, groups, rows.frame, y, folds
        )
    usable = valid & ok
    train_rows = np.flatnonzero(usable & (rows.split == "train"))
    val_rows = np.flatnonzero(usable & (rows.split == "val"))
    if len(train_rows) < 2:
        raise InputError(f"{candidate}: fewer than 2 train rows with ok features and a label")
    model = make_model(candidate.model, candidate.task, candidate.params, seeds, seed)
    fit_rows, stop_rows = train_rows, train_rows[:0]
    if getattr(model, "stops_early", False):
        fit_rows, stop_rows = early_stopping_split(train_rows, rows.video, seed)
    eval_set = (Z[stop_rows], y[stop_rows]) if len(stop_rows) else None
    start, cpu_start = time.perf_counter(), time.process_time()
    model.fit(Z[fit_rows], y[fit_rows], eval_set=eval_set)
    fit_seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    outputs = np.full((len(ok), task.n_outputs), np.nan, dtype=np.float32)
    predict_rows = np.flatnonzero(ok & np.isin(rows.split, ("val", "test")))
    outputs[predict_rows] = model.predict_outputs(Z[predict_rows])
    info: dict[str, Any] = {
        "fit_seconds": fit_seconds,
        "cpu_seconds": cpu_seconds,
        "n_train": len(train_rows),
        "n_val": len(val_rows),
        "scores": task.score(y[val_rows], outputs[val_rows]) if len(val_rows) else {},
    }
    if folds:
        start, cpu_start = time.perf_counter(), time.process_time()
        _cross_fit(model, Z, y, usable, ok, rows, folds, outputs)
        info["fit_seconds"] += time.perf_counter() - start
        info["cpu_seconds"] += time.process_time() - cpu_start
        info["oof_scores"] = task.score(y[val_rows], outputs[val_rows]) if len(val_rows) else {}
    return model, outputs, info


def early_stopping_split(
    train_rows: np.ndarray, video: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, early-stopping rows): about EARLY_STOPPING_SHARE of the train videos held out,
    so that the validation split stays unseen and its score honest. Too little data (under
    EARLY_STOPPING_MIN_ROWS train rows, or one video): no early stopping."""
    videos = np.unique(video[train_rows])
    if len(train_rows) < EARLY_STOPPING_MIN_ROWS or len(videos) < 2:
        return train_rows, train_rows[:0]
    rng = np.random.default_rng(seed)
    n_held = max(1, round(EARLY_STOPPING_SHARE * len(videos)))
    held = np.isin(video[train_rows], rng.choice(videos, n_held, replace=False))
    if held.all() or not held.any():
        return train_rows, train_rows[:0]
    return train_rows[~held], train_rows[held]


def _cross_fit(
    model: Any,
    Z: np.ndarray,
    y: np.ndarray,
    usable: np.ndarray,
    ok: np.ndarray,
    rows: Rows,
    folds: int,
    outputs: np.ndarray,
) -> None:
    """Overwrite `outputs` of train+val rows with out-of-fold predictions (folds by video)."""
    pool = np.flatnonzero(ok & np.isin(rows.split, ("train", "val")))
    videos = rows.video[pool]
    if len(np.unique(videos)) < folds:
        raise InputError(f"--folds {folds}: only {len(np.unique(videos))} videos in train+val")
    refit = getattr(model, "refit_params", dict)()
    for fit_idx, held_idx in GroupKFold(n_splits=folds).split(pool, groups=videos):
        fit_rows = pool[fit_idx][usable[pool[fit_idx]]]
        held_rows = pool[held_idx]
        fold_model = clone(model).set_params(**refit)
        fold_model.fit(Z[fit_rows], y[fit_rows])
        outputs[held_rows] = fold_model.predict_outputs(Z[held_rows])


def fit_all(
    jobs: Sequence[tuple[Candidate, np.ndarray, np.ndarray]],
    rows: Rows,
    *,
    seed: int,
    seeds: int,
    folds: int,
    n_jobs: int,
) -> Iterator[tuple[Any, np.ndarray, dict[str, Any]]]:
    """Fit (candidate, Z, ok) jobs, in order; with n_jobs > 1 in that many processes (each Z is
    memory-mapped once, not copied). Each fit uses one thread, so processes are what puts the
    cores to use."""
    if n_jobs <= 1:
        return (fit_candidate(c, Z, ok, rows, seed, seeds, folds) for c, Z, ok in jobs)
    tasks = (delayed(fit_candidate)(c, Z, ok, rows, seed, seeds, folds) for c, Z, ok in jobs)
    return Parallel(n_jobs=n_jobs, backend="loky", return_as="generator")(tasks)


def worker_count(workers: int, n_candidates: int, largest: int) -> int:
    """Processes for the fits of `n_candidates` whose largest scaled feature set holds `largest`
    values: small problems stay in this process (starting workers, ~2 s of imports each, would
    cost more than it saves)."""
    if n_candidates == 1 or largest < PARALLEL_MIN_VALUES:
        return 1
    return max(1, min(workers, n_candidates))


def _warm_up() -> None:
    """Tiny fits in a fresh worker: a process's first torch backward and optimizer step import
    ~1 s of modules, paid here while the main process still loads and scales features."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 2)).astype(np.float32)
    y = np.arange(64) % get_task("expr").n_outputs
    for model, params in (("linear", {}), ("mlp", {"max_epochs": 1})):
        make_model(model, "expr", params).fit(X, y)


def _fit_cost_rank(candidate: Candidate) -> tuple[int, bool]:
    """Sort key, slowest fits first (so no core idles at the end waiting on a long fit): trees,
    then MLPs, then L-BFGS linear heads; a VA linear head is a closed-form ridge."""
    return ({"lightgbm": 0, "mlp": 1}.get(candidate.model, 2), candidate.task == "va")


def _preds_frame(manifest: pd.DataFrame, folds: int) -> pd.DataFrame:
    """The row / image / split columns every prediction file of a run shares: val and test
    rows, plus train rows when cross-fitting. Built once per run (gathering the image strings
    took half of each file's write time)."""
    split = manifest["split"].to_numpy(dtype=object)
    keep = np.isin(split, ("val", "test"))
    if folds:
        keep |= split == "train"
    rows = np.flatnonzero(keep)
    return pd.DataFrame(
        {
            "row": rows.astype(np.int64),
            "image": manifest["image"].to_numpy()[rows],
            "split": manifest["split"].to_numpy()[rows],
        }
    )


def _merge_metrics(path: Path, results: Sequence[CandidateResult], run: str) -> None:
    """Update metrics.json: this run's candidates replace their earlier entries."""
    entries: list[dict] = []
    if path.exists():
        try:
            entries = json.loads(path.read_text())["candidates"]
        except (ValueError, KeyError):
            entries = []  # unreadable: rewritten from this run's results
    fresh = {(r.task, r.candidate) for r in results}
    entries = [e for e in entries if (e["task"], e["candidate"]) not in fresh]
    entries += [asdict(r) for r in results]
    entries.sort(key=lambda e: (TASKS.index(e["task"]), e["candidate"]))
    payload = {"run": run, "package_version": __version__, "candidates": entries}
    write_text_atomic(path, json.dumps(payload, indent=2, allow_nan=True) + "\n")


def trainable_tasks(
    rows: Rows, requested: Sequence[str] | None, strict: bool
) -> tuple[list[str], dict[str, str]]:
    """Tasks with labelled train rows, and the reason each other task is skipped.

    A task asked for by name (`requested`) that has no labels is an InputError: the user
    asked for something the data cannot give.
    """
    tasks, skipped = [], {}
    train_split = rows.split == "train"
    for name in requested or TASKS:
        n_labelled = int((rows.labels[name][1] & train_split).sum())
        if n_labelled >= 2:
            tasks.append(name)
            continue
        reason = "no labelled train rows" if n_labelled == 0 else "only 1 labelled train row"
        if strict:
            reason += " with all three tasks labelled (--strict-labels)"
        if requested:
            raise InputError(f"--task {name}: {reason} in the manifest, nothing to train")
        skipped[name] = reason
    if not tasks:
        raise InputError(
            "nothing to train: "
            + "; ".join(f"{task}: {reason}" for task, reason in skipped.items())
        )
    return tasks, skipped


def train(
    paths: DatasetPaths,
    *,
    run: str = DEFAULT_RUN,
    tasks: Sequence[str] | None = None,
    candidates: Sequence[str] | None = None,
    config_path: Path | None = None,
    folds: int = 0,
    seeds: int = 1,
    strict_labels: bool = False,
    progress: bool = True,
) -> HeadsResult:
    """Train the selected candidates on cached features; write heads, preds, metrics.json and,
    last, the run record (`affectpipe.predictions`).

    Every task with labelled train rows is trained (all three unless `tasks` names some);
    the others, and candidates without two usable train rows, are skipped with the reason
    (in the result and the run record).
    """
    if folds == 1 or folds < 0:
        raise InputError("--folds must be 0 (off) or at least 2")
    if seeds < 1:
        raise InputError("--seeds must be at least 1")
    for task in tasks or ():
        get_task(task)
    start = time.perf_counter()
    manifest = read_manifest(paths.manifest)
    config = load_config(config_path)
    rows = Rows.of(manifest, TASKS, strict_labels)
    task_names, skipped = trainable_tasks(rows, list(tasks) if tasks else None, strict_labels)
    problems: list[str] = []
    backbones = available_backbones(paths, problems)
    chosen = select_candidates(
        config,
        backbones,
        task_names,
        list(candidates or []),
        features_dir=paths.features_dir,
        problems=problems,
    )
    explained = dict(skipped)
    for task in task_names:
        if not any(c.task == task for c in chosen):
            explained[task] = "no candidate for it in the config"
    groups: dict[str, list[int]] = {}  # feature set -> indices of its candidates in `chosen`
    for i, candidate in enumerate(chosen):
        groups.setdefault(candidate.features.spec, []).append(i)
    workers = config.workers or len(os.sched_getaffinity(0))
    stages = dict.fromkeys(("load", "scale", "fit", "write"), 0.0)
    run_dir = paths.run(run)
    invocation = predictions.new_invocation_id()
    with file_lock(run_dir / ".lock"):
        # From here until the new record is written the run is incomplete: a kill leaves no
        # record, and blend refuses the run instead of mixing old and new predictions.
        predictions.clear_run_record(paths, run)
        inputs = predictions.input_fingerprints(
            paths, sorted({b for c in chosen for b in c.features.backbones})
        )
        bar = tqdm(total=len(chosen), desc="heads", unit="cand", disable=not progress)
        # Scale every feature set first, then fit all candidates in one pool, slowest first:
        # per-feature-set pools left a core idle at the end of each set.
        jobs: list[tuple[int, Candidate, np.ndarray, np.ndarray]] = []
        scalers: dict[str, FeatureScaler] = {}
        skipped_candidates: dict[str, str] = {}
        notes: list[str] = []
        largest, warm_up = 0, None
        joins: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for spec, members in groups.items():
            features = chosen[members[0]].features
            tick = time.perf_counter()
            loaded = load_feature_set(paths, features, manifest, joins)
            stages["load"] += time.perf_counter() - tick
            tick = time.perf_counter()
            usable = {i: _usable_train_rows(chosen[i], loaded.ok, rows) for i in members}
            for i in [i for i in members if usable[i] < 2]:
                skipped_candidates[str(chosen[i])] = (
                    f"{usable[i]} train rows with ok {features} features and a "
                    f"{chosen[i].task} label (needs 2)"
                )
                bar.update()
            members = [i for i in members if usable[i] >= 2]
            if not members:
                continue
            fit_rows = np.flatnonzero(loaded.ok & (rows.split == "train"))
            Z, scalers[spec] = scale_features(loaded, fit_rows, config.n_components)
            if scalers[spec].note_:
                notes.append(f"{features}: {scalers[spec].note_}")
            jobs += [(i, chosen[i], Z, loaded.ok) for i in members]
            stages["scale"] += time.perf_counter() - tick
            largest = max(largest, Z.size)
            n_jobs = worker_count(workers, len(chosen), largest)
            if n_jobs > 1 and warm_up is None:  # start the workers while loading goes on
                warm_up = Parallel(n_jobs=n_jobs, backend="loky", return_as="generator")(
                    delayed(_warm_up)() for _ in range(n_jobs)
                )
        for task in task_names:
            if task not in explained and not any(c.task == task for _, c, _, _ in jobs):
                explained[task] = "no train rows with both ok features and a label"
        if not jobs:
            raise InputError(
                "nothing to train: "
                + "; ".join(f"{k}: {v}" for k, v in {**explained, **skipped_candidates}.items())
            )
        if tasks:
            for task in tasks:
                if task in explained:
                    raise InputError(f"--task {task}: {explained[task]}")
        tick = time.perf_counter()
        for _ in warm_up or ():
            pass
        jobs.sort(key=lambda job: _fit_cost_rank(job[1]))
        fits = fit_all(
            [job[1:] for job in jobs],
            rows,
            seed=config.seed,
            seeds=seeds,
            folds=folds,
            n_jobs=worker_count(workers, len(jobs), largest),
        )
        results: dict[int, CandidateResult] = {}
        base = _preds_frame(manifest, folds)
        options = {
            "seed": config.seed,
            "seeds": seeds,
            "folds": folds,
            "strict_labels": strict_labels,
            "n_components": config.n_components,
        }
        for (i, candidate, _, _), (model, outputs, info) in zip(jobs, fits, strict=True):
            stages["fit"] += time.perf_counter() - tick
            tick = time.perf_counter()
            bar.set_postfix_str(str(candidate))
            provenance = {
                "invocation": invocation,
                "inputs": {
                    "manifest": inputs["manifest"],
                    "features": {b: inputs["features"][b] for b in candidate.features.backbones},
                },
                "head_fingerprint": predictions.head_fingerprint(
                    {
                        "features": candidate.features.spec,
                        "model": candidate.model,
                        "params": candidate.params,
                        **options,
                    }
                ),
            }
            results[i] = _save_candidate(
                paths,
                run,
                candidate,
                scalers[candidate.features.spec],
                model,
                outputs,
                info,
                base,
                config.seed,
                seeds,
                folds,
                strict_labels,
                provenance,
            )
            stages["write"] += time.perf_counter() - tick
            tick = time.perf_counter()
            bar.update()
        bar.close()
        ordered = [results[i] for i in sorted(results)]
        metrics_path = run_dir / "heads" / "metrics.json"
        _merge_metrics(metrics_path, ordered, run)
        trained: dict[str, list[str]] = {}
        for r in ordered:
            trained.setdefault(r.task, []).append(r.candidate)
        record_path = predictions.write_run_record(
            paths,
            run,
            {
                "run": run,
                "invocation": invocation,
                "package_version": __version__,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "inputs": inputs,
                "options": options,
                "candidates": trained,
                "skipped": {t: explained[t] for t in TASKS if t in explained},
                "skipped_candidates": skipped_candidates,
                "notes": notes,
            },
        )
    return HeadsResult(
        run,
        ordered,
        time.perf_counter() - start,
        metrics_path,
        stages,
        skipped={t: explained[t] for t in TASKS if t in explained},
        skipped_candidates=skipped_candidates,
        record_path=record_path,
        invocation=invocation,
        notes=notes,
    )


def _usable_train_rows(candidate: Candidate, ok: np.ndarray, rows: Rows) -> int:
    """Train rows with ok features and a label for the candidate's task."""
    return int((rows.labels[candidate.task][1] & ok & (rows.split == "train")).sum())


def _save_candidate(
    paths: DatasetPaths,
    run: str,
    candidate: Candidate,
    scaler: FeatureScaler,
    model: Any,
    outputs: np.ndarray,
    info: dict[str, Any],
    base: pd.DataFrame,
    seed: int,
    seeds: int,
    folds: int,
    strict_labels: bool,
    provenance: dict[str, Any],
) -> CandidateResult:
    """Write the head (JSON + safetensors) and its predictions (Parquet), both atomically;
    `provenance` (invocation id, input fingerprints) goes into both."""
    task = get_task(candidate.task)
    head_path = paths.head(run, candidate.task, candidate.name)
    preds_path = paths.preds(run, candidate.task, candidate.name)
    meta = {
        "task": candidate.task,
        "candidate": candidate.name,
        "features": candidate.features.spec,
        "model": candidate.model,
        "params": candidate.params,
        "seed": seed,
        "seeds": seeds,
        "folds": folds,
        "strict_labels": strict_labels,
        "scores": info["scores"],
        "oof_scores": info.get("oof_scores"),
        "package_version": __version__,
        **provenance,
    }
    FittedHead(
        task=candidate.task,
        candidate=candidate.name,
        feature_set=candidate.features.spec,
        scaler=scaler,
        model=model,
        output_columns=task.pred_columns,
        provenance=meta,
    ).save(head_path)
    predictions.write_predictions(preds_path, base, outputs, candidate.task, meta)
    return CandidateResult(
        task=candidate.task,
        candidate=candidate.name,
        features=candidate.features.spec,
        model=candidate.model,
        scores=info["scores"],
        fit_seconds=round(info["fit_seconds"], 3),
        cpu_seconds=round(info["cpu_seconds"], 3),
        n_train=info["n_train"],
        n_val=info["n_val"],
        head_path=str(head_path),
        preds_path=str(preds_path),
        oof_scores=info.get("oof_scores"),
    )

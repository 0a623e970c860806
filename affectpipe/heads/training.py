"""`heads.train`: fit every candidate, write heads, predictions and the metrics table.

Candidates sharing a feature set share its loading and its scaler, so a feature set is
read, gathered and projected once per run. Each candidate: fit on the train rows that have
ok features and a valid label for its task (MLP and LightGBM early-stop on ~10 % of the
train videos, held out: the val split stays unseen, its score honest), predict every val
and test row (NaN where the features are not ok), score on val. With
``folds=K`` the train and val rows get out-of-fold predictions instead, from K refits on
train+val grouped by video, so a blend can be tuned on honest predictions.

Out of core: a feature set's raw rows are read from the HDF5 files a chunk at a time and
projected (scaler fitted on a bounded sample of train rows; each part multiplied on its own
file rows, `LoadedFeatures.transform`) into a ``.npy`` in a scratch folder of the run; each
fit reads only the rows it needs from that file (`RowFile`). So memory depends on the
projected width, not on the raw width times the rows.

Fits run on one thread each, in worker processes (``[heads] workers``, default one per usable
core) when the data is large enough to pay for starting them; the workers fork from a fork
server that imported torch once, and run at a lower priority than this process, which feeds
them. A feature set's fits are submitted as soon as it is projected (narrowest sets first,
so the workers start early), so they run while the next set is read and projected, and
finished heads are written in between. Results are the same either way, up to float32
rounding.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from affectpipe import __version__, predictions
from affectpipe.config import DEFAULT_RUN, DatasetPaths
from affectpipe.data.summary import no_validation_message
from affectpipe.errors import InputError, NoValidationError
from affectpipe.featuresets import (
    DEFAULT_CHUNK_ROWS,
    LoadedFeatures,
    available_backbones,
    load_feature_set,
)
from affectpipe.fsutil import file_lock, write_text_atomic
from affectpipe.heads import fit_workers
from affectpipe.heads.candidates import Candidate, load_config, select_candidates
from affectpipe.heads.fitted import FittedHead
from affectpipe.heads.fitting import Rows, fit_job
from affectpipe.heads.model_registry import MODELS
from affectpipe.heads.options import HeadsOptions
from affectpipe.heads.preprocess import FeatureScaler
from affectpipe.machine import usable_cores
from affectpipe.manifest import read_manifest, read_manifest_metadata
from affectpipe.options import record
from affectpipe.schema import TASKS
from affectpipe.tasks import get_task

SCALER_SAMPLE_ROWS = 20000  # train rows the scaler / PCA is estimated on


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
    """One line per candidate: its validation metrics and fit time. The starred columns
    average F1 over the classes / AUs present in the validation labels only (ABAW's P_EXPR
    and P_AU average all 8 / 12, an absent one counting 0)."""
    keys = ("p_va", "ccc_valence", "ccc_arousal", "p_expr", "p_expr_present", "p_au")
    keys += ("p_au_present",)
    width = max([48, *(len(r.candidate) for r in results)])
    lines = [
        f"{'task':<5} {'candidate':<{width}} {'P_VA':>6} {'CCC_V':>6} {'CCC_A':>6} "
        f"{'P_EXPR':>6} {'EXPR*':>6} {'P_AU':>6} {'AU*':>6} {'n_train':>8} {'fit_s':>6}"
    ]
    for r in results:
        cells = [r.scores.get(k) for k in keys]
        text = " ".join(f"{v:6.3f}" if v is not None else f"{'':6}" for v in cells)
        lines.append(
            f"{r.task:<5} {r.candidate:<{width}} {text} {r.n_train:8d} {r.fit_seconds:6.2f}"
        )
    if any(get_task(r.task).present_metric for r in results):
        lines.append(
            "*: macro F1 over the classes / AUs present in the validation labels "
            "(P_EXPR / P_AU, ABAW's metrics, average all 8 / 12)"
        )
    return "\n".join(lines)


def scale_features(
    loaded: LoadedFeatures, fit_rows: np.ndarray, n_components: int, out: Path
) -> FeatureScaler:
    """Fit the scaler on train rows, then project every row straight into the ``.npy`` file
    `out`, a chunk (`loaded.chunk_rows` manifest rows) at a time.

    The scaler (means, scales, PCA) is fitted on at most SCALER_SAMPLE_ROWS evenly spaced
    train rows, read from the feature files: a bounded sample, so its cost and memory do not
    grow with the rows (the leading components of 20,000 rows match those of all of them to
    well within what the heads can tell). Memory: that sample plus one chunk, raw and
    projected; nothing of size rows x raw width. `out` holds Z [n_rows, width out] (zeros
    for rows that are not ok); returns the fitted scaler.
    """
    sample = fit_rows[:: max(1, len(fit_rows) // SCALER_SAMPLE_ROWS)]
    scaler = FeatureScaler(n_components=n_components).fit(loaded.take(sample))
    shape = (len(loaded.ok), scaler.n_features_out)
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    with open(out, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        for _, block in loaded.scaled_blocks(scaler):
            block.tofile(handle)
    return scaler


def _fit_cost_rank(candidate: Candidate) -> tuple[int, bool]:
    """Sort key, slowest fits first (so no core idles at the end waiting on a long fit):
    sequence models and trees, then MLPs, then L-BFGS linear heads; a VA linear head is a
    closed-form ridge."""
    rank = {"temporal": 0, "lightgbm": 0, "mlp": 1}.get(candidate.model, 2)
    return rank, get_task(candidate.task).is_regression


def _preds_base(manifest: pd.DataFrame, folds: int) -> pa.Table:
    """The row / image / split columns every prediction file of a run shares: val and test
    rows, plus train rows when cross-fitting. Built once per run (gathering the image strings
    took half of each file's write time)."""
    split = manifest["split"].to_numpy(dtype=object)
    keep = np.isin(split, ("val", "test"))
    if folds:
        keep |= split == "train"
    rows = np.flatnonzero(keep)
    frame = pd.DataFrame(
        {
            "row": rows.astype(np.int64),
            "image": manifest["image"].to_numpy()[rows],
            "split": manifest["split"].to_numpy()[rows],
        }
    )
    return predictions.prediction_base(frame)


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
    rows: Rows, requested: Sequence[str] | None, strict: bool, metadata: dict[str, Any]
) -> tuple[list[str], dict[str, str]]:
    """Tasks with labelled train and validation rows, and the reason each other task is
    skipped.

    A task asked for by name (`requested`) that has no labels is an InputError: the user
    asked for something the data cannot give. Train labels without validation labels (for
    the task asked for, or for every task) is a NoValidationError saying how to make them.
    """
    tasks, skipped = [], {}
    train_split, val_split = rows.split == "train", rows.split == "val"
    no_val = []
    for name in requested or TASKS:
        n_labelled = int((rows.labels[name][1] & train_split).sum())
        if n_labelled >= 2 and not (rows.labels[name][1] & val_split).any():
            no_val.append(name)
            skipped[name] = "no labelled validation rows"
            continue
        if n_labelled >= 2:
            tasks.append(name)
            continue
        reason = "no labelled train rows" if n_labelled == 0 else "only 1 labelled train row"
        if strict:
            reason += " with all three tasks labelled (--strict-labels)"
        if requested:
            raise InputError(f"--task {name}: {reason} in the manifest, nothing to train")
        skipped[name] = reason
    if no_val and (requested or not tasks):
        raise NoValidationError(no_validation_message(metadata, ", ".join(no_val)))
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
    folds: int = HeadsOptions.folds,
    seeds: int = HeadsOptions.seeds,
    strict_labels: bool = HeadsOptions.strict_labels,
    progress: bool = True,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    fresh: bool = HeadsOptions.fresh,
) -> HeadsResult:
    """Train the selected candidates on cached features and commit each one to the run's
    ledger (`affectpipe.predictions`) as soon as its head and predictions are written; then
    merge metrics.json and record the invocation in the ledger. Candidates of earlier
    invocations that this one does not retrain stay in the run; `fresh` removes the run's
    heads, predictions and ledger first.

    Features are read and projected `chunk_rows` rows at a time (results do not depend on
    it). Every task with labelled train rows is trained (all three unless `tasks` names some);
    the others, and candidates without two usable train rows, are skipped with the reason
    (in the result and the run record). The defaults are `HeadsOptions`'; the run record
    stores them (`options.record`) with the config's seed and n_components.
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
    workers = config.workers or usable_cores()
    if (
        workers > 1
        and len(manifest) * (config.n_components or 0) >= fit_workers.PARALLEL_MIN_VALUES
    ):
        # Large enough for workers: their imports overlap the loading.
        fit_workers.start_fork_server()
    rows = Rows.of(manifest, TASKS, strict_labels)
    task_names, skipped = trainable_tasks(
        rows, list(tasks) if tasks else None, strict_labels, read_manifest_metadata(paths.manifest)
    )
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
    stages = dict.fromkeys(("load", "scale", "fit", "write"), 0.0)
    run_dir = paths.run(run)
    invocation = predictions.new_invocation_id()
    with file_lock(run_dir / ".lock"):
        if fresh:
            for part in ("heads", "preds"):
                shutil.rmtree(run_dir / part, ignore_errors=True)
        # A kill between a candidate's files and its commit leaves files that the ledger
        # does not vouch for: blend refuses them (or never sees them) until retrained.
        ledger = predictions.read_run_record(paths, run) or predictions.new_run_record(run)
        inputs = predictions.input_fingerprints(
            paths, sorted({b for c in chosen for b in c.features.backbones})
        )
        bar = tqdm(total=len(chosen), desc="heads", unit="cand", disable=not progress)
        scalers: dict[str, FeatureScaler] = {}
        skipped_candidates: dict[str, str] = {}
        notes: list[str] = []
        joins: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        tick = time.perf_counter()
        loaded_sets = {
            spec: load_feature_set(paths, chosen[members[0]].features, manifest, joins, chunk_rows)
            for spec, members in groups.items()
        }
        stages["load"] += time.perf_counter() - tick
        for i, candidate in enumerate(chosen):  # token models learn the file's token count
            if getattr(MODELS[candidate.model], "token_input", False):
                tokens = loaded_sets[candidate.features.spec].spatial_tokens()
                chosen[i] = replace(candidate, params={**candidate.params, "tokens": tokens})
        fit_groups: dict[str, list[int]] = {}  # feature set -> its candidates, slowest first
        for spec, members in groups.items():
            loaded = loaded_sets[spec]
            usable = {i: _usable_train_rows(chosen[i], loaded.ok, rows) for i in members}
            for i in [i for i in members if usable[i] < 2]:
                skipped_candidates[str(chosen[i])] = (
                    f"{usable[i]} train rows with ok {loaded.feature_set} features and a "
                    f"{chosen[i].task} label (needs 2)"
                )
                bar.update()
            kept = [i for i in members if usable[i] >= 2]
            if kept:
                fit_groups[spec] = sorted(kept, key=lambda i: _fit_cost_rank(chosen[i]))
        fitted_tasks = {chosen[i].task for members in fit_groups.values() for i in members}
        for task in task_names:
            if task not in explained and task not in fitted_tasks:
                explained[task] = "no train rows with both ok features and a label"
        if not fit_groups:
            raise InputError(
                "nothing to train: "
                + "; ".join(f"{k}: {v}" for k, v in {**explained, **skipped_candidates}.items())
            )
        if tasks:
            for task in tasks:
                if task in explained:
                    raise InputError(f"--task {task}: {explained[task]}")
        largest = max(
            len(manifest) * min(loaded_sets[spec].width, config.n_components or 1 << 30)
            for spec in fit_groups
        )
        n_jobs = fit_workers.fit_processes(workers, sum(map(len, fit_groups.values())), largest)
        executor = fit_workers.fit_executor(n_jobs)
        results: dict[int, CandidateResult] = {}
        base = _preds_base(manifest, folds)
        # What the heads' values depend on: their fingerprint's part beside the model.
        fitting = {
            "seed": config.seed,
            "seeds": seeds,
            "folds": folds,
            "strict_labels": strict_labels,
            "n_components": config.n_components,
        }
        options = HeadsOptions(folds=folds, seeds=seeds, strict_labels=strict_labels, fresh=fresh)
        pending: dict[int, Future] = {}

        def write_finished(block: bool) -> None:
            """Write the heads whose fits are done; `block`: wait for all of them."""
            while pending:
                tick = time.perf_counter()
                done, _ = wait(
                    pending.values(), timeout=None if block else 0, return_when=FIRST_COMPLETED
                )
                stages["fit"] += time.perf_counter() - tick
                if not done:
                    return
                for i in [i for i, future in pending.items() if future in done]:
                    model, outputs, info = pending.pop(i).result()
                    tick = time.perf_counter()
                    candidate = chosen[i]
                    bar.set_postfix_str(str(candidate))
                    provenance = {
                        "invocation": invocation,
                        "inputs": {
                            "manifest": inputs["manifest"],
                            "features": {
                                b: inputs["features"][b] for b in candidate.features.backbones
                            },
                        },
                        "head_fingerprint": predictions.head_fingerprint(
                            {
                                "features": candidate.features.spec,
                                "model": candidate.model,
                                "params": candidate.params,
                                **fitting,
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
                    predictions.commit_candidate(
                        paths,
                        run,
                        ledger,
                        candidate.task,
                        candidate.name,
                        {
                            "invocation": invocation,
                            "features": candidate.features.spec,
                            "model": candidate.model,
                            "head_fingerprint": provenance["head_fingerprint"],
                            "committed": datetime.now(UTC).isoformat(timespec="seconds"),
                        },
                    )
                    stages["write"] += time.perf_counter() - tick
                    bar.update()
                if not block:
                    return

        # Project one feature set at a time (its raw rows in chunks, into a .npy in the
        # scratch folder) and submit its fits at once: they run in the workers while the
        # next set is projected, and finished heads are written in between. Narrowest sets
        # first: logits are projected in a moment, so the workers have fits as soon as
        # they are up instead of waiting on the widest projection.
        narrowest_first = sorted(fit_groups.items(), key=lambda item: loaded_sets[item[0]].width)
        scratch_dir = run_dir / "heads"
        scratch_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".scaled-", dir=scratch_dir) as name:
            scratch = Path(name)
            rows.save(scratch)
            try:
                for number, (spec, members) in enumerate(narrowest_first):
                    loaded = loaded_sets[spec]
                    tick, read_before = time.perf_counter(), loaded.read_seconds
                    fit_rows = np.flatnonzero(loaded.ok & (rows.split == "train"))
                    scaled = scratch / f"{number}.npy"
                    np.save(scaled.with_suffix(".ok.npy"), loaded.ok)
                    components = 0 if loaded.has_spatial else config.n_components
                    scalers[spec] = scale_features(loaded, fit_rows, components, scaled)
                    if scalers[spec].note_:
                        notes.append(f"{loaded.feature_set}: {scalers[spec].note_}")
                    read = loaded.read_seconds - read_before
                    stages["load"] += read
                    stages["scale"] += time.perf_counter() - tick - read
                    for i in members:
                        tick = time.perf_counter()
                        pending[i] = executor.submit(
                            fit_job, chosen[i], scaled, scratch, config.seed, seeds, folds
                        )
                        stages["fit"] += time.perf_counter() - tick  # inline: the fit itself
                    write_finished(block=False)
                write_finished(block=True)
            finally:
                executor.shutdown(wait=not pending, cancel_futures=True)
        bar.close()
        ordered = [results[i] for i in sorted(results)]
        metrics_path = run_dir / "heads" / "metrics.json"
        _merge_metrics(metrics_path, ordered, run)
        trained: dict[str, list[str]] = {}
        for r in ordered:
            trained.setdefault(r.task, []).append(r.candidate)
        # The ledger's top-level fields describe its last finished invocation.
        ledger.update(
            {
                "invocation": invocation,
                "package_version": __version__,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "inputs": inputs,
                "options": {**record(options), **fitting},
                "trained": trained,
                "skipped": {t: explained[t] for t in TASKS if t in explained},
                "skipped_candidates": skipped_candidates,
                "notes": notes,
            }
        )
        record_path = predictions.write_run_record(paths, run, ledger)
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
    base: pa.Table,
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
        "regularisation": info.get("regularisation"),
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

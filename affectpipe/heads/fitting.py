"""Fitting one candidate: the rows it trains on, early stopping on held-out train videos,
cross-fitting, and the projected feature rows it reads from disk (`RowFile`).

Each candidate is fit on the train rows that have ok features and a valid label for its task
(MLP and LightGBM early-stop on ~10 % of the train videos, held out: the val split stays
unseen), then predicts every val and test row (NaN where the features are not ok). With
``folds=K`` the train and val rows get out-of-fold predictions instead, from K refits on
train+val grouped by video. A job sends paths to its worker, not arrays (`fit_job`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from affectpipe.errors import InputError
from affectpipe.heads.candidates import Candidate
from affectpipe.heads.model_registry import MODELS, make_model
from affectpipe.heads.regularisation import choose_regularisation
from affectpipe.heads.temporal import fit_temporal_candidate, sequence_groups
from affectpipe.splits import group_kfold, held_out_groups
from affectpipe.tasks import TASK_DEFS, get_task

EARLY_STOPPING_SHARE = 0.1  # share of train videos held out to early-stop MLP / LightGBM fits


EARLY_STOPPING_MIN_ROWS = 1000  # fewer train rows: too few held out to early-stop on (noise)


READ_BLOCK_ROWS = 16384  # projected rows a worker reads from disk at a time


PREDICT_CHUNK_ROWS = 65536  # rows predicted at a time (bounds the copy of val + test rows)


def label_rows(manifest: pd.DataFrame, task: str, strict: bool) -> tuple[np.ndarray, np.ndarray]:
    """(labels, rows usable for `task`); strict keeps only rows valid for all three tasks."""
    spec = get_task(task)
    y = spec.targets(manifest)
    valid = spec.valid_rows(y)
    if strict:  # every task's every label column (all 12 AUs too)
        for other in TASK_DEFS.values():
            valid &= other.valid_rows(other.targets(manifest), strict=True)
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

    def save(self, folder: Path) -> None:
        """Write every array as ``.npy`` under `folder` (for `Rows.mapped`)."""
        arrays = {"split": self.split, "video": self.video, "frame": self.frame}
        for task, (y, valid) in self.labels.items():
            arrays |= {f"labels.{task}.y": y, f"labels.{task}.valid": valid}
        for name, array in arrays.items():
            np.save(folder / f"{name}.npy", array)

    @classmethod
    def mapped(cls, folder: Path) -> Rows:
        """Rows saved under `folder`, memory-mapped read-only: each worker process maps the
        files instead of receiving a pickled copy of ~50 MB per fit at 1M rows."""

        def load(name: str) -> np.ndarray:
            return np.load(folder / f"{name}.npy", mmap_mode="r")

        tasks = sorted(p.name.split(".")[1] for p in folder.glob("labels.*.y.npy"))
        return cls(
            split=load("split"),
            video=load("video"),
            labels={t: (load(f"labels.{t}.y"), load(f"labels.{t}.valid")) for t in tasks},
            frame=load("frame"),
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
    start, cpu_start = time.perf_counter(), time.process_time()
    regularisation = choose_regularisation(
        model, task, Z, y, train_rows, rows.video, candidate.params
    )
    fit_rows, stop_rows = train_rows, train_rows[:0]
    if getattr(model, "stops_early", False):
        fit_rows, stop_rows = early_stopping_split(train_rows, rows.video, seed)
    eval_set = (Z[stop_rows], y[stop_rows]) if len(stop_rows) else None
    model.fit(Z[fit_rows], y[fit_rows], eval_set=eval_set)
    fit_seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    outputs = np.full((len(ok), task.n_outputs), np.nan, dtype=np.float32)
    predict_rows = np.flatnonzero(ok & np.isin(rows.split, ("val", "test")))
    _predict_into(model, Z, predict_rows, outputs)
    info: dict[str, Any] = {
        "fit_seconds": fit_seconds,
        "cpu_seconds": cpu_seconds,
        "n_train": len(train_rows),
        "n_val": len(val_rows),
        "scores": task.score(y[val_rows], outputs[val_rows]) if len(val_rows) else {},
        "regularisation": regularisation,
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
    n_held = max(1, round(EARLY_STOPPING_SHARE * len(videos)))
    held = np.isin(video[train_rows], held_out_groups(videos, n_held, seed))
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
    for fit_rows, held_rows in group_kfold(pool, videos, folds):
        fit_rows = fit_rows[usable[fit_rows]]
        fold_model = clone(model).set_params(**refit)
        fold_model.fit(Z[fit_rows], y[fit_rows])
        _predict_into(fold_model, Z, held_rows, outputs)


def _predict_into(model: Any, Z: Any, rows: np.ndarray, outputs: np.ndarray) -> None:
    """outputs[rows] = the model's outputs, PREDICT_CHUNK_ROWS rows of Z at a time."""
    for start in range(0, len(rows), PREDICT_CHUNK_ROWS):
        chunk = rows[start : start + PREDICT_CHUNK_ROWS]
        outputs[chunk] = model.predict_outputs(Z[chunk])


class RowFile:
    """A projected ``.npy`` matrix [rows, width] read row-subset by row-subset with plain file
    reads into one array: ``rows_file[index]`` (sorted row numbers or a boolean mask) returns
    only those rows. A worker thus holds its own rows once; memory-mapping the whole file
    would add every file page it touches to its resident set (1M rows: +~1 GB per worker)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as handle:
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(np.lib.format.read_magic(handle))
            if read_header is None:
                raise InputError(f"{path}: unsupported .npy version")
            shape, fortran, dtype = read_header(handle)
            self.offset = handle.tell()
        if fortran or len(shape) != 2:
            raise InputError(f"{path}: not a C-ordered 2-d array")
        self.shape, self.dtype = shape, np.dtype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        width = self.shape[1]
        out = np.empty((len(index), width), dtype=self.dtype)
        row_bytes = width * self.dtype.itemsize
        # Sorted row numbers: read each block's span [first, last] once and keep its rows.
        bounds = np.searchsorted(index, np.arange(0, len(self) + READ_BLOCK_ROWS, READ_BLOCK_ROWS))
        with open(self.path, "rb", buffering=0) as handle:
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=False):
                if lo == hi:
                    continue
                first, last = int(index[lo]), int(index[hi - 1])
                span = np.empty((last - first + 1, width), dtype=self.dtype)
                handle.seek(self.offset + first * row_bytes)
                if handle.readinto(memoryview(span).cast("B")) != span.nbytes:
                    raise InputError(f"{self.path}: shorter than its header says")
                out[lo:hi] = span[index[lo:hi] - first]
        return out


def fit_job(
    candidate: Candidate,
    scaled: Path,
    scratch: Path,
    seed: int,
    seeds: int,
    folds: int,
) -> tuple[Any, np.ndarray, dict[str, Any]]:
    """`fit_candidate` on files: the projected features ``scaled`` (.npy, with its ok mask
    beside it as ``<name>.ok.npy``) and the rows saved in `scratch`, so a job sends paths to
    its worker process, not arrays; the worker reads only the feature rows each step needs."""
    Z = RowFile(scaled)
    ok = np.load(scaled.with_suffix(".ok.npy"), mmap_mode="r")
    return fit_candidate(candidate, Z, ok, Rows.mapped(scratch), seed, seeds, folds)

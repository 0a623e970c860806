"""Read the heads' prediction files of a run and align them on manifest rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.schema import PRED_COLUMNS, TASKS

BLEND_SPLITS = ("val", "test")


@dataclass(frozen=True)
class CandidateSet:
    """Every candidate of one task on the manifest's val and test rows."""

    task: str
    names: list[str]
    rows: np.ndarray  # manifest row indices, increasing
    values: np.ndarray  # [M, len(rows), K] float32; NaN where a candidate has no prediction


def candidate_files(paths: DatasetPaths, run: str, task: str) -> list[Path]:
    folder = paths.run(run) / "preds" / task
    return sorted(folder.glob("*.parquet")) if folder.is_dir() else []


def available_tasks(paths: DatasetPaths, run: str) -> list[str]:
    return [task for task in TASKS if candidate_files(paths, run, task)]


def read_candidate(path: Path, task: str, images: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One prediction file as [len(rows), K] aligned on `rows` (NaN for rows it lacks).

    `images` is the manifest's image column, to check that the file's rows still match it.
    """
    columns = ["row", "image", *PRED_COLUMNS[task]]
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise InputError(f"{path}: cannot read predictions ({exc})") from exc
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise InputError(f"{path}: prediction file lacks columns {missing}")
    frame = table.select(columns).to_pandas()
    manifest_rows = frame["row"].to_numpy(np.int64)
    if len(manifest_rows) and (manifest_rows.min() < 0 or manifest_rows.max() >= len(images)):
        raise InputError(f"{path}: row index outside the manifest ({len(images)} rows)")
    stale = frame["image"].to_numpy(str) != images[manifest_rows]
    if stale.any():
        first = int(np.flatnonzero(stale)[0])
        raise InputError(
            f"{path}: row {manifest_rows[first]} is image {frame['image'].iloc[first]!r} but the "
            "manifest says otherwise: predictions are stale, rerun `pipeline heads`"
        )
    out = np.full((len(rows), len(PRED_COLUMNS[task])), np.nan, dtype=np.float32)
    position = np.searchsorted(rows, manifest_rows)
    inside = (position < len(rows)) & (rows[np.minimum(position, len(rows) - 1)] == manifest_rows)
    out[position[inside]] = frame.loc[inside, list(PRED_COLUMNS[task])].to_numpy(np.float32)
    return out


def load_candidates(
    paths: DatasetPaths, run: str, task: str, manifest: pd.DataFrame
) -> CandidateSet:
    """All candidates of `task` in the run; raises InputError when there are none."""
    files = candidate_files(paths, run, task)
    if not files:
        raise InputError(
            f"no predictions for task {task!r} under {paths.run(run) / 'preds' / task}: "
            "run `pipeline heads` first"
        )
    rows = np.flatnonzero(manifest["split"].isin(BLEND_SPLITS).to_numpy())
    images = manifest["image"].to_numpy(str)
    values = np.stack([read_candidate(path, task, images, rows) for path in files])
    return CandidateSet(task, [path.stem for path in files], rows, values)

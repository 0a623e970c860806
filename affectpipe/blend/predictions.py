"""Load a run's checked prediction files (`affectpipe.predictions`) aligned on manifest rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.predictions import available_tasks, read_prediction_table, resolve_candidates
from affectpipe.schema import PRED_COLUMNS

__all__ = ["BLEND_SPLITS", "CandidateSet", "available_tasks", "load_candidates", "read_candidate"]

BLEND_SPLITS = ("val", "test")


@dataclass(frozen=True)
class CandidateSet:
    """Every candidate of one task on the manifest's val and test rows."""

    task: str
    names: list[str]
    rows: np.ndarray  # manifest row indices, increasing
    values: np.ndarray  # [M, len(rows), K] float32; NaN where a candidate has no prediction


def read_candidate(path: Path, task: str, images: pa.Array, rows: np.ndarray) -> np.ndarray:
    """One prediction file as [len(rows), K] aligned on `rows` (NaN for rows it lacks).

    `images` is the manifest's image column (Arrow), to check that the file's rows still
    match it.
    """
    table = read_prediction_table(path, task)
    manifest_rows = table["row"].to_numpy().astype(np.int64, copy=False)
    if len(manifest_rows) and (manifest_rows.min() < 0 or manifest_rows.max() >= len(images)):
        raise InputError(f"{path}: row index outside the manifest ({len(images)} rows)")
    same = pc.fill_null(pc.equal(table["image"], images.take(manifest_rows)), False)
    if not pc.all(same).as_py():
        first = int(np.flatnonzero(~same.to_numpy(zero_copy_only=False))[0])
        raise InputError(
            f"{path}: row {manifest_rows[first]} is image {table['image'][first].as_py()!r} but "
            "the manifest says otherwise: predictions are stale, rerun `pipeline heads`"
        )
    columns = PRED_COLUMNS[task]
    out = np.full((len(rows), len(columns)), np.nan, dtype=np.float32)
    position = np.searchsorted(rows, manifest_rows)
    inside = (position < len(rows)) & (rows[np.minimum(position, len(rows) - 1)] == manifest_rows)
    # The file's values as rows [n, K] first: one scatter of whole rows is cheaper than K
    # strided column scatters into `out`.
    block = np.empty((len(manifest_rows), len(columns)), dtype=np.float32)
    for j, column in enumerate(columns):
        block[:, j] = table[column].to_numpy()
    out[position[inside]] = block if inside.all() else block[inside]
    return out


def load_candidates(
    paths: DatasetPaths,
    run: str,
    task: str,
    manifest: pd.DataFrame,
    names: Sequence[str] | None = None,
    rows: np.ndarray | None = None,
) -> CandidateSet:
    """The run's candidates of `task` (or those `names`d) on manifest `rows` (increasing;
    default every val and test row), checked by `affectpipe.predictions.resolve_candidates`:
    a finished heads run, one invocation, inputs unchanged. Raises its errors (exit 1 for
    stale or partial runs, 2 when there is none)."""
    files = resolve_candidates(paths, run, task, names)
    if rows is None:
        rows = np.flatnonzero(manifest["split"].isin(BLEND_SPLITS).to_numpy())
    images = pa.array(manifest["image"])
    values = np.empty((len(files), len(rows), len(PRED_COLUMNS[task])), dtype=np.float32)
    for m, path in enumerate(files):  # straight into place: one copy of the values in memory
        values[m] = read_candidate(path, task, images, rows)
    return CandidateSet(task, [path.stem for path in files], rows, values)

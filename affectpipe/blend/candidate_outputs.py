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

__all__ = [
    "BLEND_SPLITS",
    "CandidateSet",
    "RowAligner",
    "available_tasks",
    "load_candidates",
    "read_candidate",
]

BLEND_SPLITS = ("val", "test")


@dataclass(frozen=True)
class CandidateSet:
    """Every candidate of one task on the manifest's val and test rows."""

    task: str
    names: list[str]
    rows: np.ndarray  # manifest row indices, increasing
    values: np.ndarray  # [M, len(rows), K] float32; NaN where a candidate has no prediction


class RowAligner:
    """Where a prediction file's rows go among the manifest `rows` wanted, and the manifest
    images they must show. The files of one heads run list the same rows, so the last
    file's alignment is reused when the next file's row column is the same."""

    def __init__(self, images: pa.Array, rows: np.ndarray):
        self.images = images  # the manifest's image column (Arrow)
        self.rows = rows
        self._last: tuple[np.ndarray, pa.Array, np.ndarray, np.ndarray] | None = None

    def __call__(self, manifest_rows: np.ndarray) -> tuple[pa.Array, np.ndarray, np.ndarray]:
        """(manifest images of `manifest_rows`, their position among `rows`, whether they
        are among them)."""
        last = self._last
        if last is not None and np.array_equal(last[0], manifest_rows):
            return last[1:]
        rows = self.rows
        position = np.searchsorted(rows, manifest_rows)
        inside = (position < len(rows)) & (
            rows[np.minimum(position, len(rows) - 1)] == manifest_rows
        )
        self._last = (manifest_rows, self.images.take(manifest_rows), position, inside)
        return self._last[1:]


def read_candidate(path: Path, task: str, aligner: RowAligner) -> np.ndarray:
    """One prediction file as [len(aligner.rows), K] aligned on those manifest rows (NaN for
    rows it lacks), after checking that the file's rows still show the manifest's images."""
    table = read_prediction_table(path, task)
    manifest_rows = table["row"].to_numpy().astype(np.int64, copy=False)
    n_manifest = len(aligner.images)
    if len(manifest_rows) and (manifest_rows.min() < 0 or manifest_rows.max() >= n_manifest):
        raise InputError(f"{path}: row index outside the manifest ({n_manifest} rows)")
    expected, position, inside = aligner(manifest_rows)
    same = pc.fill_null(pc.equal(table["image"], expected), False)
    if not pc.all(same).as_py():
        first = int(np.flatnonzero(~same.to_numpy(zero_copy_only=False))[0])
        raise InputError(
            f"{path}: row {manifest_rows[first]} is image {table['image'][first].as_py()!r} but "
            "the manifest says otherwise: predictions are stale, rerun `pipeline heads`"
        )
    columns = PRED_COLUMNS[task]
    out = np.full((len(aligner.rows), len(columns)), np.nan, dtype=np.float32)
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
    aligner = RowAligner(pa.array(manifest["image"]), rows)
    values = np.empty((len(files), len(rows), len(PRED_COLUMNS[task])), dtype=np.float32)
    for m, path in enumerate(files):  # straight into place: one copy of the values in memory
        values[m] = read_candidate(path, task, aligner)
    return CandidateSet(task, [path.stem for path in files], rows, values)

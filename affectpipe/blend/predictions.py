"""Load a run's checked prediction files (`affectpipe.predictions`) aligned on manifest rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.predictions import available_tasks, read_predictions, resolve_candidates
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


def read_candidate(path: Path, task: str, images: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One prediction file as [len(rows), K] aligned on `rows` (NaN for rows it lacks).

    `images` is the manifest's image column, to check that the file's rows still match it.
    """
    frame = read_predictions(path, task)
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
    paths: DatasetPaths,
    run: str,
    task: str,
    manifest: pd.DataFrame,
    names: Sequence[str] | None = None,
) -> CandidateSet:
    """The run's candidates of `task` (or those `names`d), checked by
    `affectpipe.predictions.resolve_candidates`: a finished heads run, one invocation, inputs
    unchanged. Raises its errors (exit 1 for stale or partial runs, 2 when there is none)."""
    files = resolve_candidates(paths, run, task, names)
    rows = np.flatnonzero(manifest["split"].isin(BLEND_SPLITS).to_numpy())
    images = manifest["image"].to_numpy(str)
    values = np.stack([read_candidate(path, task, images, rows) for path in files])
    return CandidateSet(task, [path.stem for path in files], rows, values)

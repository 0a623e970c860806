"""Fill frames that have no prediction from the nearest predicted frames of the same video.

Linear in frame number between predicted frames, the nearest prediction beyond the first or
last one, and a prior (the train-label mean) for a video with no prediction at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FillReport:
    filled_rows: int  # rows interpolated or copied from a neighbour
    prior_groups: int  # groups (videos) with no prediction at all, given the prior
    prior_rows: int


def interpolate_at(
    known_frames: np.ndarray, known_values: np.ndarray, query_frames: np.ndarray
) -> np.ndarray:
    """Values [Q, K] at `query_frames`, linear between known frames, constant beyond them."""
    order = np.argsort(known_frames, kind="stable")
    xs = np.asarray(known_frames, dtype=np.float64)[order]
    ys = np.asarray(known_values, dtype=np.float64)[order]
    query = np.asarray(query_frames, dtype=np.float64)
    columns = [np.interp(query, xs, ys[:, k]) for k in range(ys.shape[1])]
    return np.stack(columns, axis=1).astype(np.float32)


def fill_missing(
    values: np.ndarray, groups: np.ndarray, frames: np.ndarray, prior: np.ndarray
) -> tuple[np.ndarray, FillReport]:
    """Return `values` [N, K] with every row holding a NaN replaced, and what was done.

    Rows are filled only from rows of their own group (one video within one split).
    """
    values = np.asarray(values, dtype=np.float32)
    missing = ~np.isfinite(values).all(axis=1)
    out = values.copy()
    if not missing.any():
        return out, FillReport(0, 0, 0)
    filled = prior_groups = prior_rows = 0
    for group in np.unique(groups[missing]):
        rows = np.flatnonzero(groups == group)
        known = rows[~missing[rows]]
        holes = rows[missing[rows]]
        if len(known) == 0:
            out[holes] = prior
            prior_groups += 1
            prior_rows += len(holes)
            continue
        out[holes] = interpolate_at(frames[known], values[known], frames[holes])
        filled += len(holes)
    return out, FillReport(filled, prior_groups, prior_rows)

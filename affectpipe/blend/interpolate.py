"""Fill frames that have no prediction from the nearest predicted frames of the same video.

Linear in frame number between predicted frames, the nearest prediction beyond the first or
last one, and a prior (the train-label mean) for a video with no prediction at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FillReport:
    interpolated: np.ndarray  # [N] bool: rows interpolated or copied from a neighbour
    prior: np.ndarray  # [N] bool: rows of a group (video) without any prediction: the prior
    prior_groups: int

    @property
    def filled_rows(self) -> int:
        return int(self.interpolated.sum())

    @property
    def prior_rows(self) -> int:
        return int(self.prior.sum())


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
    interpolated = np.zeros(len(values), dtype=bool)
    given_prior = np.zeros(len(values), dtype=bool)
    prior_groups = 0
    for group in np.unique(groups[missing]):
        rows = np.flatnonzero(groups == group)
        known = rows[~missing[rows]]
        holes = rows[missing[rows]]
        if len(known) == 0:
            out[holes] = prior
            given_prior[holes] = True
            prior_groups += 1
            continue
        out[holes] = interpolate_at(frames[known], values[known], frames[holes])
        interpolated[holes] = True
    return out, FillReport(interpolated, given_prior, prior_groups)

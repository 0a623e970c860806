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

    Rows are filled only from rows of their own group (one video within one split): per
    group, what `interpolate_at` gives, for all groups at once.
    """
    values = np.asarray(values, dtype=np.float32)
    missing = ~np.isfinite(values).all(axis=1)
    out = values.copy()
    interpolated = np.zeros(len(values), dtype=bool)
    given_prior = np.zeros(len(values), dtype=bool)
    if not missing.any():
        return out, FillReport(interpolated, given_prior, 0)
    _, group = np.unique(groups, return_inverse=True)
    group = group.ravel()
    frames = np.asarray(frames, dtype=np.int64)
    known = np.flatnonzero(~missing)
    holes = np.flatnonzero(missing)
    has_known = np.bincount(group[known], minlength=group.max() + 1) > 0
    orphan = ~has_known[group[holes]]
    out[holes[orphan]] = prior
    given_prior[holes[orphan]] = True
    prior_groups = len(np.unique(group[holes[orphan]]))
    holes = holes[~orphan]
    if len(holes):
        out[holes] = _interpolate_groups(group, frames, values, known, holes)
        interpolated[holes] = True
    return out, FillReport(interpolated, given_prior, prior_groups)


def _interpolate_groups(
    group: np.ndarray, frames: np.ndarray, values: np.ndarray, known: np.ndarray, holes: np.ndarray
) -> np.ndarray:
    """`np.interp` within each group, vectorised: every hole finds its bracketing known rows
    by one search over (group, frame) keys, then numpy's own interpolation rule applies."""
    # Known rows by group, then frame, then row: the stable frame order `interpolate_at` uses.
    known = known[np.lexsort((frames[known], group[known]))]
    low = min(frames[known].min(), frames[holes].min())
    span = max(frames[known].max(), frames[holes].max()) - low + 1
    known_keys = group[known] * span + (frames[known] - low)
    hole_keys = group[holes] * span + (frames[holes] - low)
    first = np.searchsorted(known_keys, group[holes] * span)  # the group's first known row
    last = np.searchsorted(known_keys, (group[holes] + 1) * span) - 1  # and its last
    # np.interp's j: the last known frame <= the hole's frame (-1 before the first).
    j = np.searchsorted(known_keys, hole_keys, side="right") - 1
    x = frames[holes].astype(np.float64)[:, None]
    xs = frames[known].astype(np.float64)
    ys = values[known].astype(np.float64)
    before = j < first
    exact = ~before & ((j == last) | (xs[np.maximum(j, 0)] == x[:, 0]))
    between = ~before & ~exact
    result = np.empty((len(holes), values.shape[1]), dtype=np.float64)
    result[before] = ys[first[before]]
    result[exact] = ys[j[exact]]
    lo, hi = j[between], j[between] + 1
    slope = (ys[hi] - ys[lo]) / (xs[hi] - xs[lo])[:, None]
    result[between] = slope * (x[between] - xs[lo][:, None]) + ys[lo]
    return result.astype(np.float32)

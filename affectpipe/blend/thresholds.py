"""Per-AU decision thresholds: F1 at every grid threshold at once, from cumulative counts.

A probability p falls in bin floor(p * GRID_BINS); the AU is predicted present when its bin
is at least k, i.e. p >= k / GRID_BINS. One bincount gives, for every AU and bin, the rows
and the positive rows; suffix sums then give predicted and true positives at every k.
"""

from __future__ import annotations

import numpy as np

from affectpipe.metrics import f1_from_counts
from affectpipe.tasks import DECISION_THRESHOLD

GRID_BINS = 200  # thresholds k / 200, k = 1..199: steps of 0.005
GRID = np.arange(1, GRID_BINS) / GRID_BINS


def threshold_bins(probs: np.ndarray) -> np.ndarray:
    """Bin index of each probability (float32 arithmetic, the same for search and apply)."""
    bins = (np.asarray(probs, dtype=np.float32) * np.float32(GRID_BINS)).astype(np.int32)
    np.maximum(bins, 0, out=bins)  # in place: cheaper than np.clip at a million rows
    return np.minimum(bins, GRID_BINS - 1, out=bins)


class F1Grid:
    """F1 of each AU at every grid threshold, for fixed labels [N, n_au] (1, 0, -1 missing).

    Labels are encoded once, so each call costs one bincount over the probabilities.
    """

    def __init__(self, labels: np.ndarray):
        labels = np.asarray(labels)
        self.n_au = labels.shape[1]
        self.size = self.n_au * GRID_BINS * 2
        # Slot of an entry: ((au * GRID_BINS + bin) * 2 + label); invalid entries -> `size`.
        self.base = (np.arange(self.n_au, dtype=np.int32) * GRID_BINS * 2)[None, :] + (
            labels == 1
        ).astype(np.int32)
        # An invalid entry's base is `size`, so with any bin it lands at or past `size`;
        # np.minimum then sends it to `size` (cheaper than a boolean-mask assignment).
        invalid = labels < 0
        self.base[invalid] = self.size
        self.has_invalid = bool(invalid.any())
        self.no_label = ~(labels >= 0).any(axis=0)

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        """F1 [len(GRID), n_au]; NaN for an AU with no valid label."""
        slots = threshold_bins(probs)
        slots *= 2
        slots += self.base
        if self.has_invalid:
            np.minimum(slots, self.size, out=slots)
        counts = np.bincount(slots.ravel(), minlength=self.size + 1)[: self.size]
        counts = counts.reshape(self.n_au, GRID_BINS, 2)
        # Suffix sums over bins: predicted / true positives when predicting bins >= k.
        suffix = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1][:, 1:]
        true_pos = suffix[..., 1]
        predicted = suffix[..., 0] + true_pos
        positives = counts[..., 1].sum(axis=1, keepdims=True)
        f1 = f1_from_counts(true_pos, predicted, positives)
        f1[self.no_label] = np.nan
        return f1.T

    def best_mean_f1(self, probs: np.ndarray) -> float:
        """Mean over AUs of the best-threshold F1: the weight-search objective for AUs."""
        return float(self(probs).max(axis=0).mean())


def best_thresholds(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-AU threshold maximising F1 (ties: the one nearest 0.5) and the F1 reached.

    An AU without valid labels keeps 0.5 and gets NaN.
    """
    f1 = F1Grid(labels)(probs)
    closeness = -np.abs(GRID - DECISION_THRESHOLD)
    filled = np.nan_to_num(f1, nan=-1.0)
    # lexsort's last key is the primary one: F1 first, then closeness to 0.5.
    picks = np.array([np.lexsort((closeness, filled[:, a]))[-1] for a in range(f1.shape[1])])
    thresholds = GRID[picks]
    scores = f1[picks, np.arange(f1.shape[1])]
    thresholds[~np.isfinite(scores)] = DECISION_THRESHOLD
    return thresholds, scores


def apply_thresholds(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """0/1 int8 decisions with the search's binning (p >= threshold, on the 0.005 grid)."""
    cut = np.rint(np.asarray(thresholds) * GRID_BINS).astype(np.int32)
    return (threshold_bins(probs) >= cut).astype(np.int8)

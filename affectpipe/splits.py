"""Hold-out by group: every split of rows into parts that keep each group (a video, a person)
whole, so that nothing is scored on frames of a video it was fitted on.

Three splits, each kept exactly as its callers have always made it, since recorded numbers
(out-of-fold predictions, cross-fitted scores, early-stopped models) depend on the assignment:

* `group_kfold`: scikit-learn's `GroupKFold` (no seed: the largest groups first, each to the
  fold with the fewest rows, so folds hold about as many rows). Heads' cross-fit
  (`pipeline heads --folds`, frame and temporal heads) and their regularisation search.
* `video_folds`: the groups shuffled with a seed and dealt to the folds in turn (folds hold
  about as many groups; another seed, other folds). `pipeline blend`'s cross-fit.
* `held_out_groups`: a seeded choice of some groups: the early-stopping videos of the MLP,
  LightGBM and temporal heads.

GroupKFold and the dealt folds differ (for the same groups and fold count they assign other
groups together), so both stay, each where it was used.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def group_kfold(
    rows: np.ndarray, groups: np.ndarray, n_folds: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, held-out rows) of each of `n_folds` folds of `rows`, whose groups are
    `groups` (one per row): scikit-learn's `GroupKFold` assignment, every group held out once."""
    from sklearn.model_selection import GroupKFold

    rows = np.asarray(rows)
    splits = GroupKFold(n_splits=n_folds).split(rows, groups=groups)
    return [(rows[fit], rows[held]) for fit, held in splits]


def video_folds(video_codes: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold number of each row: whole videos go to one fold, shuffled with `seed`."""
    videos, index = np.unique(video_codes, return_inverse=True)
    shuffled = np.random.default_rng(seed).permutation(len(videos))
    fold_of_video = np.empty(len(videos), dtype=np.int64)
    fold_of_video[shuffled] = np.arange(len(videos)) % n_folds
    return fold_of_video[index.ravel()]


def held_out_groups(groups: np.ndarray, n_held: int, seed: Any) -> np.ndarray:
    """`n_held` of the distinct `groups`, chosen with `seed` (an int, None or a
    `numpy.random.Generator`): the ones to hold out."""
    return np.random.default_rng(seed).choice(np.unique(groups), n_held, replace=False)

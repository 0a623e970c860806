"""Regularisation strength chosen on held-out train videos, for small training sets.

A head model that declares ``regularisation = (parameter, grid)`` (weakest first) gets the
grid value with the lowest `Task.held_out_loss` (a proper scoring rule, so the choice also
calibrates its probabilities) over a few folds of whole train videos. Small sets over-fit:
on 61 real photos the default L2 left validation probabilities saturated. Large sets keep
the configured strength, which they barely need, and skip the extra fits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import clone

from affectpipe.splits import group_kfold

REGULARISATION_MAX_ROWS = 20_000  # train rows above which the configured strength is kept
REGULARISATION_FOLDS = 3


def choose_regularisation(
    model: Any,
    task: Any,
    Z: np.ndarray,
    y: np.ndarray,
    train_rows: np.ndarray,
    video: np.ndarray,
    params: dict[str, Any],
) -> dict[str, Any] | None:
    """Set the model's regularisation strength (its `regularisation`: parameter, grid) to
    the grid value with the lowest `task.held_out_loss` over REGULARISATION_FOLDS folds of
    whole train videos; the validation split is never seen. Returns what was chosen and
    the losses, or None where nothing is searched: a model without a grid, a strength the
    candidate's params set, over REGULARISATION_MAX_ROWS train rows or too few videos.
    Ties go to the stronger value (the grid is ordered weakest first)."""
    search = getattr(model, "regularisation", None)
    videos = video[train_rows]
    if (
        search is None
        or search[0].rpartition("__")[2] in params
        or len(train_rows) > REGULARISATION_MAX_ROWS
        or len(np.unique(videos)) < REGULARISATION_FOLDS
    ):
        return None
    name, grid = search
    splits = group_kfold(train_rows, videos, REGULARISATION_FOLDS)
    losses = []
    for value in grid:
        fold_losses = []
        for fit, held in splits:
            trial = clone(model).set_params(**{name: value}).fit(Z[fit], y[fit])
            fold_losses.append(task.held_out_loss(y[held], trial.predict_outputs(Z[held])))
        losses.append(float(np.mean(fold_losses)))
    best = min(range(len(grid)), key=lambda i: (losses[i], -i))
    model.set_params(**{name: grid[best]})
    return {
        "param": name.rpartition("__")[2],
        "value": grid[best],
        "held_out_loss": dict(zip(map(str, grid), losses, strict=True)),
    }

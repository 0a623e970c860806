"""Post-blend corrections tuned on validation: VA affine calibration, EXPR class offsets."""

from __future__ import annotations

import numpy as np

from affectpipe.metrics import N_EXPR, ccc, f1_from_counts

OFFSET_GRID = np.round(np.arange(-1.0, 1.0001, 0.1), 10)  # log-probability biases
OFFSET_ROUNDS = 2
LOG_FLOOR = 1e-6


def fit_affine_ccc(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """(a, b) maximising CCC(y_true, a * y_pred + b) before clipping.

    CCC of an affine map is largest when the prediction's mean and spread match the labels'
    (then it equals Pearson's r): a = sd_true / sd_pred, b = mean_true - a * mean_pred.
    Returns the identity when the correlation is not positive.
    """
    x = np.asarray(y_pred, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.float64)
    sd_x, sd_y = x.std(), y.std()
    if sd_x == 0 or np.mean((x - x.mean()) * (y - y.mean())) <= 0:
        return 1.0, 0.0
    a = sd_y / sd_x
    return float(a), float(y.mean() - a * x.mean())


def apply_affine(values: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    return np.clip(values * scale + shift, -1.0, 1.0).astype(np.float32)


def fit_va_calibration(labels: np.ndarray, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension (scale, shift) for valence and arousal; kept only where it raises CCC."""
    scale, shift = np.ones(2), np.zeros(2)
    for d in range(2):
        a, b = fit_affine_ccc(labels[:, d], preds[:, d])
        before = ccc(labels[:, d], np.clip(preds[:, d], -1, 1))
        after = ccc(labels[:, d], np.clip(a * preds[:, d] + b, -1, 1))
        if after > before:
            scale[d], shift[d] = a, b
    return scale, shift


def log_probs(probs: np.ndarray) -> np.ndarray:
    out = np.maximum(np.asarray(probs, dtype=np.float32), np.float32(LOG_FLOOR))
    return np.log(out, out=out)  # in place: one [N, K] array, not two


def macro_f1_from_pairs(y_true: np.ndarray, y_pred: np.ndarray, n_sets: int = 1) -> np.ndarray:
    """Macro F1 over the 8 codes for `n_sets` stacked prediction sets, from one bincount.

    `y_true` [N]; `y_pred` [n_sets, N]. Same counts as `affectpipe.metrics.expr_f1`.
    """
    n = len(y_true)
    code = (np.arange(n_sets)[:, None] * N_EXPR + y_pred) * N_EXPR + y_true[None, :]
    conf = np.bincount(code.ravel(), minlength=n_sets * N_EXPR * N_EXPR)
    conf = conf.reshape(n_sets, N_EXPR, N_EXPR)  # [set, pred, true]
    return macro_f1_from_confusion(conf) if n > 0 else np.full(n_sets, np.nan)


def macro_f1_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Macro F1 of each confusion matrix [set, pred, true] (counts)."""
    tp = np.diagonal(conf, axis1=1, axis2=2)
    return f1_from_counts(tp, conf.sum(axis=2), conf.sum(axis=1)).mean(axis=1)


def fit_expr_offsets(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-class biases on log-probabilities by coordinate ascent on macro F1, and the F1.

    Each pass tries the whole offset grid for one class at once; only strict improvements
    are taken, so offsets stay at 0 when they do not help.
    """
    scores = log_probs(probs)
    offsets = np.zeros(N_EXPR)
    best = float(macro_f1_from_pairs(labels, np.argmax(scores, axis=1)[None])[0])
    n_grid = len(OFFSET_GRID)
    for _ in range(OFFSET_ROUNDS):
        improved = False
        for c in range(N_EXPR):
            shifted = scores + offsets
            shifted[:, c] = -np.inf
            best_other = shifted.max(axis=1)
            other_class = shifted.argmax(axis=1)
            wins = scores[:, c][None, :] + OFFSET_GRID[:, None] > best_other[None, :]
            # A row's decision flips from its best other class to c at one grid step (the
            # sum of a row and an increasing grid increases): count rows by that step, other
            # class and label, then cumulate over the grid.
            flip = n_grid - wins.sum(axis=0)
            key = (flip * N_EXPR + other_class) * N_EXPR + labels
            counts = np.bincount(key, minlength=(n_grid + 1) * N_EXPR * N_EXPR)
            counts = counts.reshape(n_grid + 1, N_EXPR, N_EXPR)
            # At grid step g, rows flipping after g keep their other class ...
            conf = np.cumsum(counts[::-1], axis=0)[::-1][1:]
            # ... and rows flipping at or before it predict c.
            conf[:, c, :] += np.cumsum(counts.sum(axis=1), axis=0)[:n_grid]
            f1 = macro_f1_from_confusion(conf)
            # Among the best, take the offset nearest 0.
            order = np.lexsort((-np.abs(OFFSET_GRID), f1))
            pick = order[-1]
            if f1[pick] > best + 1e-9:
                best, offsets[c], improved = float(f1[pick]), OFFSET_GRID[pick], True
        if not improved:
            break
    return offsets, best


def apply_expr_offsets(probs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return np.argmax(log_probs(probs) + offsets, axis=1).astype(np.int8)

"""ABAW metrics, the one implementation every stage uses (abaw-formats.md §4).

All functions mask by label validity: valence/arousal NaN (or the -5 sentinel), expression
< 0, AU < 0 are ignored. When nothing valid is left the score is NaN, never a silent 0.
CCC uses population statistics (ddof=0).
"""

from __future__ import annotations

import numpy as np

from affectpipe.schema import VA_MISSING_SENTINEL

N_EXPR = 8
N_AU = 12


def _valid_va(values: np.ndarray) -> np.ndarray:
    return np.isfinite(values) & (values > VA_MISSING_SENTINEL)


def ccc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Concordance correlation coefficient over the valid entries of `y_true` (NaN if none)."""
    y_true = np.asarray(y_true, dtype=np.float64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.float64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"shape mismatch: {y_true.shape} vs {y_pred.shape}")
    mask = _valid_va(y_true)
    if not mask.any():
        return float("nan")
    x, y = y_true[mask], y_pred[mask]
    mean_x, mean_y = x.mean(), y.mean()
    cov = np.mean((x - mean_x) * (y - mean_y))
    denom = x.var() + y.var() + (mean_x - mean_y) ** 2
    return float(2.0 * cov / denom) if denom > 0 else float("nan")


def va_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """CCC of valence and arousal ([N, 2] arrays) and P_VA, their mean.

    A row counts for VA only when both valence and arousal are valid (the ABAW convention).
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    rows = _valid_va(y_true).all(axis=1)
    ccc_v = ccc(y_true[rows, 0], y_pred[rows, 0])
    ccc_a = ccc(y_true[rows, 1], y_pred[rows, 1])
    return {"ccc_valence": ccc_v, "ccc_arousal": ccc_a, "p_va": (ccc_v + ccc_a) / 2.0}


def f1_from_counts(true_pos: np.ndarray, predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """F1 = 2 TP / (predicted positives + actual positives), 0 where both are 0; elementwise,
    so the blend's grid searches count once and score many decisions with it."""
    denom = predicted + actual
    out = np.zeros(np.shape(true_pos), dtype=np.float64)
    return np.divide(2.0 * true_pos, denom, out=out, where=denom > 0)


def expr_f1_per_class(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """One-vs-rest F1 of each of the 8 ABAW codes over rows with a valid expression label."""
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    mask = y_true >= 0
    if not mask.any():
        return np.full(N_EXPR, np.nan)
    t, p = y_true[mask], y_pred[mask]
    classes = np.arange(N_EXPR)[:, None]
    tp = ((t == classes) & (p == classes)).sum(axis=1)
    return f1_from_counts(tp, (p == classes).sum(axis=1), (t == classes).sum(axis=1))


def expr_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """P_EXPR: macro F1 over the 8 codes; an absent class counts as 0, the divisor stays 8."""
    return float(expr_f1_per_class(y_true, y_pred).mean())


def expr_f1_present(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro F1 over the codes that occur among the valid labels (NaN if none): beside
    P_EXPR for data with fewer than 8 classes, where an absent class's 0 caps P_EXPR."""
    y_true = np.asarray(y_true).ravel()
    present = np.bincount(y_true[y_true >= 0], minlength=N_EXPR)[:N_EXPR] > 0
    if not present.any():
        return float("nan")
    return float(expr_f1_per_class(y_true, y_pred)[present].mean())


def au_f1_per_au(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Binary F1 (positive = 1) of each AU column over its valid rows; NaN for an AU with none."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 2:
        raise ValueError(f"expected two equal [N, n_au] arrays, got {y_true.shape}, {y_pred.shape}")
    valid = y_true >= 0
    pos_true = (y_true == 1) & valid
    pos_pred = (y_pred == 1) & valid
    tp = (pos_true & pos_pred).sum(axis=0)
    f1 = f1_from_counts(tp, pos_pred.sum(axis=0), pos_true.sum(axis=0))
    f1[~valid.any(axis=0)] = np.nan
    return f1


def au_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """P_AU: mean binary F1 over the AUs (NaN if any AU has no valid label)."""
    return float(au_f1_per_au(y_true, y_pred).mean())


def au_f1_present(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean F1 over the AUs with at least one positive valid label (NaN if none): beside
    P_AU for data where some AUs never occur (their F1 is 0 by definition)."""
    present = (np.asarray(y_true) == 1).any(axis=0)
    if not present.any():
        return float("nan")
    return float(au_f1_per_au(y_true, y_pred)[present].mean())


def mtl_score(p_va: float, p_expr: float, p_au: float) -> float:
    """P_MTL = P_VA + P_EXPR + P_AU (ABAW3/4/7)."""
    return float(p_va + p_expr + p_au)

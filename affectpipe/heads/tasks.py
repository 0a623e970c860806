"""The three ABAW tasks as data: targets from the manifest, validity masks, weights, scores.

Missing labels (NaN / -5 VA, -1 expression, -1 AU) never reach a loss: a VA row counts only
when both values are valid (the ABAW convention); an expression row when its code is >= 0;
an AU row when at least one AU is labelled, and each missing AU entry is masked in the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from affectpipe import metrics
from affectpipe.errors import InputError
from affectpipe.schema import AU_COLUMNS, PRED_COLUMNS, TASKS, VA_COLUMNS, VA_MISSING_SENTINEL


@dataclass(frozen=True)
class Task:
    """A task's labels and scores; one subclass per task (no `if task == ...` chains)."""

    name: str
    n_outputs: int
    main_metric: str

    @property
    def pred_columns(self) -> tuple[str, ...]:
        return PRED_COLUMNS[self.name]

    def targets(self, manifest: pd.DataFrame) -> np.ndarray:
        """The task's labels for every manifest row (missing entries kept as such)."""
        raise NotImplementedError

    def valid_rows(self, y: np.ndarray) -> np.ndarray:
        """Rows that carry a usable label for this task."""
        raise NotImplementedError

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
        """Validation metrics of predictions (VA values or probabilities) via affectpipe.metrics."""
        raise NotImplementedError

    def held_out_loss(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        """Lower is better: what choosing a head's regularisation on held-out train rows
        minimises (a proper scoring rule for probabilities, so the choice calibrates)."""
        raise NotImplementedError


class VATask(Task):
    def targets(self, manifest: pd.DataFrame) -> np.ndarray:
        return manifest[list(VA_COLUMNS)].to_numpy(dtype=np.float32)

    def valid_rows(self, y: np.ndarray) -> np.ndarray:
        return (np.isfinite(y) & (y > VA_MISSING_SENTINEL)).all(axis=1)

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
        return metrics.va_scores(y_true, y_pred)

    def held_out_loss(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        p_va = metrics.va_scores(y_true, y_pred)["p_va"]
        return 1.0 - p_va if np.isfinite(p_va) else np.inf


class ExprTask(Task):
    def targets(self, manifest: pd.DataFrame) -> np.ndarray:
        return manifest["expression"].to_numpy(dtype=np.int64)

    def valid_rows(self, y: np.ndarray) -> np.ndarray:
        return y >= 0

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
        decided = y_pred.argmax(axis=1)
        return {
            "p_expr": metrics.expr_f1(y_true, decided),
            "p_expr_present": metrics.expr_f1_present(y_true, decided),
        }

    def held_out_loss(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        """Class-balanced cross-entropy: each class present weighs the same."""
        nll = -np.log(np.clip(y_pred[np.arange(len(y_true)), y_true], 1e-7, 1.0))
        return float(np.mean([nll[y_true == c].mean() for c in np.unique(y_true)]))


class AUTask(Task):
    def targets(self, manifest: pd.DataFrame) -> np.ndarray:
        return manifest[list(AU_COLUMNS)].to_numpy(dtype=np.int64)

    def valid_rows(self, y: np.ndarray) -> np.ndarray:
        return (y >= 0).any(axis=1)

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
        decided = (y_pred >= 0.5).astype(np.int64)
        return {
            "p_au": metrics.au_f1(y_true, decided),
            "p_au_present": metrics.au_f1_present(y_true, decided),
        }

    def held_out_loss(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        """Binary cross-entropy over the valid AU entries, averaged per AU."""
        p = np.clip(y_pred, 1e-7, 1 - 1e-7)
        bce = -np.where(y_true == 1, np.log(p), np.log(1 - p))
        valid = y_true >= 0
        per_au = [bce[valid[:, a], a].mean() for a in range(y_true.shape[1]) if valid[:, a].any()]
        return float(np.mean(per_au)) if per_au else np.inf


TASK_DEFS: dict[str, Task] = {
    "va": VATask("va", 2, "p_va"),
    "expr": ExprTask("expr", metrics.N_EXPR, "p_expr"),
    "au": AUTask("au", metrics.N_AU, "p_au"),
}


def get_task(name: str) -> Task:
    if name not in TASK_DEFS:
        raise InputError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASK_DEFS[name]


def class_weights(y: np.ndarray, n_classes: int = metrics.N_EXPR) -> np.ndarray:
    """Expression class weights max_c N_c / N_y from train counts (0 for an absent class)."""
    counts = np.bincount(y[y >= 0], minlength=n_classes).astype(np.float64)
    weights = np.zeros(n_classes)
    present = counts > 0
    weights[present] = counts.max() / counts[present]
    return weights


def pos_weights(y: np.ndarray) -> np.ndarray:
    """AU positive weights N / (2 * positives) over each AU's labelled rows (1 if no positive)."""
    valid = y >= 0
    labelled = valid.sum(axis=0).astype(np.float64)
    positives = ((y == 1) & valid).sum(axis=0).astype(np.float64)
    return np.divide(labelled, 2.0 * positives, out=np.ones_like(labelled), where=positives > 0)

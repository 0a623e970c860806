"""The three ABAW tasks, each defined once: what every stage asks about a task lives here.

A `Task` holds its label columns, validity rules, output width and activation, loss, default
decision, metrics and prediction columns. heads, blend (`blend.task_rules` composes its
correction and smoothing policies onto these objects), index summaries, metrics and predict
receive task objects; no stage branches on a task's name.

Missing labels (NaN / -5 VA, -1 expression, -1 AU) never reach a loss or a score: a VA row
counts only when both values are valid (the ABAW convention); an expression row when its code
is >= 0; an AU row when at least one AU is labelled (`valid_rows`), or, strictly, all 12
(`valid_rows(y, strict=True)`), and each missing AU entry is masked in the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from affectpipe import metrics
from affectpipe.errors import InputError
from affectpipe.schema import (
    AU_COLUMNS,
    EXPR_NAMES,
    PRED_COLUMNS,
    TASKS,
    VA_COLUMNS,
    VA_MISSING_SENTINEL,
)

if TYPE_CHECKING:  # torch is imported only by the methods that train (heads, finetune)
    import torch

# The default AU decision (a probability at or above it is "active") before blend tunes
# per-AU thresholds.
DECISION_THRESHOLD = 0.5

# (LightGBM objective params, label, sample weight or None) of one booster.
BoosterJob = tuple[dict[str, Any], np.ndarray, np.ndarray | None]


@dataclass(frozen=True)
class Task:
    """One task's labels, outputs and scores; one subclass per task."""

    name: str
    n_outputs: int
    main_metric: str
    # Macro over the classes / AUs present in the labels, shown beside the ABAW metric when
    # some are absent; never tuned. None where every item is always scored (VA).
    present_metric: str | None
    label_columns: tuple[str, ...]
    items: str  # what the per-item scores are over, for reports: dimensions, classes, AUs
    item_metric: str  # the per-item score: CCC or F1
    # True for a regression task: outputs are the values themselves (no probabilities), and
    # a linear head is a closed-form ridge.
    is_regression: bool = False
    # True where each row has exactly one class: outputs are class probabilities summing to
    # one, decided by arg-max (the blend's prior and gating stages need that).
    exclusive_classes: bool = False

    @property
    def pred_columns(self) -> tuple[str, ...]:
        return PRED_COLUMNS[self.name]

    def targets(self, manifest: pd.DataFrame) -> np.ndarray:
        """The task's labels for every manifest row (missing entries kept as such)."""
        raise NotImplementedError

    def valid_rows(self, y: np.ndarray, strict: bool = False) -> np.ndarray:
        """Rows that carry a usable label (strict: every label column of the row is valid)."""
        raise NotImplementedError

    def decide(self, outputs: np.ndarray) -> np.ndarray:
        """The default decision on outputs: values, a class code, or 0/1 per AU."""
        raise NotImplementedError

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
        """Validation metrics of outputs (VA values or probabilities) via affectpipe.metrics,
        with the default decision."""
        raise NotImplementedError

    def held_out_loss(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        """Lower is better: what choosing a head's regularisation on held-out train rows
        minimises (a proper scoring rule for probabilities, so the choice calibrates)."""
        raise NotImplementedError

    # --- training (torch is imported here, not at module import) ---------------------------
    def activate(self, raw: torch.Tensor) -> np.ndarray:
        """Outputs from a network's raw outputs (tanh, softmax or sigmoid)."""
        raise NotImplementedError

    def raw_from_outputs(self, outputs: np.ndarray) -> np.ndarray:
        """The inverse of `activate` (up to a per-row shift for softmax, which it ignores):
        pre-activation values a sequence model can add a correction to."""
        raise NotImplementedError

    def target_tensor(self, y: np.ndarray) -> torch.Tensor:
        import torch

        dtype = torch.float32 if self.is_regression else torch.int64
        return torch.as_tensor(y, dtype=dtype)

    def loss(
        self, y: np.ndarray, focal_gamma: float, class_weighting: bool, device: Any = "cpu"
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The loss as f(raw outputs, target), with weights from the train labels `y` (as
        tensors on `device`, where the outputs are)."""
        raise NotImplementedError

    # --- gradient-boosted trees: one booster per independent output -------------------------
    @property
    def n_boosters(self) -> int:
        return self.n_outputs

    def booster_targets(self, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(label, 1 where labelled else 0) of each booster."""
        raise NotImplementedError

    def booster_jobs(self, y: np.ndarray, class_weighting: bool) -> list[BoosterJob]:
        """(objective, label, sample weight) of each booster, on the train labels."""
        raise NotImplementedError

    def join_boosters(self, outs: list[np.ndarray]) -> np.ndarray:
        """The boosters' predictions as the task's outputs."""
        raise NotImplementedError


class VATask(Task):
    def targets(self, manifest: pd.DataFrame) -> np.ndarray:
        return manifest[list(VA_COLUMNS)].to_numpy(dtype=np.float32)

    def valid_rows(self, y: np.ndarray, strict: bool = False) -> np.ndarray:
        # Both values, strict or not: CCC is computed over rows with both (ABAW).
        return (np.isfinite(y) & (y > VA_MISSING_SENTINEL)).all(axis=1)

    def decide(self, outputs: np.ndarray) -> np.ndarray:
        return outputs

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
        return metrics.va_scores(y_true, y_pred)

    def held_out_loss(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        p_va = metrics.va_scores(y_true, y_pred)["p_va"]
        return 1.0 - p_va if np.isfinite(p_va) else np.inf

    def activate(self, raw: torch.Tensor) -> np.ndarray:
        import torch

        return torch.tanh(raw).numpy()

    def raw_from_outputs(self, outputs: np.ndarray) -> np.ndarray:
        return np.arctanh(np.clip(np.asarray(outputs, dtype=np.float32), -0.995, 0.995))

    def loss(
        self, y: np.ndarray, focal_gamma: float, class_weighting: bool, device: Any = "cpu"
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        import torch

        from affectpipe.heads import losses

        return lambda out, t: losses.ccc_loss(torch.tanh(out), t)

    def booster_targets(self, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        columns = [np.ascontiguousarray(y[:, j]) for j in range(2)]  # LightGBM copies views
        return [(col, np.isfinite(col).astype(np.float64)) for col in columns]

    def booster_jobs(self, y: np.ndarray, class_weighting: bool) -> list[BoosterJob]:
        return [({"objective": "regression"}, label, None) for label, _ in self.booster_targets(y)]

    def join_boosters(self, outs: list[np.ndarray]) -> np.ndarray:
        return np.clip(np.stack(outs, axis=1).astype(np.float32), -1.0, 1.0)


class ExprTask(Task):
    def targets(self, manifest: pd.DataFrame) -> np.ndarray:
        return manifest["expression"].to_numpy(dtype=np.int64)

    def valid_rows(self, y: np.ndarray, strict: bool = False) -> np.ndarray:
        return y >= 0

    def decide(self, outputs: np.ndarray) -> np.ndarray:
        return outputs.argmax(axis=1)

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
        decided = self.decide(y_pred)
        return {
            "p_expr": metrics.expr_f1(y_true, decided),
            "p_expr_present": metrics.expr_f1_present(y_true, decided),
        }

    def held_out_loss(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        """Class-balanced cross-entropy: each class present weighs the same."""
        nll = -np.log(np.clip(y_pred[np.arange(len(y_true)), y_true], 1e-7, 1.0))
        return float(np.mean([nll[y_true == c].mean() for c in np.unique(y_true)]))

    def activate(self, raw: torch.Tensor) -> np.ndarray:
        import torch

        return torch.softmax(raw, dim=1).numpy()

    def raw_from_outputs(self, outputs: np.ndarray) -> np.ndarray:
        return np.log(np.clip(np.asarray(outputs, dtype=np.float32), 1e-6, 1.0 - 1e-6))

    def loss(
        self, y: np.ndarray, focal_gamma: float, class_weighting: bool, device: Any = "cpu"
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        import torch

        from affectpipe.heads import losses

        weights = class_weights(y) if class_weighting else np.ones(self.n_outputs)
        w = torch.tensor(weights, dtype=torch.float32, device=device)
        return lambda out, t: losses.expr_loss(out, t, w, focal_gamma)

    @property
    def n_boosters(self) -> int:
        return 1  # one multiclass booster

    def booster_targets(self, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(y, (y >= 0).astype(np.float64))]

    def booster_jobs(self, y: np.ndarray, class_weighting: bool) -> list[BoosterJob]:
        weights = class_weights(y) if class_weighting else np.ones(self.n_outputs)
        objective = {"objective": "multiclass", "num_class": self.n_outputs}
        return [(objective, y, weights[y])]

    def join_boosters(self, outs: list[np.ndarray]) -> np.ndarray:
        return outs[0].astype(np.float32)


class AUTask(Task):
    def targets(self, manifest: pd.DataFrame) -> np.ndarray:
        return manifest[list(AU_COLUMNS)].to_numpy(dtype=np.int64)

    def valid_rows(self, y: np.ndarray, strict: bool = False) -> np.ndarray:
        valid = y >= 0
        return valid.all(axis=1) if strict else valid.any(axis=1)

    def decide(self, outputs: np.ndarray) -> np.ndarray:
        return (outputs >= DECISION_THRESHOLD).astype(np.int64)

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
        decided = self.decide(y_pred)
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

    def activate(self, raw: torch.Tensor) -> np.ndarray:
        import torch

        return torch.sigmoid(raw).numpy()

    def raw_from_outputs(self, outputs: np.ndarray) -> np.ndarray:
        clipped = np.clip(np.asarray(outputs, dtype=np.float32), 1e-6, 1.0 - 1e-6)
        return np.log(clipped) - np.log1p(-clipped)

    def loss(
        self, y: np.ndarray, focal_gamma: float, class_weighting: bool, device: Any = "cpu"
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        import torch

        from affectpipe.heads import losses

        weights = pos_weights(y) if class_weighting else np.ones(y.shape[1])
        pw = torch.tensor(weights, dtype=torch.float32, device=device)
        return lambda out, t: losses.au_loss(out, t, pw)

    def booster_targets(self, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(np.maximum(col, 0), (col >= 0).astype(np.float64)) for col in y.T]

    def booster_jobs(self, y: np.ndarray, class_weighting: bool) -> list[BoosterJob]:
        pw = pos_weights(y) if class_weighting else np.ones(y.shape[1])
        return [
            ({"objective": "binary"}, label, labelled * np.where(label == 1, pw[j], 1.0))
            for j, (label, labelled) in enumerate(self.booster_targets(y))
        ]

    def join_boosters(self, outs: list[np.ndarray]) -> np.ndarray:
        return np.stack(outs, axis=1).astype(np.float32)


TASK_DEFS: dict[str, Task] = {
    "va": VATask("va", len(VA_COLUMNS), "p_va", None, VA_COLUMNS, "dimensions", "CCC", True),
    "expr": ExprTask(
        "expr",
        len(EXPR_NAMES),
        "p_expr",
        "p_expr_present",
        ("expression",),
        "classes",
        "F1",
        exclusive_classes=True,
    ),
    "au": AUTask("au", len(AU_COLUMNS), "p_au", "p_au_present", AU_COLUMNS, "AUs", "F1"),
}


def get_task(name: str) -> Task:
    if name not in TASK_DEFS:
        raise InputError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASK_DEFS[name]


def class_weights(y: np.ndarray, n_classes: int = len(EXPR_NAMES)) -> np.ndarray:
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

"""Blend policies composed onto the task objects (`affectpipe.tasks`): weight groups and their
objectives, the post-blend correction, smoothing windows, per-item report rows.

Each rules object holds its `Task` (labels, validity, metrics come from there, once) and turns
blended continuous outputs (VA values, class or AU probabilities) into challenge outputs,
tunes its post-blend correction and scores with `affectpipe.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from affectpipe import metrics, tasks
from affectpipe.blend import calibration, thresholds
from affectpipe.schema import AU_COLUMNS, EXPR_NAMES, VA_COLUMNS


@dataclass(frozen=True)
class WeightGroup:
    """Output columns that share one weight vector, and the objective they are tuned on."""

    name: str
    columns: slice


class _Rules:
    """What every task's rules take from its `Task`."""

    task: tasks.Task

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def present_metric(self) -> str | None:
        return self.task.present_metric

    @property
    def items(self) -> str:
        return self.task.items

    def labels(self, manifest: pd.DataFrame) -> np.ndarray:
        return self.task.targets(manifest)

    def labelled(self, labels: np.ndarray) -> np.ndarray:
        return self.task.valid_rows(labels)


class VaRules(_Rules):
    task = tasks.get_task("va")
    post_name = "calibration"
    groups = (WeightGroup("valence", slice(0, 1)), WeightGroup("arousal", slice(1, 2)))
    windows = (0, 3, 6, 12, 25, 50, 100)
    retune_windows: int | None = None  # calibration re-tuned at every smoothing window

    def objective(self, labels: np.ndarray, group: WeightGroup):
        # float64 once here, not in each of the weight search's many calls (same values)
        target = labels[:, group.columns][:, 0].astype(np.float64)
        return lambda values: metrics.ccc(target, np.clip(values[:, 0], -1, 1))

    def prior(self, labels: np.ndarray) -> np.ndarray:
        rows = self.labelled(labels)
        return labels[rows].mean(axis=0) if rows.any() else np.zeros(2, np.float32)

    def fit_post(self, labels: np.ndarray, values: np.ndarray) -> tuple[dict[str, Any], float]:
        scale, shift = calibration.fit_va_calibration(labels, values)
        post = {"scale": scale.tolist(), "shift": shift.tolist()}
        return post, self.score(labels, self.decide(values, post))

    def identity_post(self) -> dict[str, Any]:
        return {"scale": [1.0, 1.0], "shift": [0.0, 0.0]}

    def decide(self, values: np.ndarray, post: dict[str, Any]) -> np.ndarray:
        return calibration.apply_affine(values, np.array(post["scale"]), np.array(post["shift"]))

    def table(self, continuous: np.ndarray, decided: np.ndarray) -> dict[str, np.ndarray]:
        """Named output columns (`pipeline predict`): the calibrated values."""
        return {c: decided[:, i] for i, c in enumerate(VA_COLUMNS)}

    def details(self, labels: np.ndarray, outputs: np.ndarray) -> dict[str, Any]:
        return metrics.va_scores(labels, outputs)

    def score(self, labels: np.ndarray, outputs: np.ndarray) -> float:
        return metrics.va_scores(labels, outputs)["p_va"]

    def per_item(self, details: dict[str, Any]) -> dict[str, float]:
        return {"valence": details["ccc_valence"], "arousal": details["ccc_arousal"]}

    def support(self, labels: np.ndarray) -> dict[str, int]:
        """Labelled rows per item (CCC needs rows with both values)."""
        n = int(self.labelled(labels).sum())
        return {"valence": n, "arousal": n}


class ExprRules(_Rules):
    task = tasks.get_task("expr")
    post_name = "offsets"
    groups = (WeightGroup("expression", slice(0, len(EXPR_NAMES))),)
    windows = (0, 3, 6, 12, 25, 50, 100)
    # Offsets re-tuned only for the 3 windows that score best with the unsmoothed offsets
    # (the offset search is the costliest correction).
    retune_windows: int | None = 3

    def objective(self, labels: np.ndarray, group: WeightGroup):
        return lambda probs: float(
            calibration.macro_f1_from_pairs(labels, np.argmax(probs, axis=1)[None])[0]
        )

    def prior(self, labels: np.ndarray) -> np.ndarray:
        counts = np.bincount(labels[labels >= 0], minlength=len(EXPR_NAMES)).astype(np.float32)
        return counts / counts.sum() if counts.sum() else np.full(8, 1 / 8, np.float32)

    def fit_post(self, labels: np.ndarray, probs: np.ndarray) -> tuple[dict[str, Any], float]:
        offsets, f1 = calibration.fit_expr_offsets(labels, probs)
        return {"offsets": offsets.tolist()}, f1

    def identity_post(self) -> dict[str, Any]:
        return {"offsets": [0.0] * len(EXPR_NAMES)}

    def decide(self, probs: np.ndarray, post: dict[str, Any]) -> np.ndarray:
        return calibration.apply_expr_offsets(probs, np.array(post["offsets"]))

    def table(self, continuous: np.ndarray, decided: np.ndarray) -> dict[str, np.ndarray]:
        """Named output columns (`pipeline predict`): the ABAW code and the probabilities."""
        probs = {f"p_{name}": continuous[:, i] for i, name in enumerate(EXPR_NAMES)}
        return {"expression": decided, **probs}

    def details(self, labels: np.ndarray, outputs: np.ndarray) -> dict[str, Any]:
        per_class = metrics.expr_f1_per_class(labels, outputs)
        return {
            "p_expr": float(np.mean(per_class)),
            "p_expr_present": metrics.expr_f1_present(labels, outputs),
            "f1_per_class": dict(zip(EXPR_NAMES, per_class.tolist(), strict=True)),
        }

    def score(self, labels: np.ndarray, outputs: np.ndarray) -> float:
        return metrics.expr_f1(labels, outputs)

    def per_item(self, details: dict[str, Any]) -> dict[str, float]:
        return dict(details["f1_per_class"])

    def support(self, labels: np.ndarray) -> dict[str, int]:
        """Rows labelled with each class (a class without any has F1 0 by definition)."""
        counts = np.bincount(labels[labels >= 0], minlength=len(EXPR_NAMES))
        return dict(zip(EXPR_NAMES, counts.tolist(), strict=True))


class AuRules(_Rules):
    task = tasks.get_task("au")
    post_name = "thresholds"
    groups = (WeightGroup("aus", slice(0, len(AU_COLUMNS))),)
    windows = (0, 1, 2, 4, 8, 16)
    retune_windows: int | None = None  # thresholds re-tuned at every smoothing window

    def objective(self, labels: np.ndarray, group: WeightGroup):
        # Thresholds are tuned after blending, so weigh mixes by their best-threshold F1.
        return thresholds.F1Grid(labels).best_mean_f1

    def prior(self, labels: np.ndarray) -> np.ndarray:
        valid = labels >= 0
        positives = ((labels == 1) & valid).sum(axis=0)
        counts = valid.sum(axis=0)
        return np.where(counts > 0, positives / np.maximum(counts, 1), 0.5).astype(np.float32)

    def fit_post(self, labels: np.ndarray, probs: np.ndarray) -> tuple[dict[str, Any], float]:
        tuned, f1 = thresholds.best_thresholds(probs, labels)
        return {"thresholds": tuned.tolist()}, float(f1.mean())

    def identity_post(self) -> dict[str, Any]:
        return {"thresholds": [tasks.DECISION_THRESHOLD] * len(AU_COLUMNS)}

    def decide(self, probs: np.ndarray, post: dict[str, Any]) -> np.ndarray:
        return thresholds.apply_thresholds(probs, np.array(post["thresholds"]))

    def table(self, continuous: np.ndarray, decided: np.ndarray) -> dict[str, np.ndarray]:
        """Named output columns (`pipeline predict`): 0/1 per AU, then the probabilities."""
        flags = {c: decided[:, i] for i, c in enumerate(AU_COLUMNS)}
        return {**flags, **{f"p_{c}": continuous[:, i] for i, c in enumerate(AU_COLUMNS)}}

    def details(self, labels: np.ndarray, outputs: np.ndarray) -> dict[str, Any]:
        per_au = metrics.au_f1_per_au(labels, outputs)
        return {
            "p_au": float(np.mean(per_au)),
            "p_au_present": metrics.au_f1_present(labels, outputs),
            "f1_per_au": dict(zip(AU_COLUMNS, per_au.tolist(), strict=True)),
        }

    def score(self, labels: np.ndarray, outputs: np.ndarray) -> float:
        return metrics.au_f1(labels, outputs)

    def per_item(self, details: dict[str, Any]) -> dict[str, float]:
        return dict(details["f1_per_au"])

    def support(self, labels: np.ndarray) -> dict[str, int]:
        """Positive labels per AU (an AU without any has F1 0 by definition)."""
        return dict(zip(AU_COLUMNS, (labels == 1).sum(axis=0).tolist(), strict=True))


TaskRules = VaRules | ExprRules | AuRules
RULES: dict[str, TaskRules] = {r.task.name: r for r in (VaRules(), ExprRules(), AuRules())}


def rules_for(task: str) -> TaskRules:
    if task not in RULES:
        raise ValueError(f"unknown task {task!r}")
    return RULES[task]

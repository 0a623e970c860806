"""Tune one task's blend on validation rows and apply it: weights, correction, smoothing.

Stages, in the order they are applied: weighted mix of candidates -> smoothing along each
video -> the task's correction (VA calibration, EXPR offsets or AU thresholds) -> decision.
They are tuned in the order of the report's table: weights, then the correction on the
unsmoothed mix, then the smoothing window, re-tuning the correction for each window (EXPR
keeps its offsets during the window search and re-tunes them once for the chosen window,
as its offset search is the costliest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from affectpipe.blend.smoothing import KERNELS, VideoOrder, smooth
from affectpipe.blend.tasks import TaskRules
from affectpipe.blend.weights import greedy_weights, mix

TOL = 1e-5


@dataclass(frozen=True)
class BlendOptions:
    """Which optional stages run, and how the honest estimate is made."""

    correction: bool = True  # VA calibration / EXPR offsets (AU thresholds always run)
    smoothing: bool = True
    kernels: tuple[str, ...] = KERNELS
    max_steps: int = 20
    crossfit_folds: int = 3
    seed: int = 0
    n_jobs: int = 1  # processes for the full fit and the cross-fit folds (1: in-process)
    # "best": the blend unless the cross-fitted best single candidate beats it; "blend": always
    prefer: str = "best"


@dataclass
class TaskBlend:
    """A tuned blend of one task: everything needed to apply it to new rows."""

    task: str
    weights: np.ndarray  # [n_groups, M]
    kernel: str
    half_width: int  # 0 = no smoothing
    post: dict[str, Any]
    stage_scores: dict[str, float] = field(default_factory=dict)

    def to_json(self, candidates: list[str], rules: TaskRules) -> dict[str, Any]:
        return {
            "weights": {
                group.name: {
                    name: float(w) for name, w in zip(candidates, row, strict=True) if w > 0
                }
                for group, row in zip(rules.groups, self.weights, strict=True)
            },
            "smoothing": {"kernel": self.kernel, "half_width": self.half_width},
            rules.post_name: self.post,
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any], rules: TaskRules) -> tuple[TaskBlend, list[str]]:
        """The blend a task's `blend.json` entry records (the one its submission used: the
        blend or the best single candidate), over the candidates it weights; and their names.

        Raises ValueError on a malformed entry.
        """
        weights = entry["weights"]
        groups = [weights[group.name] for group in rules.groups]
        names = [n for n in entry["candidates"] if any(n in g for g in groups)]
        matrix = np.array([[float(g.get(n, 0.0)) for n in names] for g in groups])
        if not names or not np.isfinite(matrix).all() or (matrix < 0).any():
            raise ValueError(f"{rules.name}: no usable blend weights")
        smoothing = entry["smoothing"]
        blend = cls(
            rules.name,
            matrix,
            str(smoothing["kernel"]),
            int(smoothing["half_width"]),
            dict(entry[rules.post_name]),
        )
        return blend, names


def blend_values(rules: TaskRules, candidates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mix candidates [M, N, K] with per-group weights -> [N, K] continuous outputs."""
    out = np.empty(candidates.shape[1:], dtype=np.float32)
    for group, row in zip(rules.groups, weights, strict=True):
        out[:, group.columns] = mix(candidates[:, :, group.columns], row)
    return out


def apply_tuned(
    rules: TaskRules, fitted: TaskBlend, candidates: np.ndarray, order: VideoOrder | None
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a tuned blend to candidate outputs [M, N, K]: (continuous [N, K], decided).

    The one place where tuned parameters meet new rows, used by `blend` (validation and
    submission rows) and `predict` alike: the weighted mix, the smoothing along each video
    (skipped when `order` is None: rows that are not frames of a video), then the task's
    correction and decision (VA calibration, EXPR offsets, AU thresholds). Continuous outputs
    are what comes before the correction (blended, smoothed values or probabilities).
    """
    continuous = blend_values(rules, candidates, fitted.weights)
    if order is not None:
        continuous = smooth(continuous, order, fitted.kernel, fitted.half_width)
    return continuous, rules.decide(continuous, fitted.post)


def fit_task(
    rules: TaskRules,
    candidates: np.ndarray,
    labels: np.ndarray,
    order: VideoOrder,
    options: BlendOptions,
) -> TaskBlend:
    """Tune weights, correction and smoothing on these rows (all of them: tuned = scored)."""
    labelled = rules.labelled(labels)
    lab_labels = labels[labelled]
    lab_cands = candidates[:, labelled]
    weights = np.stack(
        [
            greedy_weights(
                lab_cands[:, :, g.columns],
                rules.objective(lab_labels, g),
                max_steps=options.max_steps,
            )[0]
            for g in rules.groups
        ]
    )
    blended = blend_values(rules, candidates, weights)
    identity = rules.identity_post()

    def score(values: np.ndarray, post: dict[str, Any]) -> float:
        return rules.score(lab_labels, rules.decide(values[labelled], post))

    def tuned_post(values: np.ndarray) -> tuple[dict[str, Any], float]:
        if rules.name != "au" and not options.correction:
            return identity, score(values, identity)
        return rules.fit_post(lab_labels, values[labelled])

    post, best_score = tuned_post(blended)
    unsmoothed_post = post
    kernel, half_width = KERNELS[0], 0
    if options.smoothing:
        retune_each = rules.name != "expr"
        for trial_kernel in options.kernels:
            for trial_width in rules.windows[1:]:
                values = smooth(blended, order, trial_kernel, trial_width)
                if retune_each:
                    trial_post, trial = tuned_post(values)
                else:
                    trial_post, trial = post, score(values, post)
                if trial > best_score + TOL:
                    best_score, kernel, half_width, post = (
                        trial,
                        trial_kernel,
                        trial_width,
                        trial_post,
                    )
        if not retune_each and half_width > 0:
            refit, refit_score = tuned_post(smooth(blended, order, kernel, half_width))
            if refit_score > best_score:
                post = refit
    # Stage scores for the report, all from `affectpipe.metrics` on these rows.
    stages = {
        "blend": score(blended, identity),
        rules.post_name: score(blended, unsmoothed_post),
    }
    stages["smoothing"] = score(smooth(blended, order, kernel, half_width), post)
    return TaskBlend(rules.name, weights, kernel, half_width, post, stages)


def video_folds(video_codes: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold number of each row: whole videos go to one fold, shuffled with `seed`."""
    videos = np.unique(video_codes)
    shuffled = np.random.default_rng(seed).permutation(videos)
    fold_of_video = {v: i % n_folds for i, v in enumerate(shuffled)}
    return np.array([fold_of_video[v] for v in video_codes], dtype=np.int64)


def _fit_on(
    rules: TaskRules,
    candidates: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    frames: np.ndarray,
    tune: np.ndarray,
    options: BlendOptions,
) -> TaskBlend:
    order = VideoOrder.of(groups[tune], frames[tune])
    return fit_task(rules, candidates[:, tune], labels[tune], order, options)


def _crossfit_fold(
    rules: TaskRules,
    candidates: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    frames: np.ndarray,
    held: np.ndarray,
    options: BlendOptions,
) -> np.ndarray:
    """Outputs of the held-out rows from a blend tuned on all the other rows."""
    fitted = _fit_on(rules, candidates, labels, groups, frames, ~held, options)
    order = VideoOrder.of(groups[held], frames[held])
    return apply_tuned(rules, fitted, candidates[:, held], order)[1]


def tune_task(
    rules: TaskRules,
    candidates: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    frames: np.ndarray,
    options: BlendOptions,
) -> tuple[TaskBlend, tuple[np.ndarray, int] | None]:
    """The blend tuned on all rows, and the cross-fitted outputs with their fold count.

    Cross-fitting: videos are dealt into folds; each fold's rows are decided by a blend tuned
    on the other folds. None when there are fewer than two videos or a tuning part has no
    label. The full fit and the folds run in `options.n_jobs` processes.
    """
    from joblib import Parallel, delayed

    n_folds = min(options.crossfit_folds, len(np.unique(groups)))
    folds = video_folds(groups, max(n_folds, 1), options.seed)
    held_out = [folds == k for k in range(n_folds)] if n_folds >= 2 else []
    if any(not rules.labelled(labels[~held]).any() for held in held_out):
        held_out = []
    everything = np.ones(len(labels), dtype=bool)
    shared = (rules, candidates, labels, groups, frames)
    calls = [(_fit_on, (*shared, everything, options))]
    calls += [(_crossfit_fold, (*shared, held, options)) for held in held_out]
    n_jobs = min(options.n_jobs, len(calls))
    if n_jobs > 1:
        results = Parallel(n_jobs=n_jobs)(delayed(func)(*args) for func, args in calls)
    else:
        results = [func(*args) for func, args in calls]
    fitted, fold_outputs = results[0], results[1:]
    if not fold_outputs:
        return fitted, None
    outputs = np.empty((len(labels),) + fold_outputs[0].shape[1:], dtype=fold_outputs[0].dtype)
    for held, decided in zip(held_out, fold_outputs, strict=True):
        outputs[held] = decided
    return fitted, (outputs, len(held_out))

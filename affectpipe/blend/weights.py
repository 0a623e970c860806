"""Non-negative blend weights on the simplex, by greedy forward selection with replacement.

Caruana et al.'s ensemble selection: start from the best single candidate, then repeatedly
add (again) the candidate that most improves the objective of the running average. Weights
are multiples of 1/steps, so a few steps give a coarse, hard-to-overfit mix. Ties go to a
candidate already in the mix (fewer candidates), then to the earlier candidate.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Objective = Callable[[np.ndarray], float]


def mix(candidates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted sum over the first axis of `candidates` [M, N, K] -> [N, K]."""
    used = np.flatnonzero(weights > 0)
    out = np.zeros(candidates.shape[1:], dtype=np.float32)
    for m in used:
        out += np.float32(weights[m]) * candidates[m]
    return out


def greedy_weights(
    candidates: np.ndarray, objective: Objective, *, max_steps: int = 20, tol: float = 1e-4
) -> tuple[np.ndarray, float]:
    """Weights [M] (summing to 1) maximising `objective(mix)`, and the objective reached.

    `candidates` is [M, N, K]; the objective sees a [N, K] average of chosen candidates.
    Stops when no addition improves the objective by more than `tol`.
    """
    n_candidates = len(candidates)
    singles = np.array([objective(c) for c in candidates])
    singles = np.where(np.isfinite(singles), singles, -np.inf)
    first = int(np.argmax(singles))
    counts = np.zeros(n_candidates, dtype=np.int64)
    counts[first] = 1
    total = candidates[first].astype(np.float32, copy=True)
    best = float(singles[first])
    trial = np.empty_like(total)  # reused: the objective must not keep a reference to it
    for step in range(1, max_steps):
        trials = np.full(n_candidates, -np.inf)
        for m in range(n_candidates):
            np.add(total, candidates[m], out=trial)
            trial *= np.float32(1.0 / (step + 1))
            trials[m] = objective(trial)
        trials = np.where(np.isfinite(trials), trials, -np.inf)
        improving = trials > best + tol
        if not improving.any():
            break
        # Within `tol` of the best addition, prefer a candidate already used, then the first.
        near_top = improving & (trials >= trials.max() - tol)
        pick = np.flatnonzero(near_top & (counts > 0))
        choice = int(pick[0]) if len(pick) else int(np.flatnonzero(near_top)[0])
        counts[choice] += 1
        total += candidates[choice]
        best = float(trials[choice])
    return counts / counts.sum(), best

"""Tune one task's blend on validation rows and apply it: weights, correction, smoothing.

Stages, in the order they are applied: weighted mix of candidates -> smoothing along each
video -> (EXPR) logit adjustment -> the task's correction (VA calibration, EXPR offsets or AU
thresholds) -> decision -> (EXPR) confidence gating. They are tuned in the order of the
report's table: weights, then the correction on the unsmoothed mix, then the smoothing
window, re-tuning the correction for each window (EXPR, whose offset search is the costliest,
scores every window with the unsmoothed offsets and re-tunes them for the best few:
`retune_windows`), then the optional EXPR stages of `blend.stages`.

Every stage after the weights earns its place by cross-fitting (`decide_stages`): a stage
stays only when the cross-fitted score with it is higher than without it. The correction and
smoothing are judged as a pair (each fit also tunes a window without correction, so all four
combinations are cross-fitted at once); logit adjustment and gating each over what is kept
before it. A dropped correction or smoothing stage is switched off and the stages after it
are tuned again without it (they were tuned on its output); logit adjustment and gating are
switched off without re-tuning. (The weights themselves are judged
against the best single candidate, in `blend.runner`.) Above `config.BLEND_SEARCH_ROWS`
labelled rows, the searches score a systematic sample of them (`search_rows`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from affectpipe.blend.smoothing import KERNELS, Smoother, VideoOrder, smooth
from affectpipe.blend.stages import TAU_GRID, GateSources, adjust, apply_gate, fit_gate
from affectpipe.blend.task_rules import TaskRules
from affectpipe.blend.weights import greedy_weights, mix
from affectpipe.config import BLEND_SEARCH_ROWS
from affectpipe.machine import usable_cores

TOL = 1e-5
SMOOTHING_ALONE = "smoothing without correction"  # a `stage_decisions` key
# Validation rows above which the fits run in one process per usable core by default; below
# it, starting the worker processes costs about as much as they save.
PARALLEL_ROWS = 20_000


@dataclass(frozen=True)
class BlendOptions:
    """Which optional stages run, and how the honest estimate is made."""

    correction: bool = True  # VA calibration / EXPR offsets / AU thresholds
    smoothing: bool = True
    kernels: tuple[str, ...] = KERNELS
    max_steps: int = 20
    crossfit_folds: int = 3
    seed: int = 0
    # The searches score at most this many labelled rows (`search_rows`); None: all of them.
    search_rows: int | None = BLEND_SEARCH_ROWS
    # Processes for the full fit and the cross-fit folds (1: in-process; 0: `blend_processes`).
    n_jobs: int = 0
    # "best": the blend only when it cross-fits above the best single candidate; "blend": always
    prefer: str = "best"
    logit_adjustment: bool = True  # EXPR: tau * log prior correction (blend.stages)
    gating: bool = True  # EXPR: a confident backbone's own prediction replaces the blend's


def variant_key(adjusted: bool, gated: bool) -> str:
    """Name of a combination of the optional stages (the stage table's row names)."""
    names = [n for n, on in (("logit_adjustment", adjusted), ("gating", gated)) if on]
    return "+".join(names) or "smoothing"


@dataclass
class TaskBlend:
    """A tuned blend of one task: everything needed to apply it to new rows."""

    task: str
    weights: np.ndarray  # [n_groups, M]
    kernel: str
    half_width: int  # 0 = no smoothing
    post: dict[str, Any]
    stage_scores: dict[str, float] = field(default_factory=dict)  # tuned, per table stage
    # The correction in force after each stage, so that a prefix of the stages can be applied.
    stage_posts: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The smoothing window tuned without a correction (kernel, half-width), for the cross-fit.
    alone_window: tuple[str, int] = (KERNELS[0], 0)
    log_prior: np.ndarray | None = None  # training label prior (EXPR logit adjustment)
    tuned_tau: float = 0.0  # the tuned logit adjustment (0: it did not help when tuned)
    tau: float = 0.0  # the one in force
    gates: dict[bool, dict[str, Any] | None] = field(default_factory=dict)  # by `adjusted`
    gate: dict[str, Any] | None = None  # the one in force
    variant_scores: dict[str, float] = field(default_factory=dict)  # tuned, by variant_key
    kept: dict[str, bool] = field(default_factory=dict)  # optional stage -> in force
    crossfit_stage_scores: dict[str, float] = field(default_factory=dict)
    # stage -> {"tuned", "crossfit", "without", "kept", "why"}: the cross-fit decision of each
    # stage after the weights (`decide_stages`), in chain order.
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def final_score(self) -> float:
        """Tuned score of the stages in force."""
        key = variant_key(self.tau != 0, self.gate is not None)
        return self.variant_scores.get(key, self.stage_scores["smoothing"])

    def variant(self, adjusted: bool, gated: bool) -> TaskBlend:
        """This blend with the optional stages switched on or off (on only where tuned)."""
        adjusted = adjusted and self.tuned_tau != 0
        gate = self.gates.get(adjusted) if gated else None
        return replace(
            self,
            tau=self.tuned_tau if adjusted else 0.0,
            post=self.stage_posts["logit_adjustment" if adjusted else "smoothing"],
            gate=gate,
            kept={"logit_adjustment": adjusted, "gating": gate is not None},
        )

    def to_json(self, candidates: list[str], rules: TaskRules) -> dict[str, Any]:
        optional = {}
        if rules.optional_stages:
            optional = {
                "logit_adjustment": {
                    "tau": self.tau,
                    "tuned_tau": self.tuned_tau,
                    "log_prior": None if self.log_prior is None else self.log_prior.tolist(),
                },
                "gating": self.gate,
                "kept": self.kept,
            }
        return {
            "weights": {
                group.name: {
                    name: float(w) for name, w in zip(candidates, row, strict=True) if w > 0
                }
                for group, row in zip(rules.groups, self.weights, strict=True)
            },
            "smoothing": {"kernel": self.kernel, "half_width": self.half_width},
            rules.post_name: self.post,
            **optional,
            "stage_decisions": self.decisions,
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any], rules: TaskRules) -> tuple[TaskBlend, list[str]]:
        """The blend a task's `blend.json` entry records (the one its submission used: the
        blend or the best single candidate, with the optional stages in force), over the
        candidates it weights; and their names. Raises ValueError on a malformed entry.
        """
        weights = entry["weights"]
        groups = [weights[group.name] for group in rules.groups]
        names = [n for n in entry["candidates"] if any(n in g for g in groups)]
        matrix = np.array([[float(g.get(n, 0.0)) for n in names] for g in groups])
        if not names or not np.isfinite(matrix).all() or (matrix < 0).any():
            raise ValueError(f"{rules.name}: no usable blend weights")
        smoothing = entry["smoothing"]
        adjustment = entry.get("logit_adjustment") or {}
        tau = float(adjustment.get("tau", 0.0))
        log_prior = adjustment.get("log_prior")
        if tau != 0 and log_prior is None:
            raise ValueError(f"{rules.name}: logit adjustment without its log prior")
        blend = cls(
            rules.name,
            matrix,
            str(smoothing["kernel"]),
            int(smoothing["half_width"]),
            dict(entry[rules.post_name]),
            log_prior=None if log_prior is None else np.asarray(log_prior, dtype=np.float64),
            tuned_tau=float(adjustment.get("tuned_tau", tau)),
            tau=tau,
            gate=entry.get("gating"),
        )
        return blend, names


def blend_values(rules: TaskRules, candidates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mix candidates [M, N, K] with per-group weights -> [N, K] continuous outputs."""
    out = np.empty(candidates.shape[1:], dtype=np.float32)
    for group, row in zip(rules.groups, weights, strict=True):
        out[:, group.columns] = mix(candidates[:, :, group.columns], row)
    return out


def continuous_outputs(
    rules: TaskRules, fitted: TaskBlend, candidates: np.ndarray, order: VideoOrder | None
) -> np.ndarray:
    """Blended, smoothed (and logit-adjusted) outputs before the correction and decision.
    `order` None: rows that are not frames of a video, never smoothed."""
    blended = blend_values(rules, candidates, fitted.weights)
    if order is not None:
        blended = smooth(blended, order, fitted.kernel, fitted.half_width)
    return adjust(blended, fitted.log_prior, fitted.tau)


def decide(
    rules: TaskRules,
    fitted: TaskBlend,
    continuous: np.ndarray,
    sources: GateSources | None = None,
) -> np.ndarray:
    """The task's decision on continuous outputs, then the confidence gate (if in force)."""
    return apply_gate(rules.decide(continuous, fitted.post), sources, fitted.gate)


def apply_tuned(
    rules: TaskRules,
    fitted: TaskBlend,
    candidates: np.ndarray,
    order: VideoOrder | None,
    sources: GateSources | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a tuned blend to candidate outputs [M, N, K]: (continuous [N, K], decided).

    The one place where every tuned stage in force meets new rows, used by `blend`
    (validation, cross-fit and submission rows) and `predict` alike: mix, smoothing along
    each video (none when `order` is None), logit adjustment, the task's correction and
    decision, confidence gating (with `sources`).
    """
    continuous = continuous_outputs(rules, fitted, candidates, order)
    return continuous, decide(rules, fitted, continuous, sources)


def stage_decisions(
    rules: TaskRules,
    fitted: TaskBlend,
    candidates: np.ndarray,
    order: VideoOrder,
    sources: GateSources | None = None,
) -> dict[str, np.ndarray]:
    """Decisions after each stage of the table (and each combination of the optional ones)."""
    blended = blend_values(rules, candidates, fitted.weights)
    smoothed = smooth(blended, order, fitted.kernel, fitted.half_width)
    posts = fitted.stage_posts
    alone = smooth(blended, order, *fitted.alone_window)
    out = {
        "blend": rules.decide(blended, rules.identity_post()),
        rules.post_name: rules.decide(blended, posts[rules.post_name]),
        "smoothing": rules.decide(smoothed, posts["smoothing"]),
        SMOOTHING_ALONE: rules.decide(alone, rules.identity_post()),
    }
    if rules.optional_stages:
        adjusted = adjust(smoothed, fitted.log_prior, fitted.tuned_tau)
        out["logit_adjustment"] = rules.decide(adjusted, posts["logit_adjustment"])
        for on in (False, True):
            base = out[variant_key(on, False)]
            out[variant_key(on, True)] = apply_gate(base, sources, fitted.gates.get(on))
    return out


def search_rows(labelled: np.ndarray, order: VideoOrder, limit: int | None) -> np.ndarray:
    """Rows (increasing indices) the searches score: every labelled row, or, when there are
    more than `limit`, every k-th labelled row in video and frame order (the smallest k that
    leaves at most `limit`), so every video keeps its share of rows."""
    rows = np.flatnonzero(labelled)
    if limit is None or len(rows) <= limit:
        return rows
    in_order = order.order[labelled[order.order]]
    step = -(-len(in_order) // limit)
    return np.sort(in_order[::step])


def fit_task(
    rules: TaskRules,
    candidates: np.ndarray,
    labels: np.ndarray,
    order: VideoOrder,
    options: BlendOptions,
    *,
    log_prior: np.ndarray | None = None,
    sources: GateSources | None = None,
) -> TaskBlend:
    """Tune weights, correction, smoothing and the optional stages on these rows.

    The searches score the labelled rows, or a systematic sample of them when there are more
    than `options.search_rows` (`search_rows`); smoothing always runs over every row of a
    video. The tuned scores recorded (`stage_scores`, `variant_scores`) are those of every
    labelled row. `log_prior` enables logit adjustment, `sources` gating (EXPR)."""
    labelled = rules.labelled(labels)
    tune = search_rows(labelled, order, options.search_rows)
    tune_labels = labels[tune]
    tune_cands = candidates[:, tune]
    weights = np.stack(
        [
            greedy_weights(
                tune_cands[:, :, g.columns],
                rules.objective(tune_labels, g),
                max_steps=options.max_steps,
            )[0]
            for g in rules.groups
        ]
    )
    del tune_cands
    blended = blend_values(rules, candidates, weights)
    identity = rules.identity_post()
    lab_labels = labels[labelled]

    def score(values: np.ndarray, post: dict[str, Any]) -> float:
        """Score of every labelled row (the tuned scores recorded)."""
        return rules.score(lab_labels, rules.decide(values[labelled], post))

    # The searches see only the search rows' values (`values` below: [len(tune), K]).
    def search_score(values: np.ndarray, post: dict[str, Any]) -> float:
        return rules.score(tune_labels, rules.decide(values, post))

    def tuned_post(values: np.ndarray) -> tuple[dict[str, Any], float]:
        """The correction tuned on the search rows, and its score there."""
        if not options.correction:
            return identity, search_score(values, identity)
        return rules.fit_post(tune_labels, values)

    post, best_score = tuned_post(blended[tune])
    unsmoothed_post = post
    kernel, half_width = KERNELS[0], 0
    # The best window without any correction too, so that the cross-fit can judge the
    # correction and smoothing each with and without the other (`decide_stages`).
    alone_window, alone_score = (KERNELS[0], 0), search_score(blended[tune], identity)
    smoother = Smoother(blended, order)
    if options.smoothing:
        shortlist = rules.retune_windows
        trials = []  # (score with the unsmoothed correction, kernel, width, values)
        for trial_kernel in options.kernels:
            for trial_width in rules.windows[1:]:
                values = smoother.at(trial_kernel, trial_width, tune)
                trial = search_score(values, identity)
                if trial > alone_score + TOL:
                    alone_window, alone_score = (trial_kernel, trial_width), trial
                if shortlist is None:
                    trial_post, trial = tuned_post(values)
                    if trial > best_score + TOL:
                        best_score, kernel, half_width = trial, trial_kernel, trial_width
                        post = trial_post
                else:
                    trials.append((search_score(values, post), trial_kernel, trial_width, values))
        # The windows scoring best with the correction fixed, re-tuned in search order (ties
        # keep the earlier window): a window's best correction can differ a lot from the
        # unsmoothed one's, so the fixed-correction ranking alone can miss the best window.
        ranked = sorted(range(len(trials)), key=lambda i: -trials[i][0])[: shortlist or 0]
        for i in sorted(ranked):
            _, trial_kernel, trial_width, values = trials[i]
            trial_post, trial = tuned_post(values)
            if trial > best_score + TOL:
                best_score, kernel, half_width, post = trial, trial_kernel, trial_width, trial_post
        del trials
    smoothed = smoother(kernel, half_width)
    # Stage scores for the report, all from `affectpipe.metrics` on every labelled row.
    stages = {
        "blend": score(blended, identity),
        rules.post_name: score(blended, unsmoothed_post),
        "smoothing": score(smoothed, post),
    }
    fitted = TaskBlend(
        rules.name,
        weights,
        kernel,
        half_width,
        post,
        stages,
        stage_posts={rules.post_name: unsmoothed_post, "smoothing": post},
        alone_window=alone_window,
        log_prior=log_prior,
        variant_scores={
            "smoothing": stages["smoothing"],
            SMOOTHING_ALONE: score(smoother(*alone_window), identity),
        },
    )
    if not rules.optional_stages:
        return fitted
    tau, adjusted_post = 0.0, post
    if options.logit_adjustment and log_prior is not None:
        tune_smoothed = smoothed[tune]
        base_score = search_score(tune_smoothed, post)
        tau, adjusted_post, _ = _fit_adjustment(
            tune_smoothed, log_prior, post, base_score, search_score, tuned_post
        )
    fitted.tuned_tau = tau
    fitted.stage_posts["logit_adjustment"] = adjusted_post
    gate_sources = sources if sources is not None and options.gating else None
    tune_sources = gate_sources.take(tune) if gate_sources is not None else None
    for on in (False, True):
        variant = adjust(smoothed, log_prior, tau if on else 0.0)
        base = rules.decide(variant, fitted.stage_posts[variant_key(on, False)])
        fitted.variant_scores[variant_key(on, False)] = rules.score(lab_labels, base[labelled])
        gate, _ = fit_gate(tune_labels, base[tune], tune_sources)
        fitted.gates[on] = gate
        gated = apply_gate(base, gate_sources, gate)
        fitted.variant_scores[variant_key(on, True)] = rules.score(lab_labels, gated[labelled])
    fitted = fitted.variant(True, True)  # each stage in force where tuning kept it
    stages["logit_adjustment"] = fitted.variant_scores["logit_adjustment"]
    stages["gating"] = fitted.variant_scores[variant_key(fitted.tau != 0, True)]
    return fitted


def _fit_adjustment(
    smoothed: np.ndarray,
    log_prior: np.ndarray,
    post: dict[str, Any],
    base_score: float,
    score,
    tuned_post,
) -> tuple[float, dict[str, Any], float]:
    """(tau, correction re-tuned on the adjusted scores, score); tau 0 when no tau helps.

    Taus are tried nearest 0 first, taking only strict improvements, so ties keep the
    smaller correction."""
    best_tau, best = 0.0, base_score
    for tau in sorted(TAU_GRID, key=abs):
        if tau == 0:
            continue
        trial = score(adjust(smoothed, log_prior, tau), post)
        if trial > best + TOL:
            best_tau, best = float(tau), trial
    if best_tau == 0:
        return 0.0, post, base_score
    refit, refit_score = tuned_post(adjust(smoothed, log_prior, best_tau))
    return (best_tau, refit, refit_score) if refit_score > best else (best_tau, post, best)


def blend_processes(n_jobs: int, n_rows: int) -> int:
    """Processes for a task's fits: `n_jobs`; when 0, one per usable core for more than
    `PARALLEL_ROWS` validation rows, else 1 (in-process)."""
    if n_jobs > 0:
        return n_jobs
    return usable_cores() if n_rows > PARALLEL_ROWS else 1


def video_folds(video_codes: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold number of each row: whole videos go to one fold, shuffled with `seed`."""
    videos, index = np.unique(video_codes, return_inverse=True)
    shuffled = np.random.default_rng(seed).permutation(len(videos))
    fold_of_video = np.empty(len(videos), dtype=np.int64)
    fold_of_video[shuffled] = np.arange(len(videos)) % n_folds
    return fold_of_video[index.ravel()]


def _fit_on(
    rules: TaskRules,
    candidates: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    frames: np.ndarray,
    log_prior: np.ndarray | None,
    sources: GateSources | None,
    tune: np.ndarray,
    options: BlendOptions,
) -> TaskBlend:
    order = VideoOrder.of(groups[tune], frames[tune])
    return fit_task(
        rules,
        candidates[:, tune],
        labels[tune],
        order,
        options,
        log_prior=log_prior,
        sources=sources.take(tune) if sources is not None else None,
    )


def _crossfit_fold(
    rules: TaskRules,
    candidates: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    frames: np.ndarray,
    log_prior: np.ndarray | None,
    sources: GateSources | None,
    held: np.ndarray,
    options: BlendOptions,
) -> dict[str, np.ndarray]:
    """Decisions after each stage for the held-out rows, from a blend tuned on the others."""
    shared = (rules, candidates, labels, groups, frames, log_prior, sources)
    fitted = _fit_on(*shared, ~held, options)
    order = VideoOrder.of(groups[held], frames[held])
    held_sources = sources.take(held) if sources is not None else None
    return stage_decisions(rules, fitted, candidates[:, held], order, held_sources)


def _active(fitted: TaskBlend, stage: str, adjusted: bool) -> bool:
    """Whether an optional stage tuned on every row does anything (else it is the identity
    there; tuned inside a fold it may not be, so the cross-fit still judges it)."""
    if stage == "logit_adjustment":
        return fitted.tuned_tau != 0
    return fitted.gates.get(adjusted) is not None


def decide_stages(
    rules: TaskRules,
    fitted: TaskBlend,
    options: BlendOptions,
    scores: dict[str, float],
    earlier: dict[str, dict[str, Any]],
) -> tuple[TaskBlend, list[str]]:
    """Decide the stages from the cross-fitted scores of their combinations (`scores`, keyed
    as `stage_decisions`); a stage stays only when it raises the cross-fitted score over the
    same pipeline without it (a tie shows no gain, and the stage goes).

    The correction and smoothing are judged together, as the combination of the two (none,
    either, both) scoring best: a correction can lose on the raw mix and win on smoothed
    outputs (EXPR offsets on the demo). A combination with more stages must beat every
    simpler one. Then logit adjustment and gating, each over the stages kept before it.
    Returns the blend with the decisions recorded (`earlier`: those of previous rounds, for
    stages already switched off) and the flags of correction / smoothing stages to switch off
    and re-tune without (empty when none). A stage is judged even where the fit on every row
    made it the identity: inside the folds it was tuned too, and the cross-fitted scores
    measure the procedure, not one fit."""
    decisions: dict[str, dict[str, Any]] = dict(earlier)
    dropped = _decide_correction_and_smoothing(rules, fitted, options, scores, decisions)
    if dropped:
        fitted.decisions = decisions
        return fitted, dropped
    before, adjusted = "smoothing", False  # the key of what is kept so far, in this round
    for stage in rules.optional_stages:
        if not getattr(options, stage):
            decisions[stage] = {"kept": False, "why": "switched off by an option"}
            continue
        key = variant_key(adjusted, True) if stage == "gating" else stage
        entry = _judged(scores[key], scores[before], _active(fitted, stage, adjusted))
        decisions[stage] = {"tuned": fitted.variant_scores[key], **entry}
        if entry["kept"]:
            before, adjusted = key, adjusted or stage == "logit_adjustment"
    if rules.optional_stages:
        fitted = fitted.variant(decisions["logit_adjustment"]["kept"], decisions["gating"]["kept"])
    fitted.decisions = decisions
    return fitted, []


def _judged(crossfit: float, without: float, active: bool) -> dict[str, Any]:
    kept = crossfit > without + TOL
    why = f"cross-fitted {crossfit:.4f} {'>' if kept else '<='} {without:.4f} without it"
    if not active:
        why += "; tuned on every row it does nothing"
    return {"crossfit": crossfit, "without": without, "kept": kept, "why": why}


def _decide_correction_and_smoothing(
    rules: TaskRules,
    fitted: TaskBlend,
    options: BlendOptions,
    scores: dict[str, float],
    decisions: dict[str, dict[str, Any]],
) -> list[str]:
    """Fill `decisions` for the correction and smoothing stages still in play (see
    `decide_stages`); return the flags of those dropped."""
    stages = (rules.post_name, "smoothing")
    flags = ("correction", "smoothing")
    live = [
        stage not in decisions and getattr(options, flag)
        for stage, flag in zip(stages, flags, strict=True)
    ]
    for stage, on in zip(stages, live, strict=True):
        if not on and stage not in decisions:
            decisions[stage] = {"kept": False, "why": "switched off by an option"}
    # (correction, smoothing) in force -> the stage_decisions key of that pipeline
    key_of = {
        (False, False): "blend",
        (True, False): rules.post_name,
        (False, True): SMOOTHING_ALONE,
        (True, True): "smoothing",
    }
    combos = [c for c in key_of if all(live[i] or not c[i] for i in range(2))]
    best = combos[0]  # ordered by the number of stages: more must beat every simpler one
    for combo in combos[1:]:
        if scores[key_of[combo]] > scores[key_of[best]] + TOL:
            best = combo
    tuned = {**fitted.stage_scores, SMOOTHING_ALONE: fitted.variant_scores.get(SMOOTHING_ALONE)}
    active = (fitted.stage_posts[rules.post_name] != rules.identity_post(), fitted.half_width > 0)
    dropped = []
    for i, (stage, flag) in enumerate(zip(stages, flags, strict=True)):
        if not live[i]:
            continue
        on, off = list(best), list(best)
        on[i], off[i] = True, False
        entry = _judged(scores[key_of[tuple(on)]], scores[key_of[tuple(off)]], active[i])
        decisions[stage] = {"tuned": tuned[key_of[tuple(on)]], **entry}
        if not best[i]:
            dropped.append(flag)
    return dropped


def _timed(func, *args):
    """(func(*args), its wall seconds): module level, so worker processes can run it."""
    start = time.perf_counter()
    return func(*args), time.perf_counter() - start


def tune_task(
    rules: TaskRules,
    candidates: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    frames: np.ndarray,
    options: BlendOptions,
    *,
    log_prior: np.ndarray | None = None,
    sources: GateSources | None = None,
    seconds: dict[str, float] | None = None,
) -> tuple[TaskBlend, tuple[np.ndarray, int] | None]:
    """The blend tuned on all rows, and the cross-fitted outputs with their fold count.

    Cross-fitting: videos are dealt into folds; each fold's rows are decided by a blend tuned
    on the other folds. None when there are fewer than two videos or a tuning part has no
    label. The optional stages stay in force only where they raise the cross-fitted score
    (without a cross-fit, where tuning kept them). The full fit and the folds run in
    `blend_processes(options.n_jobs, rows)` processes; `seconds` gets their wall times added
    under "tune" and "crossfit" (with several processes, summed over them).
    """
    extra = {"log_prior": log_prior, "sources": sources, "seconds": seconds}
    return tune_variants(rules, candidates, labels, groups, frames, {"": options}, **extra)[""]


def tune_variants(
    rules: TaskRules,
    candidates: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    frames: np.ndarray,
    variants: dict[str, BlendOptions],
    *,
    log_prior: np.ndarray | None = None,
    sources: GateSources | None = None,
    seconds: dict[str, float] | None = None,
) -> dict[str, tuple[TaskBlend, tuple[np.ndarray, int] | None]]:
    """`tune_task` for each of several option sets on the same rows (e.g. the blend and the
    best single candidate), with all their fits and folds in one pool of the largest
    `n_jobs` processes, so that the workers stay busy until the last fit.

    A variant whose correction or smoothing stage loses the cross-fit (`decide_stages`) is
    tuned again without it, in a second round, so that the stages after it are tuned on
    what stays."""
    from joblib import Parallel, delayed

    shared = (rules, candidates, labels, groups, frames, log_prior, sources)
    pending = dict(variants)
    earlier: dict[str, dict[str, dict[str, Any]]] = {key: {} for key in variants}
    results: dict[str, tuple[TaskBlend, tuple[np.ndarray, int] | None]] = {}
    while pending:
        calls: list[tuple[Any, tuple]] = []
        parts: dict[str, tuple[int, list[np.ndarray]]] = {}
        for key, options in pending.items():
            n_folds = min(options.crossfit_folds, len(np.unique(groups)))
            folds = video_folds(groups, max(n_folds, 1), options.seed)
            held_out = [folds == k for k in range(n_folds)] if n_folds >= 2 else []
            if any(not rules.labelled(labels[~held]).any() for held in held_out):
                held_out = []
            everything = np.ones(len(labels), dtype=bool)
            parts[key] = (len(calls), held_out)
            calls.append((_fit_on, (*shared, everything, options)))
            calls += [(_crossfit_fold, (*shared, held, options)) for held in held_out]
        wanted = max(blend_processes(options.n_jobs, len(labels)) for options in pending.values())
        n_jobs = min(wanted, len(calls))
        if n_jobs > 1:
            timed = Parallel(n_jobs=n_jobs)(delayed(_timed)(func, *args) for func, args in calls)
        else:
            timed = [_timed(func, *args) for func, args in calls]
        retune: dict[str, BlendOptions] = {}
        for key, (first, held_out) in parts.items():
            own = timed[first : first + 1 + len(held_out)]
            if seconds is not None:
                seconds["tune"] = seconds.get("tune", 0.0) + own[0][1]
                seconds["crossfit"] = seconds.get("crossfit", 0.0) + sum(t for _, t in own[1:])
            fitted, fold_outputs = own[0][0], [result for result, _ in own[1:]]
            fitted, crossfit, dropped = _with_crossfit(
                rules, labels, fitted, held_out, fold_outputs, pending[key], earlier[key]
            )
            if not dropped:
                results[key] = (fitted, crossfit)
            else:
                earlier[key] = {
                    stage: entry
                    for stage, entry in fitted.decisions.items()
                    if stage in earlier[key] or not entry["kept"]
                }
                retune[key] = replace(pending[key], **dict.fromkeys(dropped, False))
        pending = retune
    return {key: results[key] for key in variants}


def _with_crossfit(
    rules: TaskRules,
    labels: np.ndarray,
    fitted: TaskBlend,
    held_out: list[np.ndarray],
    fold_outputs: list[dict[str, np.ndarray]],
    options: BlendOptions,
    earlier: dict[str, dict[str, Any]],
) -> tuple[TaskBlend, tuple[np.ndarray, int] | None, list[str]]:
    """Pool the folds' decisions, score them, and decide the stages (`decide_stages`):
    (the blend, its cross-fitted outputs with the fold count, the flags of stages to re-tune
    without). Without folds the stages stay as tuned."""
    if not fold_outputs:
        return fitted, None, []
    outputs = {}
    for key, first in fold_outputs[0].items():
        outputs[key] = np.empty((len(labels),) + first.shape[1:], dtype=first.dtype)
        for held, decided in zip(held_out, fold_outputs, strict=True):
            outputs[key][held] = decided[key]
    scores = {key: rules.score(labels, out) for key, out in outputs.items()}
    fitted, dropped = decide_stages(rules, fitted, options, scores, earlier)
    if dropped:
        return fitted, None, dropped
    final = "smoothing"
    if rules.optional_stages:
        decided = fitted.decisions
        adjusted = decided["logit_adjustment"]["kept"]
        gate_key = variant_key(adjusted, True)
        scores["gating"] = scores[gate_key]
        fitted.stage_scores["gating"] = fitted.variant_scores[gate_key]
        final = variant_key(adjusted, decided["gating"]["kept"])
    fitted.crossfit_stage_scores = {key: scores[key] for key in fitted.stage_scores}
    return fitted, (outputs[final], len(held_out)), []

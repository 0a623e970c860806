"""Tune one task's blend on validation rows and apply it: the base, then the stages after it.

The base, in the order it is applied: weighted mix of candidates -> smoothing along each
video -> the task's correction (VA calibration, EXPR offsets or AU thresholds) -> decision.
It is tuned in the order of the report's table: weights, then the correction on the
unsmoothed mix, then the smoothing window, re-tuning the correction for each window (EXPR,
whose offset search is the costliest, scores every window with the unsmoothed offsets and
re-tunes them for the best few: `retune_windows`). Then the registered stages after the base
(`blend.stage_registry`), in their order: those on continuous outputs apply before the
correction (and may re-tune it), those on decisions after it. Each such stage is tuned over
every combination of the stages before it (`StageChain`), so that whichever of them the
cross-fit keeps, the next one was tuned on what stays.

Every stage after the weights earns its place by cross-fitting (`decide_stages`): a stage
stays only when the cross-fitted score with it is higher than without it. The correction and
smoothing are judged as a pair (each fit also tunes a window without correction, so all four
combinations are cross-fitted at once); each later stage over what is kept before it. A
dropped correction or smoothing stage is switched off and everything after it is tuned again
without it (it was tuned on its output); a later stage is switched off without re-tuning
(the chain already holds the next stages tuned without it). (The weights themselves are
judged against the best single candidate, in `blend.runner`.) Above
`config.BLEND_SEARCH_ROWS` labelled rows, the searches score a systematic sample of them
(`search_rows`).
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from affectpipe.blend.options import KERNELS, BlendOptions
from affectpipe.blend.smoothing import Smoother, VideoOrder, smooth
from affectpipe.blend.stage_registry import (
    TOL,
    VALUES,
    BlendStage,
    StageFit,
    blend_stages,
    get_blend_stage,
)
from affectpipe.blend.task_rules import TaskRules
from affectpipe.blend.weights import greedy_weights, mix
from affectpipe.machine import usable_cores
from affectpipe.splits import video_folds

SMOOTHING_ALONE = "smoothing without correction"  # a `stage_decisions` key
# Validation rows above which the fits run in one process per usable core by default; below
# it, starting the worker processes costs about as much as they save.
PARALLEL_ROWS = 20_000
# A stage's inputs by stage name (`BlendStage.inputs`), on the rows at hand.
StageInputs = dict[str, Any]


def variant_key(stages: tuple[str, ...]) -> str:
    """Name of a combination of the stages after the base (a `stage_decisions` key)."""
    return "+".join(stages) or "smoothing"


@dataclass
class StageChain:
    """The stages after the base as tuned on every row: `params` of each stage tuned over
    each combination of the stages before it (key: that combination plus the stage; None:
    tuned to do nothing, or not run), and the correction in force after each combination."""

    order: tuple[str, ...] = ()
    params: dict[tuple[str, ...], Any] = field(default_factory=dict)
    posts: dict[tuple[str, ...], dict[str, Any]] = field(default_factory=dict)


@dataclass
class TaskBlend:
    """A tuned blend of one task: everything needed to apply it to new rows."""

    task: str
    weights: np.ndarray  # [n_groups, M]
    kernel: str
    half_width: int  # 0 = no smoothing
    post: dict[str, Any]  # the correction in force
    stage_scores: dict[str, float] = field(default_factory=dict)  # tuned, per table stage
    # The correction in force after each base stage, so that a prefix can be applied.
    stage_posts: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The smoothing window tuned without a correction (kernel, half-width), for the cross-fit.
    alone_window: tuple[str, int] = (KERNELS[0], 0)
    chain: StageChain = field(default_factory=StageChain)
    in_force: dict[str, Any] = field(default_factory=dict)  # stage -> params, applied in order
    variant_scores: dict[str, float] = field(default_factory=dict)  # tuned, by variant_key
    crossfit_stage_scores: dict[str, float] = field(default_factory=dict)
    # stage -> {"tuned", "crossfit", "without", "kept", "why"}: the cross-fit decision of each
    # stage after the weights (`decide_stages`), in chain order.
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def kept(self) -> dict[str, bool]:
        """Each stage after the base -> whether it is in force."""
        return {name: name in self.in_force for name in self.chain.order}

    @property
    def final_score(self) -> float:
        """Tuned score of the stages in force."""
        key = variant_key(tuple(self.in_force))
        return self.variant_scores.get(key, self.stage_scores["smoothing"])

    def variant(self, wanted: Collection[str]) -> TaskBlend:
        """This blend with the stages in `wanted` in force, where tuned to do something."""
        before: tuple[str, ...] = ()
        in_force = {}
        for name in self.chain.order:
            params = self.chain.params.get(before + (name,))
            if name in wanted and params is not None:
                in_force[name] = params
                before += (name,)
        return replace(self, in_force=in_force, post=self.chain.posts.get(before, self.post))

    def to_json(self, candidates: list[str], rules: TaskRules) -> dict[str, Any]:
        stages: dict[str, Any] = {}
        before: tuple[str, ...] = ()
        for stage in blend_stages(rules):
            on = self.in_force.get(stage.name)
            stages[stage.name] = stage.to_json(on, self.chain.params.get(before + (stage.name,)))
            if on is not None:
                before += (stage.name,)
        if stages:
            stages["kept"] = self.kept
        return {
            "weights": {
                group.name: {
                    name: float(w) for name, w in zip(candidates, row, strict=True) if w > 0
                }
                for group, row in zip(rules.groups, self.weights, strict=True)
            },
            "smoothing": {"kernel": self.kernel, "half_width": self.half_width},
            rules.post_name: self.post,
            **stages,
            "stage_decisions": self.decisions,
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any], rules: TaskRules) -> tuple[TaskBlend, list[str]]:
        """The blend a task's `blend.json` entry records (the one its submission used: the
        blend or the best single candidate, with the stages in force), over the candidates
        it weights; and their names. Raises ValueError on a malformed entry, InputError for
        a stage in force that is not registered here."""
        weights = entry["weights"]
        groups = [weights[group.name] for group in rules.groups]
        names = [n for n in entry["candidates"] if any(n in g for g in groups)]
        matrix = np.array([[float(g.get(n, 0.0)) for n in names] for g in groups])
        if not names or not np.isfinite(matrix).all() or (matrix < 0).any():
            raise ValueError(f"{rules.name}: no usable blend weights")
        for name, on in (entry.get("kept") or {}).items():
            if on:
                get_blend_stage(name)
        in_force = {}
        for stage in blend_stages(rules):
            try:
                params = stage.from_json(entry.get(stage.name))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{rules.name}: {stage.name}: {exc}") from None
            if params is not None:
                in_force[stage.name] = params
        smoothing = entry["smoothing"]
        blend = cls(
            rules.name,
            matrix,
            str(smoothing["kernel"]),
            int(smoothing["half_width"]),
            dict(entry[rules.post_name]),
            chain=StageChain(tuple(s.name for s in blend_stages(rules))),
            in_force=in_force,
        )
        return blend, names

    def backbones(self) -> list[str]:
        """Backbones the stages in force read (beyond the candidates' features)."""
        return [
            name
            for stage, params in self.in_force.items()
            for name in get_blend_stage(stage).backbones(params)
        ]


def blend_values(rules: TaskRules, candidates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mix candidates [M, N, K] with per-group weights -> [N, K] continuous outputs."""
    out = np.empty(candidates.shape[1:], dtype=np.float32)
    for group, row in zip(rules.groups, weights, strict=True):
        out[:, group.columns] = mix(candidates[:, :, group.columns], row)
    return out


def take_inputs(inputs: StageInputs | None, rows: np.ndarray) -> StageInputs:
    """Stage inputs on a subset of their rows."""
    return {name: get_blend_stage(name).take(v, rows) for name, v in (inputs or {}).items()}


@dataclass
class _State:
    """Outputs after some stages: continuous values, the correction in force, and the
    decisions when a stage on decisions has run."""

    values: np.ndarray
    post: dict[str, Any]
    decisions: np.ndarray | None = None  # made once when first asked for, or by a stage

    def decided(self, rules: TaskRules) -> np.ndarray:
        # Kept: the fits, the scores and the stages after this one all ask for them.
        if self.decisions is None:
            self.decisions = rules.decide(self.values, self.post)
        return self.decisions

    def after(
        self, rules: TaskRules, stage: BlendStage, params: Any, post: dict[str, Any], inputs: Any
    ) -> _State:
        """The state once `stage` with `params` (not None) has run on it."""
        if stage.acts_on == VALUES:
            return _State(stage.apply(params, self.values, inputs), post)
        return _State(self.values, post, stage.apply(params, self.decided(rules), inputs))


def _replay(
    rules: TaskRules, chain: StageChain, base: _State, inputs: StageInputs
) -> dict[tuple[str, ...], _State]:
    """The state after every combination of the chain's stages, as tuned."""
    states = {(): base}
    for name in chain.order:
        stage = get_blend_stage(name)
        for key, state in list(states.items()):
            params = chain.params.get(key + (name,))
            if params is not None:
                post = chain.posts[key + (name,)]
                state = state.after(rules, stage, params, post, inputs.get(name))
            states[key + (name,)] = state
    return states


def apply_tuned(
    rules: TaskRules,
    fitted: TaskBlend,
    candidates: np.ndarray,
    order: VideoOrder | None,
    inputs: StageInputs | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a tuned blend to candidate outputs [M, N, K]: (continuous [N, K], decided).

    The one place where every tuned stage in force meets new rows, used by `blend`
    (validation, cross-fit and submission rows) and `predict` alike: mix, smoothing along
    each video (none when `order` is None), the stages in force on continuous outputs, the
    task's correction and decision, the stages in force on decisions. `inputs`: what the
    stages in force read, on these rows.
    """
    inputs = inputs or {}
    values = blend_values(rules, candidates, fitted.weights)
    if order is not None:
        values = smooth(values, order, fitted.kernel, fitted.half_width)
    state = _State(values, fitted.post)
    for name, params in fitted.in_force.items():
        state = state.after(rules, get_blend_stage(name), params, fitted.post, inputs.get(name))
    return state.values, state.decided(rules)


def stage_decisions(
    rules: TaskRules,
    fitted: TaskBlend,
    candidates: np.ndarray,
    order: VideoOrder,
    inputs: StageInputs | None = None,
) -> dict[str, np.ndarray]:
    """Decisions after each stage of the table (and each combination of the later ones)."""
    blended = blend_values(rules, candidates, fitted.weights)
    smoothed = smooth(blended, order, fitted.kernel, fitted.half_width)
    posts = fitted.stage_posts
    alone = smooth(blended, order, *fitted.alone_window)
    out = {
        "blend": rules.decide(blended, rules.identity_post()),
        rules.post_name: rules.decide(blended, posts[rules.post_name]),
        SMOOTHING_ALONE: rules.decide(alone, rules.identity_post()),
    }
    base = _State(smoothed, posts["smoothing"])
    for key, state in _replay(rules, fitted.chain, base, inputs or {}).items():
        out[variant_key(key)] = state.decided(rules)
    return out


def search_rows(labelled: np.ndarray, order: VideoOrder, limit: int | None) -> np.ndarray:
    """Rows (increasing indices) the searches score: every labelled row (`limit` 0 or None),
    or, when there are more than `limit`, every k-th labelled row in video and frame order
    (the smallest k that leaves at most `limit`), so every video keeps its share of rows."""
    rows = np.flatnonzero(labelled)
    if not limit or len(rows) <= limit:
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
    inputs: StageInputs | None = None,
) -> TaskBlend:
    """Tune weights, correction, smoothing and the stages after them on these rows.

    The searches score the labelled rows, or a systematic sample of them when there are more
    than `options.search_rows` (`search_rows`); smoothing always runs over every row of a
    video. The tuned scores recorded (`stage_scores`, `variant_scores`) are those of every
    labelled row. `inputs`: each later stage's inputs on these rows (a stage without them
    is not run)."""
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
        variant_scores={SMOOTHING_ALONE: score(smoother(*alone_window), identity)},
    )
    search = (tune, tune_labels)
    base = _State(smoothed, post)
    chain, states = _fit_chain(rules, base, options, inputs or {}, search, search_score, tuned_post)
    fitted.chain = chain
    for key, state in states.items():
        decided = state.decided(rules)
        fitted.variant_scores[variant_key(key)] = rules.score(lab_labels, decided[labelled])
    fitted = fitted.variant(chain.order)  # each stage in force where tuning kept it
    before: tuple[str, ...] = ()
    for name in chain.order:
        stages[name] = fitted.variant_scores[variant_key(before + (name,))]
        before += (name,) if name in fitted.in_force else ()
    return fitted


def _fit_chain(
    rules: TaskRules,
    base: _State,
    options: BlendOptions,
    inputs: StageInputs,
    search: tuple[np.ndarray, np.ndarray],
    search_score,
    tuned_post,
) -> tuple[StageChain, dict[tuple[str, ...], _State]]:
    """Tune each stage after the base over every combination of those before it; the
    chain and the state after each combination (every row). A stage switched off, or
    without inputs, is kept in the chain as doing nothing, so the report still shows it."""
    tune, labels = search  # the search rows and their labels
    chain = StageChain(tuple(stage.name for stage in blend_stages(rules)))
    states = {(): base}
    chain.posts[()] = base.post
    for stage in blend_stages(rules):
        own = inputs.get(stage.name)
        runs = options.runs(stage) and own is not None
        tune_inputs = stage.take(own, tune) if runs else None
        for key, state in list(states.items()):
            new = key + (stage.name,)
            params, post = None, state.post
            if runs:
                x = state.values if stage.acts_on == VALUES else state.decided(rules)
                job = StageFit(rules, labels, state.post, tune_inputs, search_score, tuned_post)
                params, post = stage.fit(x[tune], job)
            chain.params[new], chain.posts[new] = params, post
            states[new] = state if params is None else state.after(rules, stage, params, post, own)
    return chain, states


def blend_processes(n_jobs: int, n_rows: int) -> int:
    """Processes for a task's fits: `n_jobs`; when 0, one per usable core for more than
    `PARALLEL_ROWS` validation rows, else 1 (in-process)."""
    if n_jobs > 0:
        return n_jobs
    return usable_cores() if n_rows > PARALLEL_ROWS else 1


@dataclass(frozen=True)
class _TaskRows:
    """A task's validation rows as every fit sees them (pickled to the worker processes)."""

    rules: TaskRules
    candidates: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    frames: np.ndarray
    inputs: StageInputs

    def fit(self, tune: np.ndarray, options: BlendOptions) -> TaskBlend:
        """The blend tuned on the rows `tune`."""
        order = VideoOrder.of(self.groups[tune], self.frames[tune])
        tune_inputs = take_inputs(self.inputs, tune)
        candidates, labels = self.candidates[:, tune], self.labels[tune]
        return fit_task(self.rules, candidates, labels, order, options, tune_inputs)

    def crossfit_fold(self, held: np.ndarray, options: BlendOptions) -> dict[str, np.ndarray]:
        """Decisions after each stage for the held-out rows, from a blend tuned on the others."""
        fitted = self.fit(~held, options)
        order = VideoOrder.of(self.groups[held], self.frames[held])
        held_inputs = take_inputs(self.inputs, held)
        return stage_decisions(self.rules, fitted, self.candidates[:, held], order, held_inputs)


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
    simpler one. Then each later stage (`blend.stage_registry`), over the stages kept before it.
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
    before: tuple[str, ...] = ()  # the stages after the base kept so far, in this round
    for name in fitted.chain.order:
        if name in options.disabled_stages:
            decisions[name] = {"kept": False, "why": "switched off by an option"}
            continue
        key = before + (name,)
        active = fitted.chain.params.get(key) is not None
        entry = _judged(scores[variant_key(key)], scores[variant_key(before)], active)
        decisions[name] = {"tuned": fitted.variant_scores[variant_key(key)], **entry}
        if entry["kept"]:
            before = key
    fitted = fitted.variant(before)
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
    inputs: StageInputs | None = None,
    *,
    seconds: dict[str, float] | None = None,
) -> tuple[TaskBlend, tuple[np.ndarray, int] | None]:
    """The blend tuned on all rows, and the cross-fitted outputs with their fold count.

    Cross-fitting: videos are dealt into folds; each fold's rows are decided by a blend tuned
    on the other folds. None when there are fewer than two videos or a tuning part has no
    label. The stages after the base stay in force only where they raise the cross-fitted
    score (without a cross-fit, where tuning kept them); `inputs`: theirs, on these rows.
    The full fit and the folds run in `blend_processes(options.n_jobs, rows)` processes;
    `seconds` gets their wall times added under "tune" and "crossfit" (with several
    processes, summed over them).
    """
    variants = {"": options}
    tuned = tune_variants(
        rules, candidates, labels, groups, frames, variants, inputs, seconds=seconds
    )
    return tuned[""]


def tune_variants(
    rules: TaskRules,
    candidates: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    frames: np.ndarray,
    variants: dict[str, BlendOptions],
    inputs: StageInputs | None = None,
    *,
    seconds: dict[str, float] | None = None,
) -> dict[str, tuple[TaskBlend, tuple[np.ndarray, int] | None]]:
    """`tune_task` for each of several option sets on the same rows (e.g. the blend and the
    best single candidate), with all their fits and folds in one pool of the largest
    `n_jobs` processes, so that the workers stay busy until the last fit.

    A variant whose correction or smoothing stage loses the cross-fit (`decide_stages`) is
    tuned again without it, in a second round, so that the stages after it are tuned on
    what stays."""
    from joblib import Parallel, delayed

    rows = _TaskRows(rules, candidates, labels, groups, frames, inputs or {})
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
            calls.append((rows.fit, (everything, options)))
            calls += [(rows.crossfit_fold, (held, options)) for held in held_out]
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
    before: tuple[str, ...] = ()  # the stages after the base that the cross-fit kept
    for name in fitted.chain.order:
        key = variant_key(before + (name,))
        scores[name] = scores[key]
        fitted.stage_scores[name] = fitted.variant_scores[key]
        if fitted.decisions[name]["kept"]:
            before += (name,)
    final = variant_key(before)
    fitted.crossfit_stage_scores = {key: scores[key] for key in fitted.stage_scores}
    return fitted, (outputs[final], len(held_out)), []

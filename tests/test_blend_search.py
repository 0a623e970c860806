"""Blend searches on large validation sets: a bounded systematic sample of the labelled rows,
box smoothing at the sampled rows only, the EXPR window shortlist, the default worker count."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

from affectpipe.blend.runner import _tune_tasks
from affectpipe.blend.smoothing import Smoother, VideoOrder
from affectpipe.blend.synthetic import synthetic_task
from affectpipe.blend.task_rules import rules_for
from affectpipe.blend.tuning import (
    PARALLEL_ROWS,
    TOL,
    BlendOptions,
    apply_tuned,
    blend_processes,
    fit_task,
    search_rows,
)


def test_search_rows_is_every_kth_labelled_row_of_every_video():
    data = synthetic_task("expr", n_rows=6000, n_videos=12, seed=3)
    labelled = data.labels >= 0
    assert search_rows(labelled, data.order, None).tolist() == np.flatnonzero(labelled).tolist()
    assert search_rows(labelled, data.order, 10**6).tolist() == np.flatnonzero(labelled).tolist()
    limit = int(labelled.sum()) // 3 - 5  # a stride of 4
    rows = search_rows(labelled, data.order, limit)
    assert len(rows) <= limit and (np.diff(rows) > 0).all() and labelled[rows].all()
    assert len(rows) >= labelled.sum() // 4
    # every 4th labelled row in (video, frame) order: every video keeps its share
    in_order = data.order.order[labelled[data.order.order]]
    assert rows.tolist() == sorted(in_order[::4].tolist())
    share = np.bincount(data.groups[rows], minlength=12) / np.bincount(
        data.groups[labelled], minlength=12
    )
    assert share.min() > 0.2 and share.max() < 0.3


@pytest.mark.parametrize("kernel", ["box", "gaussian"])
def test_smoother_at_gives_the_same_values_as_the_whole_smoothing(kernel):
    data = synthetic_task("au", n_rows=3000, n_videos=9, seed=2)
    rows = np.sort(np.random.default_rng(0).choice(3000, 700, replace=False))
    for values in (data.candidates[0], data.candidates[0][:, 0]):  # [N, K] and [N]
        smoother = Smoother(values, VideoOrder.of(data.groups, data.frames))
        for half_width in (0, 1, 4, 40, 100):
            expected = smoother(kernel, half_width)[rows]
            np.testing.assert_array_equal(smoother.at(kernel, half_width, rows), expected)


@pytest.mark.parametrize("task", ["va", "expr", "au"])
def test_searches_see_only_the_sampled_rows_and_scores_are_of_every_row(task):
    """Above `search_rows`, the tuned choices are those a fit makes when only the sampled
    rows carry labels; the scores it records are those of every labelled row."""
    data = synthetic_task(task, n_rows=8000, n_videos=10, n_candidates=4, seed=5)
    rules = rules_for(task)
    labelled = rules.labelled(data.labels)
    limit = int(labelled.sum()) // 3
    options = BlendOptions(search_rows=limit)
    sampled = fit_task(rules, data.candidates, data.labels, data.order, options)
    rows = search_rows(labelled, data.order, limit)
    assert len(rows) < labelled.sum()
    hidden = data.labels.copy()
    unseen = np.ones(len(hidden), dtype=bool)
    unseen[rows] = False
    hidden[unseen] = -5  # unlabelled for every task (VA: -5 or below is missing)
    only_sample = fit_task(
        rules, data.candidates, hidden, data.order, replace(options, search_rows=None)
    )
    np.testing.assert_array_equal(sampled.weights, only_sample.weights)
    assert (sampled.kernel, sampled.half_width) == (only_sample.kernel, only_sample.half_width)
    assert sampled.post == only_sample.post
    assert sampled.chain.params == only_sample.chain.params  # the later stages, as tuned
    # recorded tuned score: the tuned blend applied to every labelled row
    _, decided = apply_tuned(rules, sampled, data.candidates, data.order)
    final = rules.score(data.labels[labelled], decided[labelled])
    assert sampled.final_score == pytest.approx(final, abs=1e-12)
    assert sampled.stage_scores["smoothing"] == pytest.approx(final, abs=1e-12)


def test_expr_window_shortlist_never_scores_below_the_single_best_window():
    """EXPR re-tunes its offsets for the 3 windows that score best with the unsmoothed
    offsets; the rule it replaced re-tuned only the best one, which is on the shortlist, and
    often missed a much better window (smoothing moves the offsets' optimum)."""
    rules = rules_for("expr")
    assert rules.retune_windows == 3
    gains = []
    for seed in range(4):
        data = synthetic_task("expr", n_rows=4000, n_videos=10, n_candidates=3, seed=seed)
        options = BlendOptions(disabled_stages=("logit_adjustment", "gating"))
        fitted = fit_task(rules, data.candidates, data.labels, data.order, options)
        labelled = rules.labelled(data.labels)
        labels = data.labels[labelled]
        smoother = Smoother(
            np.average(data.candidates, axis=0, weights=fitted.weights[0]), data.order
        )
        unsmoothed, best = rules.fit_post(labels, smoother("box", 0)[labelled])
        fixed = {
            (k, w): rules.score(labels, rules.decide(smoother(k, w)[labelled], unsmoothed))
            for k in options.kernels
            for w in rules.windows[1:]
        }
        top = max(fixed, key=lambda kw: fixed[kw])  # the first of the best, in search order
        _, old_score = rules.fit_post(labels, smoother(*top)[labelled])
        new_score = rules.score(
            labels, rules.decide(smoother(fitted.kernel, fitted.half_width)[labelled], fitted.post)
        )
        assert new_score >= max(old_score, best) - TOL
        gains.append(new_score - old_score)
    assert max(gains) > 0.1  # seeds 2 and 3: about +0.17


def test_blend_processes_defaults_to_the_usable_cores_for_big_validation_sets():
    assert blend_processes(3, 10) == 3
    assert blend_processes(0, PARALLEL_ROWS) == 1
    assert blend_processes(0, PARALLEL_ROWS + 1) == len(os.sched_getaffinity(0))


def _fake_task(events: list[str], name: str, fail: bool = False):
    """A stand-in for `runner._tune_task`: load, yield the fits, finish."""
    events.append(f"load {name}")

    def fits():
        if fail:
            raise RuntimeError(f"fits of {name} failed")
        events.append(f"fits {name}")
        return name.upper(), 0.0

    result, _ = yield fits
    events.append(f"finish {name}")
    return result


def test_tasks_load_while_the_previous_fits_run_and_keep_their_order():
    events: list[str] = []
    seconds: dict[str, float] = {}
    steps = {name: _fake_task(events, name) for name in ("va", "expr", "au")}
    outcomes = _tune_tasks(steps, lambda task, exc: None, False, seconds)
    assert list(outcomes.items()) == [("va", "VA"), ("expr", "EXPR"), ("au", "AU")]
    assert events.index("load expr") < events.index("finish va")  # overlap
    assert events.index("load au") < events.index("finish expr")
    fits = [e for e in events if e.startswith("fits")]
    assert fits == ["fits va", "fits expr", "fits au"]  # one task's fits at a time
    assert seconds["waiting for fits"] >= 0
    steps = {name: _fake_task(events, name, name == "expr") for name in ("va", "expr", "au")}
    with pytest.raises(RuntimeError, match="fits of expr failed"):
        _tune_tasks(steps, lambda task, exc: None, False, {})

"""Blend building blocks: thresholds, smoothing, weights, corrections, interpolation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from affectpipe import metrics
from affectpipe.blend import calibration, thresholds
from affectpipe.blend.interpolate import fill_missing
from affectpipe.blend.smoothing import VideoOrder, group_codes, smooth
from affectpipe.blend.synthetic import synthetic_task
from affectpipe.blend.task_rules import rules_for
from affectpipe.blend.tuning import BlendOptions, fit_task, tune_task
from affectpipe.blend.weights import greedy_weights


def test_threshold_search_matches_brute_force():
    rng = np.random.default_rng(1)
    labels = (rng.random((500, 12)) < rng.uniform(0.05, 0.6, 12)).astype(np.int64)
    probs = np.clip(labels * 0.25 + rng.random((500, 12)) * 0.75, 0, 1).astype(np.float32)
    labels[rng.random((500, 12)) < 0.1] = -1  # missing labels are ignored
    tuned, best = thresholds.best_thresholds(probs, labels)
    for a in range(12):
        brute = [
            metrics.au_f1_per_au(labels[:, [a]], (probs[:, [a]] >= t).astype(int))[0]
            for t in thresholds.GRID
        ]
        assert best[a] == pytest.approx(max(brute), abs=1e-12)
        decided = thresholds.apply_thresholds(probs[:, [a]], tuned[[a]])
        assert metrics.au_f1_per_au(labels[:, [a]], decided)[0] == pytest.approx(max(brute))


def test_threshold_ties_prefer_half_and_unlabelled_au_keeps_default():
    probs = np.array([[0.9, 0.3], [0.1, 0.7]], dtype=np.float32)
    labels = np.array([[1, -1], [0, -1]])
    tuned, best = thresholds.best_thresholds(probs, labels)
    assert tuned[0] == 0.5 and best[0] == 1.0  # every t in (0.1, 0.9] is perfect: 0.5 wins
    assert tuned[1] == 0.5 and np.isnan(best[1])


def test_smoothing_never_crosses_videos_or_splits():
    rng = np.random.default_rng(0)
    split = np.array(["val"] * 6 + ["test"] * 6)
    video = np.array(["a"] * 3 + ["b"] * 3 + ["a"] * 6)  # "a" exists in both splits
    frames = np.array([1, 5, 9, 1, 2, 3, 1, 2, 3, 4, 5, 6])
    groups = group_codes(split, video)
    order = VideoOrder.of(groups, frames)
    values = rng.random((12, 2)).astype(np.float32)
    for kernel in ("box", "gaussian"):
        for width in (1, 3, 50, 100):
            base = smooth(values, order, kernel, width)
            for g in np.unique(groups):
                changed = values.copy()
                changed[groups == g] += 10.0
                out = smooth(changed, order, kernel, width)
                # box prefix sums and wide kernels (FFT) run over the whole array: their
                # round-off (~1e-12) is the only thing another video can change
                np.testing.assert_allclose(out[groups != g], base[groups != g], atol=1e-9)
                assert not np.allclose(out[groups == g], base[groups == g])


def test_box_smoothing_counts_listed_neighbours_in_frame_order():
    frames = np.array([30, 10, 20, 1000])  # sparse frames, rows not in frame order
    order = VideoOrder.of(np.zeros(4, dtype=int), frames)
    values = np.array([3.0, 1.0, 2.0, 4.0], dtype=np.float32)
    out = smooth(values, order, "box", 1)
    # in frame order: 1, 2, 3, 4 -> means of neighbours: 1.5, 2, 3, 3.5
    np.testing.assert_allclose(out, [3.0, 1.5, 2.0, 3.5])


def test_greedy_weights_recover_known_optimum():
    rng = np.random.default_rng(3)
    truth = rng.normal(size=4000)
    noise_a, noise_b = rng.normal(size=4000), rng.normal(size=4000)
    # a and b carry independent noise of equal size: the best mix is 1/2, 1/2; c is useless.
    candidates = np.stack([truth + noise_a, truth + noise_b, rng.normal(size=4000) * 2])
    weights, score = greedy_weights(
        candidates[:, :, None].astype(np.float32),
        lambda v: -float(np.mean((v[:, 0] - truth) ** 2)),
        max_steps=20,
    )
    np.testing.assert_allclose(weights, [0.5, 0.5, 0.0], atol=0.051)
    assert score == pytest.approx(
        -np.mean(((candidates[0] + candidates[1]) / 2 - truth) ** 2), 0.05
    )


def test_greedy_weights_prefer_fewer_candidates_on_ties():
    x = np.linspace(0, 1, 50, dtype=np.float32)[:, None]
    candidates = np.stack([x, x, x])  # identical candidates: one is enough
    weights, _ = greedy_weights(candidates, lambda v: float(v.sum()))
    np.testing.assert_array_equal(weights, [1.0, 0.0, 0.0])


def test_expr_offsets_raise_macro_f1_on_biased_probabilities():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 8, 3000)
    logits = np.eye(8)[labels] * 1.5 + rng.normal(0, 1, (3000, 8))
    logits[:, 0] += 1.2  # a bias towards "neutral" that offsets can remove
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    before = metrics.expr_f1(labels, probs.argmax(axis=1))
    offsets, after = calibration.fit_expr_offsets(labels, probs)
    assert after == pytest.approx(
        metrics.expr_f1(labels, calibration.apply_expr_offsets(probs, offsets))
    )
    assert after > before + 0.05 and offsets[0] < 0


def test_va_calibration_maps_mean_and_spread():
    rng = np.random.default_rng(2)
    truth = rng.uniform(-0.8, 0.8, (2000, 2))
    preds = truth * 0.3 + 0.2 + rng.normal(0, 0.05, truth.shape)
    scale, shift = calibration.fit_va_calibration(truth, preds)
    fixed = calibration.apply_affine(preds, scale, shift)
    assert metrics.ccc(truth[:, 0], fixed[:, 0]) > metrics.ccc(truth[:, 0], preds[:, 0]) + 0.3
    assert fixed.min() >= -1 and fixed.max() <= 1


def test_fill_missing_interpolates_within_video_then_nearest_then_prior():
    values = np.array([[0.0], [np.nan], [1.0], [np.nan], [np.nan], [np.nan]], dtype=np.float32)
    groups = np.array([0, 0, 0, 0, 1, 1])
    frames = np.array([1, 2, 5, 9, 1, 2])
    out, report = fill_missing(values, groups, frames, prior=np.array([0.25], np.float32))
    np.testing.assert_allclose(out[:, 0], [0.0, 0.25, 1.0, 1.0, 0.25, 0.25])
    assert (report.filled_rows, report.prior_groups, report.prior_rows) == (2, 1, 2)


@pytest.mark.parametrize("task", ["va", "expr", "au"])
def test_tuned_blend_beats_best_single_candidate(task):
    data = synthetic_task(task, n_rows=3000, n_videos=12, n_candidates=4, seed=1)
    rules = rules_for(task)
    labelled = rules.labelled(data.labels)
    singles = [
        rules.score(data.labels[labelled], rules.decide(c[labelled], rules.identity_post()))
        for c in data.candidates
    ]
    fitted = fit_task(rules, data.candidates, data.labels, data.order, BlendOptions())
    stages = fitted.stage_scores
    assert stages["blend"] > max(singles)
    assert stages["smoothing"] >= stages[rules.post_name] >= stages["blend"] - 1e-9
    assert fitted.half_width > 0  # labels are smooth within a video: smoothing must help
    serial, (outputs, folds) = tune_task(
        rules, data.candidates, data.labels, data.groups, data.frames, BlendOptions(n_jobs=1)
    )
    assert folds == 3 and rules.score(data.labels, outputs) > max(singles)
    np.testing.assert_array_equal(serial.weights, fitted.weights)
    # The full fit is fit_task's, with the stages the cross-fit dropped switched off.
    decisions = serial.decisions
    for entry in decisions.values():
        assert not entry["kept"] or entry["crossfit"] > entry["without"]
    kept = replace(
        BlendOptions(),
        correction=decisions[rules.post_name]["kept"],
        smoothing=decisions["smoothing"]["kept"],
    )
    refit = fit_task(rules, data.candidates, data.labels, data.order, kept)
    assert serial.stage_scores == refit.stage_scores

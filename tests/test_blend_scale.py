"""The blend's vectorised building blocks give exactly what straightforward per-video /
per-row implementations (written here, as references) give; and the scaling bench runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from affectpipe.blend import calibration, synthetic
from affectpipe.blend.interpolate import fill_missing
from affectpipe.blend.smoothing import Smoother, VideoOrder, group_codes, kernel_weights, smooth
from affectpipe.blend.synthetic import ABAW5_TEST_ROWS, write_scaled_run
from affectpipe.config import DatasetPaths
from affectpipe.manifest import read_manifest, read_manifest_metadata
from affectpipe.metrics import N_EXPR
from affectpipe.splits import video_folds
from affectpipe.submission import values
from tests.conftest import run_cli

# --- references: one video / one row at a time ---------------------------------------------


def fill_reference(values, groups, frames, prior):
    """Per group: np.interp over its known frames (stable frame order), else the prior."""
    out = values.copy()
    missing = ~np.isfinite(values).all(axis=1)
    prior_groups = 0
    for group in np.unique(groups[missing]):
        rows = np.flatnonzero(groups == group)
        known, holes = rows[~missing[rows]], rows[missing[rows]]
        if not len(known):
            out[holes] = prior
            prior_groups += 1
            continue
        order = np.argsort(frames[known], kind="stable")
        xs = frames[known][order].astype(np.float64)
        for k in range(values.shape[1]):
            ys = values[known][order, k].astype(np.float64)
            out[holes, k] = np.interp(frames[holes].astype(np.float64), xs, ys)
    return out, prior_groups


def smooth_reference(values, groups, frames, kernel, half_width):
    """Per video, in frame order: the kernel's weighted mean over the neighbours that exist."""
    weights = kernel_weights(kernel, half_width)
    out = np.empty_like(values, dtype=np.float64)
    for group in np.unique(groups):
        rows = np.flatnonzero(groups == group)
        rows = rows[np.lexsort((rows, frames[rows]))]
        for i, row in enumerate(rows):
            lo, hi = max(0, i - half_width), min(len(rows), i + half_width + 1)
            w = weights[lo - i + half_width : hi - i + half_width]
            out[row] = w @ values[rows[lo:hi]].astype(np.float64) / w.sum()
    return out


def offsets_reference(labels, probs):
    """Coordinate ascent over the offset grid, every grid value's decisions made in full."""
    scores = calibration.log_probs(probs)
    offsets = np.zeros(N_EXPR)
    best = calibration.macro_f1_from_pairs(labels, np.argmax(scores, axis=1)[None])[0]
    for _ in range(calibration.OFFSET_ROUNDS):
        improved = False
        for c in range(N_EXPR):
            f1 = []
            for value in calibration.OFFSET_GRID:
                trial = offsets.copy()
                trial[c] = value
                shifted = scores + trial
                others = shifted.copy()
                others[:, c] = -np.inf
                wins = scores[:, c] + value > others.max(axis=1)
                decided = np.where(wins, c, others.argmax(axis=1))
                f1.append(calibration.macro_f1_from_pairs(labels, decided[None])[0])
            f1 = np.array(f1)
            pick = np.lexsort((-np.abs(calibration.OFFSET_GRID), f1))[-1]
            if f1[pick] > best + 1e-9:
                best, offsets[c], improved = f1[pick], calibration.OFFSET_GRID[pick], True
        if not improved:
            break
    return offsets, best


def videos(rng, n_rows, n_groups):
    groups = rng.integers(0, n_groups, n_rows)
    frames = rng.integers(1, 40, n_rows)  # duplicate frames within a video happen
    return groups, frames


# --- the vectorised functions against them -------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_fill_missing_equals_per_video_interpolation(seed):
    rng = np.random.default_rng(seed)
    groups, frames = videos(rng, 400, 12)
    values = rng.normal(size=(400, 3)).astype(np.float32)
    values[rng.random(400) < [0.05, 0.3, 0.7, 0.95, 0.5, 0.2][seed]] = np.nan
    values[groups == 3] = np.nan  # a video without any prediction: the prior
    values[rng.random(400) < 0.05, 1] = np.nan  # one NaN column makes the row missing
    prior = np.array([7.0, 8.0, 9.0], np.float32)
    out, report = fill_missing(values, groups, frames, prior)
    expected, prior_groups = fill_reference(values, groups, frames, prior)
    np.testing.assert_array_equal(out, expected)  # bit for bit
    missing = ~np.isfinite(values).all(axis=1)
    assert report.prior_groups == prior_groups >= 1
    assert (report.prior | report.interpolated).tolist() == missing.tolist()


@pytest.mark.parametrize("kernel", ["box", "gaussian"])
def test_smoother_equals_per_video_weighted_means(kernel):
    rng = np.random.default_rng(1)
    groups, frames = videos(rng, 600, 7)
    values = rng.random((600, 4)).astype(np.float32)
    smoother = Smoother(values, VideoOrder.of(groups, frames))
    for half_width in (1, 3, 12, 40, 100):  # direct and FFT convolutions, windows > videos
        out = smoother(kernel, half_width)
        expected = smooth_reference(values, groups, frames, kernel, half_width)
        np.testing.assert_allclose(out, expected, rtol=0, atol=2e-6)
        # the cached sorted rows and prefix sums give what a fresh smooth gives
        fresh = smooth(values, VideoOrder.of(groups, frames), kernel, half_width)
        np.testing.assert_array_equal(out, fresh)
    np.testing.assert_array_equal(smoother(kernel, 0), values)


def test_group_codes_number_combinations_in_text_order():
    rng = np.random.default_rng(2)
    split = rng.choice(["val", "test", "train"], 300)
    video = rng.choice(["v10", "v9", "a", "b_left", "Z"], 300)
    table = np.stack([split, video], axis=1)
    expected = np.unique(table, axis=0, return_inverse=True)[1].ravel()
    np.testing.assert_array_equal(group_codes(split, video), expected)
    as_series = group_codes(pd.Series(split, dtype="string"), pd.Series(video, dtype="string"))
    np.testing.assert_array_equal(as_series, expected)
    numbers = rng.integers(0, 20, 300)  # numbers order as their text: "10" < "9"
    expected = np.unique(numbers.astype(str), return_inverse=True)[1].ravel()
    np.testing.assert_array_equal(group_codes(numbers), expected)


def test_video_folds_deal_shuffled_videos_in_turn():
    codes = np.random.default_rng(3).integers(0, 23, 500) * 7
    for n_folds, seed in ((3, 0), (2, 5), (5, 1)):
        videos_ = np.unique(codes)
        shuffled = np.random.default_rng(seed).permutation(videos_)
        fold_of = {v: i % n_folds for i, v in enumerate(shuffled)}
        expected = [fold_of[v] for v in codes]
        assert video_folds(codes, n_folds, seed).tolist() == expected


@pytest.mark.parametrize("seed", range(3))
def test_expr_offsets_equal_full_grid_search(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_EXPR, 3000)
    logits = rng.normal(size=(3000, N_EXPR)) + 1.5 * np.eye(N_EXPR)[labels]
    logits[:, 0] += 1.0  # a class predicted too often: offsets help
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probs = probs.astype(np.float32)
    probs[:40] = np.round(probs[:40], 1)  # ties between classes and grid points
    offsets, f1 = calibration.fit_expr_offsets(labels, probs)
    expected_offsets, expected_f1 = offsets_reference(labels, probs)
    np.testing.assert_array_equal(offsets, expected_offsets)
    assert f1 == expected_f1
    assert offsets.any()


def test_submission_lines_equal_per_value_formatting():
    rng = np.random.default_rng(4)
    flags = (rng.random((500, 12)) < 0.3).astype(np.int8)
    flags[0], flags[1] = 0, 1
    assert values.format_au(flags) == [",".join(str(int(x)) for x in row) for row in flags]
    va = rng.uniform(-1.3, 1.3, (500, 2)).astype(np.float32)
    va[0] = [-0.0, 1e-9]
    expected = [
        f"{float(np.clip(v, -1, 1)) + 0.0:.6f},{float(np.clip(a, -1, 1)) + 0.0:.6f}" for v, a in va
    ]
    assert values.format_va(va) == expected
    codes = rng.integers(0, 8, 500).astype(np.int8)
    assert values.format_expr(codes) == [str(int(c)) for c in codes]


def test_synthetic_signal_equals_per_video_generation():
    groups = np.repeat([4, 0, 9, 2], [30, 1, 55, 20])[np.random.default_rng(5).permutation(106)]
    rng_a, rng_b = np.random.default_rng(6), np.random.default_rng(6)
    out = synthetic._smooth_signal(rng_a, groups, 3)
    expected = np.empty((len(groups), 3))
    for v in np.unique(groups):  # the per-video loop the vectorised generator replaced
        rows = np.flatnonzero(groups == v)
        t = np.arange(len(rows))[:, None]
        periods = rng_b.uniform(80, 600, size=(3, 3))
        phases = rng_b.uniform(0, 2 * np.pi, size=(3, 3))
        waves = np.sin(2 * np.pi * t[..., None] / periods.T[None] + phases.T[None])
        expected[rows] = waves.mean(axis=2) * 1.4 + rng_b.normal(0, 0.2, size=3)
    np.testing.assert_array_equal(out, np.clip(expected, -1, 1))


# --- the full-size run writer and the bench ------------------------------------------------


def test_scaled_run_has_per_task_lists_of_whole_videos(tmp_path):
    paths = write_scaled_run(DatasetPaths.of(tmp_path, "s"), n_val=3000, n_test=6000)
    manifest = read_manifest(paths.manifest)
    lists = read_manifest_metadata(paths.manifest)["test_lists"]
    sizes = {task: entry["rows"][1] - entry["rows"][0] for task, entry in lists.items()}
    assert sum(sizes.values()) == 6000 and list(sizes) == list(ABAW5_TEST_ROWS)
    assert sizes["expr"] > sizes["va"] > sizes["au"]  # the ABAW5 lists' proportions
    for entry in lists.values():
        block = manifest.iloc[slice(*entry["rows"])]
        assert (block["split"] == "test").all()
        for _, frames in block.groupby("video", sort=False)["frame"]:
            assert frames.tolist() == list(range(1, len(frames) + 1))  # every frame listed
    assert (manifest["split"] == "val").sum() == 3000
    assert not manifest.loc[manifest["split"] == "test", "has_image"].all()


@pytest.mark.slow
def test_bench_blend_runs_the_whole_blend_and_reports_stages(tmp_path):
    result = run_cli(
        "bench", "blend", "--rows", "4k", "--candidates", "2", "--workdir", tmp_path, check=True
    )
    out = result.stdout
    for stage in ("load", "tune va", "crossfit au", "write submission", "report"):
        assert f"{stage} " in out
    assert "peak RSS" in out and "1,600 validation rows, 4,000 test rows" in out
    record = json.loads(next(tmp_path.glob("*/runs/default/blend/blend.json")).read_text())
    lines = {e["path"].rsplit("/", 1)[-1] for e in record["submission_files"]}
    assert lines == {"VA_predictions.txt", "EXPR_predictions.txt", "AU_predictions.txt"}
    assert run_cli("bench", "blend", "--rows", "12").returncode == 2  # too few rows

"""The temporal head: planted temporal signal, masking, frame gaps, determinism, and the
candidate pipeline (`<feature set>/temporal`) end to end on a small synthetic cache."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from affectpipe import metrics
from affectpipe.config import DatasetPaths
from affectpipe.heads.fitted import load_head
from affectpipe.heads.models import MLPHead
from affectpipe.heads.synthetic import Scale, write_synthetic_cache
from affectpipe.heads.temporal import Sequences, TemporalHead
from affectpipe.heads.training import train

FAST = {"width": 32, "window": 32, "lr": 1e-2, "max_epochs": 6, "patience": 6}


def _videos(n_videos: int, n_frames: int, dim: int, rng: np.random.Generator, gaps=None):
    groups = np.repeat(np.arange(n_videos), n_frames)
    if gaps is None:
        frames = np.tile(np.arange(1, n_frames + 1), n_videos)
    else:
        frames = np.concatenate([np.cumsum(rng.choice(gaps, n_frames)) for _ in range(n_videos)])
    X = rng.standard_normal((len(groups), dim)).astype(np.float32)
    return X, groups, frames


def _past_mean(x: np.ndarray, groups: np.ndarray, lag: int) -> np.ndarray:
    """Mean of x over the `lag` previous frames of the same video (0 at a video's start)."""
    out = np.zeros_like(x)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        padded = np.r_[np.zeros(lag), x[rows]]
        csum = np.cumsum(padded)
        out[rows] = (csum[lag - 1 : -1] - np.r_[0, csum[: -lag - 1]]) / lag
    return out


def _va_from_past(X, groups):
    valence = np.tanh(2.0 * _past_mean(X[:, 0], groups, 3))
    arousal = np.tanh(1.5 * _past_mean(X[:, 1], groups, 1))
    return np.stack([valence, arousal], axis=1).astype(np.float32)


@pytest.mark.slow
def test_temporal_head_learns_a_signal_in_previous_frames_a_frame_head_cannot_see():
    rng = np.random.default_rng(0)
    X, groups, frames = _videos(32, 48, 4, rng)
    y = _va_from_past(X, groups)
    train, test = groups < 24, groups >= 24
    ok = np.ones(len(X), dtype=bool)
    head = TemporalHead(task="va", arch="tcn", **FAST).fit(
        X[train], y[train], groups[train], frames[train], ok[train]
    )
    temporal = head.predict_outputs(X[test], groups[test], frames[test], ok[test])
    frame_head = MLPHead(task="va", max_epochs=5).fit(X[train], y[train])
    frame = frame_head.predict_outputs(X[test])
    temporal_ccc = metrics.va_scores(y[test], temporal)["p_va"]
    frame_ccc = metrics.va_scores(y[test], frame)["p_va"]
    assert frame_ccc < 0.15  # the current frame says nothing about its label
    assert temporal_ccc > 0.6


@pytest.mark.slow
def test_gru_learns_it_too_and_auto_keeps_the_better_architecture():
    rng = np.random.default_rng(1)
    X, groups, frames = _videos(30, 48, 4, rng)
    y = _va_from_past(X, groups)
    ok = np.ones(len(X), dtype=bool)
    head = TemporalHead(task="va", arch="auto", **FAST).fit(X, y, groups, frames, ok)
    assert set(head.arch_scores_) == {"tcn", "gru"}
    assert head.arch_ == max(head.arch_scores_, key=head.arch_scores_.get)
    assert head.arch_scores_["gru"] > 0.4  # held-out train videos


def test_missing_labels_never_reach_the_loss_and_not_ok_features_are_masked():
    rng = np.random.default_rng(2)
    X, groups, frames = _videos(12, 40, 4, rng)
    y = _va_from_past(X, groups)
    missing = rng.random(len(X)) < 0.3
    ok = rng.random(len(X)) > 0.1
    params = {"task": "va", "arch": "tcn", **FAST, "max_epochs": 1}

    def fitted(labels, features):
        head = TemporalHead(**params).fit(features, labels, groups, frames, ok)
        return head.predict_outputs(features, groups, frames, ok)

    nan_labels, sentinel_labels = y.copy(), y.copy()
    nan_labels[missing] = np.nan
    sentinel_labels[missing] = -7.0  # below the -5 sentinel: missing as well
    poisoned_features = X.copy()
    poisoned_features[~ok] = np.nan  # features of frames that are not ok never enter
    a = fitted(nan_labels, poisoned_features)
    b = fitted(sentinel_labels, X)
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a[ok]).all() and np.isnan(a[~ok]).all()

    expr = (X[:, 0] > 0).astype(np.int64) * 4
    expr_a, expr_b = expr.copy(), expr.copy()
    expr_a[missing], expr_b[missing] = -1, -9
    for labels in (expr_a, expr_b):
        head = TemporalHead(task="expr", arch="gru", **{**FAST, "max_epochs": 1})
        head.fit(X, labels, groups, frames, ok)
    np.testing.assert_array_equal(
        head.predict_outputs(X, groups, frames, ok),
        TemporalHead(task="expr", arch="gru", **{**FAST, "max_epochs": 1})
        .fit(X, expr_a, groups, frames, ok)
        .predict_outputs(X, groups, frames, ok),
    )


def test_frame_gaps_are_an_input_and_row_order_does_not_matter():
    rng = np.random.default_rng(3)
    X, groups, frames = _videos(40, 40, 3, rng, gaps=(1, 8))
    gap = np.r_[0, np.diff(frames)]
    gap[np.r_[True, groups[1:] != groups[:-1]]] = 1
    # The label says how far the previous listed frame is: no feature carries it.
    y = np.stack([np.where(gap == 8, 0.8, -0.8), np.zeros(len(X))], axis=1).astype(np.float32)
    y[:, 1] = np.tanh(X[:, 0])
    ok = np.ones(len(X), dtype=bool)
    train, test = groups < 30, groups >= 30
    head = TemporalHead(task="va", arch="tcn", **FAST).fit(
        X[train], y[train], groups[train], frames[train], ok[train]
    )
    out = head.predict_outputs(X[test], groups[test], frames[test], ok[test])
    assert metrics.ccc(y[test, 0], out[:, 0]) > 0.8
    shuffle = rng.permutation(int(test.sum()))
    shuffled = head.predict_outputs(
        X[test][shuffle], groups[test][shuffle], frames[test][shuffle], ok[test][shuffle]
    )
    np.testing.assert_allclose(shuffled, out[shuffle], atol=1e-6)


def test_sequences_share_repeated_frames_and_cover_every_frame_with_windows():
    groups = np.array([0, 0, 0, 1, 1, 0])
    frames = np.array([5, 1, 9, 2, 2, 1])  # row 5 repeats (video 0, frame 1)
    seq = Sequences.of(groups, frames, window=2, step=1)
    assert seq.key_of_row[1] == seq.key_of_row[5]
    assert seq.key_of_row[3] == seq.key_of_row[4]
    np.testing.assert_array_equal(seq.frame, [1, 5, 9, 2])
    covered = np.unique(seq.windows[seq.windows >= 0])
    np.testing.assert_array_equal(covered, np.arange(4))
    assert not (np.isin(seq.windows, [0, 1, 2]).any(axis=1) & (seq.windows == 3).any(axis=1)).any()
    np.testing.assert_allclose(seq.gap_features()[:, 0], [0, np.log(4), np.log(4), 0])


def test_same_seed_same_predictions_other_seed_other_predictions():
    rng = np.random.default_rng(4)
    X, groups, frames = _videos(10, 40, 4, rng)
    y = _va_from_past(X, groups)
    ok = np.ones(len(X), dtype=bool)

    def run(seed):
        head = TemporalHead(task="va", **{**FAST, "max_epochs": 1}, random_state=seed)
        return head.fit(X, y, groups, frames, ok).predict_outputs(X, groups, frames, ok)

    np.testing.assert_array_equal(run(0), run(0))
    assert not np.array_equal(run(0), run(1))


@pytest.mark.slow
def test_temporal_candidate_through_heads_train(tmp_path):
    paths = DatasetPaths.of(tmp_path, "synth")
    write_synthetic_cache(paths, Scale(1600, 400, 400, rows_per_video=100), seed=0)
    result = train(
        paths,
        tasks=["va", "expr"],
        candidates=["mt-emotieffnet:logits/temporal"],
        progress=False,
    )
    assert [r.candidate for r in result.results] == ["mt-emotieffnet.logits__temporal"] * 2
    manifest = pd.read_parquet(paths.manifest)
    for r in result.results:
        preds = pd.read_parquet(r.preds_path)
        assert set(preds["split"]) == {"val", "test"}
        main = {"va": "p_va", "expr": "p_expr"}[r.task]
        assert np.isfinite(r.scores[main])
        head = load_head(r.head_path)
        again = head.predict_manifest(paths, manifest).to_numpy()[preds["row"].to_numpy()]
        columns = [c for c in preds.columns if c not in ("row", "image", "split")]
        np.testing.assert_allclose(again, preds[columns].to_numpy(), atol=1e-5)
        assert np.isfinite(preds[columns].to_numpy()).mean() > 0.99  # a few rows not ok


def test_one_default_temporal_candidate_per_task_unless_turned_off(tmp_path):
    from affectpipe.heads.candidates import HeadsConfig, load_config, select_candidates

    backbones = {"ddamfn": ["embedding", "logits"], "openface": ["embedding"]}
    chosen = [str(c) for c in select_candidates(HeadsConfig(), backbones)]
    temporal = [c for c in chosen if c.endswith("__temporal")]
    # on the early fusion of the backbones: the frame heads' best inputs
    assert temporal == [
        "va/ddamfn.embedding+logits+openface.embedding__temporal",
        "expr/ddamfn.embedding+logits+openface.embedding__temporal",
        "au/ddamfn.embedding+logits+openface.embedding__temporal",
    ]
    alone = select_candidates(HeadsConfig(fusion=False), backbones)
    assert [str(c) for c in alone if c.model == "temporal"][0] == (
        "va/ddamfn.embedding+logits__temporal"
    )
    config = tmp_path / "pipeline.toml"
    config.write_text("[heads]\ntemporal = false\n")
    off = select_candidates(load_config(config), backbones)
    assert not [c for c in off if c.model == "temporal"]


def test_folds_give_out_of_fold_predictions_for_train_and_val_videos():
    from affectpipe.heads.temporal import fit_temporal_candidate

    rng = np.random.default_rng(5)
    X, groups, frames = _videos(12, 30, 3, rng)
    y = _va_from_past(X, groups)
    split = np.where(groups < 8, "train", np.where(groups < 10, "val", "test"))
    ok = np.ones(len(X), dtype=bool)
    model = TemporalHead(task="va", arch="tcn", **{**FAST, "max_epochs": 1})
    _, outputs, info = fit_temporal_candidate(model, "va", X, ok, split, groups, frames, y, 2)
    assert np.isfinite(outputs).all()  # train rows too: out of fold
    assert set(info["oof_scores"]) >= {"p_va"} and info["arch"] == "tcn"
    _, plain, _ = fit_temporal_candidate(model, "va", X, ok, split, groups, frames, y, 0)
    assert np.isnan(plain[split == "train"]).all()
    np.testing.assert_array_equal(plain[split == "test"], outputs[split == "test"])


def test_residual_temporal_head_starts_from_its_frame_head_and_keeps_it_without_signal():
    """Labels of the current frame only (no temporal signal): the sequence model's
    correction cannot beat its frame head on the held-out videos, so the head predicts as
    the frame head does (epoch 0), and as well as a linear frame head on the same rows."""
    from affectpipe.heads.models import LinearHead

    rng = np.random.default_rng(3)
    X, groups, frames = _videos(30, 40, 6, rng)
    y = (X[:, 0] + 0.3 * rng.standard_normal(len(X)) > 0).astype(np.int64) * 4
    train, test = groups < 20, groups >= 20
    ok = np.ones(len(X), dtype=bool)
    head = TemporalHead(task="expr", arch="tcn", **FAST).fit(
        X[train], y[train], groups[train], frames[train], ok[train]
    )
    assert head.base_ is not None
    temporal = head.predict_outputs(X[test], groups[test], frames[test], ok[test])
    frame = LinearHead(task="expr").fit(X[train], y[train]).predict_outputs(X[test])
    f1 = [metrics.expr_f1(y[test], p.argmax(axis=1)) for p in (temporal, frame)]
    assert f1[0] >= f1[1] - 0.02, f1

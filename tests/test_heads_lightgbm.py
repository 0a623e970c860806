"""LightGBM head: one binned Dataset reused across outputs, early stopping, thread budget."""

from __future__ import annotations

import os

import lightgbm as lgb
import numpy as np
import pytest

from affectpipe.heads.models import SMALL_PROBLEM, LightGBMHead, lightgbm_threads

RNG = np.random.default_rng(0)
X = RNG.standard_normal((400, 6)).astype(np.float32)


def _au_labels(rows: np.ndarray) -> np.ndarray:
    """4 AUs; AU 0 has missing entries, AU 1 none (weights all ones), so a reused Dataset
    that kept AU 0's weights for AU 1 would train a different model."""
    y = (X[rows, :4] + 0.5 * RNG.standard_normal((len(rows), 4)) > 0).astype(np.int64)
    y[::3, 0] = -1
    y[::5, 2:] = -1
    return y


def test_shared_dataset_matches_one_dataset_per_output() -> None:
    fit, stop = np.arange(300), np.arange(300, 400)
    y, y_stop = _au_labels(fit), _au_labels(stop)
    head = LightGBMHead(task="au", n_estimators=15, class_weighting=False, min_data_in_leaf=5)
    head.fit(X[fit], y, eval_set=(X[stop], y_stop))
    binning, params = head.lightgbm_params(X[fit].size)
    for j, text in enumerate(head.boosters_):
        train = lgb.Dataset(
            X[fit], label=np.maximum(y[:, j], 0), weight=(y[:, j] >= 0) * 1.0, params=binning
        )
        valid = lgb.Dataset(
            X[stop],
            label=np.maximum(y_stop[:, j], 0),
            weight=(y_stop[:, j] >= 0) * 1.0,
            reference=train,
            params=binning,
        )
        alone = lgb.train(
            {**params, "objective": "binary"},
            train,
            num_boost_round=15,
            valid_sets=[valid],
            callbacks=[lgb.early_stopping(10, verbose=False)],
        )
        shared = lgb.Booster(model_str=text)
        assert shared.num_trees() == alone.best_iteration == head.n_rounds_[j]
        np.testing.assert_array_equal(
            shared.predict(X), alone.predict(X, num_iteration=alone.best_iteration)
        )


def test_early_stopping_keeps_the_best_round() -> None:
    y_noise = RNG.standard_normal((400, 2)).astype(np.float32) * 0.5  # nothing to learn
    stopped = LightGBMHead(task="va", n_estimators=200, learning_rate=0.3, min_data_in_leaf=5)
    stopped.fit(X[:300], y_noise[:300], eval_set=(X[300:], y_noise[300:]))
    assert all(1 <= n < 50 for n in stopped.n_rounds_)
    assert [lgb.Booster(model_str=t).num_trees() for t in stopped.boosters_] == stopped.n_rounds_
    assert stopped.refit_params() == {"n_estimators": max(stopped.n_rounds_)}  # cross-fitting
    full = LightGBMHead(task="va", n_estimators=40, min_data_in_leaf=5).fit(X, y_noise)
    assert full.n_rounds_ == [40, 40]  # no eval set: the whole budget


def test_expr_multiclass_learns_and_predicts_probabilities() -> None:
    y = np.abs(X[:, 0] * 3).astype(np.int64) % 8
    head = LightGBMHead(task="expr", n_estimators=30, min_data_in_leaf=5).fit(X[:300], y[:300])
    proba = head.predict_outputs(X[300:])
    assert proba.shape == (100, 8)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert (proba.argmax(axis=1) == y[300:]).mean() > 0.5  # chance is 1/8


def test_threads_follow_the_openmp_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """joblib's worker processes set OMP_NUM_THREADS to cores // workers: LightGBM in a
    worker must not take every core."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert lightgbm_threads(SMALL_PROBLEM) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert lightgbm_threads(SMALL_PROBLEM) == len(os.sched_getaffinity(0))
    assert lightgbm_threads(SMALL_PROBLEM - 1) == 1

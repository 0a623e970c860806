"""affectpipe.metrics agrees with scikit-learn and the textbook CCC formula to 1e-9."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from affectpipe import metrics

TOL = 1e-9


def textbook_ccc(x: np.ndarray, y: np.ndarray) -> float:
    """2 s_xy / (s_x^2 + s_y^2 + (mean_x - mean_y)^2) with population statistics."""
    sxy = np.sum((x - x.mean()) * (y - y.mean())) / len(x)
    return 2 * sxy / (np.var(x) + np.var(y) + (x.mean() - y.mean()) ** 2)


def sklearn_expr_f1(t: np.ndarray, p: np.ndarray) -> float:
    return f1_score(t, p, labels=range(8), average="macro", zero_division=0)


@pytest.mark.parametrize("seed", range(5))
def test_ccc_random(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, 500)
    y = 0.6 * x + rng.normal(0, 0.3, 500) + 0.1
    assert metrics.ccc(x, y) == pytest.approx(textbook_ccc(x, y), abs=TOL)


def test_ccc_masks_sentinels_and_nan() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, 300)
    y = rng.uniform(-1, 1, 300)
    x_missing = x.copy()
    x_missing[:40] = -5.0
    x_missing[40:60] = np.nan
    valid = slice(60, None)
    assert metrics.ccc(x_missing, y) == pytest.approx(textbook_ccc(x[valid], y[valid]), abs=TOL)


def test_ccc_edge_cases() -> None:
    x = np.linspace(-1, 1, 50)
    assert metrics.ccc(x, x) == pytest.approx(1.0, abs=TOL)
    assert metrics.ccc(x, -x) == pytest.approx(-1.0, abs=TOL)
    # A constant prediction has no covariance: CCC 0, not NaN.
    assert metrics.ccc(x, np.full(50, 0.3)) == pytest.approx(0.0, abs=TOL)
    assert np.isnan(metrics.ccc(np.full(5, -5.0), np.zeros(5)))  # nothing valid
    assert np.isnan(metrics.ccc(np.array([]), np.array([])))
    assert np.isnan(metrics.ccc(np.full(4, 0.2), np.full(4, 0.2)))  # 0/0


def test_va_scores_need_both_values() -> None:
    rng = np.random.default_rng(2)
    truth = rng.uniform(-1, 1, (200, 2))
    pred = truth + rng.normal(0, 0.2, (200, 2))
    truth[:30, 0] = -5.0  # valence missing -> the row does not count for arousal either
    truth[30:50, 1] = np.nan
    rows = slice(50, None)
    scores = metrics.va_scores(truth, pred)
    expect_v = textbook_ccc(truth[rows, 0], pred[rows, 0])
    expect_a = textbook_ccc(truth[rows, 1], pred[rows, 1])
    assert scores["ccc_valence"] == pytest.approx(expect_v, abs=TOL)
    assert scores["ccc_arousal"] == pytest.approx(expect_a, abs=TOL)
    assert scores["p_va"] == pytest.approx((expect_v + expect_a) / 2, abs=TOL)
    empty = metrics.va_scores(np.full((3, 2), -5.0), np.zeros((3, 2)))
    assert all(np.isnan(v) for v in empty.values())


@pytest.mark.parametrize("seed", range(5))
def test_expr_f1_random(seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 8, 400)
    p = np.where(rng.random(400) < 0.5, t, rng.integers(0, 8, 400))
    assert metrics.expr_f1(t, p) == pytest.approx(sklearn_expr_f1(t, p), abs=TOL)
    per_class = f1_score(t, p, labels=range(8), average=None, zero_division=0)
    np.testing.assert_allclose(metrics.expr_f1_per_class(t, p), per_class, atol=TOL)


def test_expr_f1_edge_cases() -> None:
    rng = np.random.default_rng(3)
    t = rng.integers(-1, 8, 300)  # -1 = missing, masked out
    p = rng.integers(0, 8, 300)
    valid = t >= 0
    assert metrics.expr_f1(t, p) == pytest.approx(sklearn_expr_f1(t[valid], p[valid]), abs=TOL)
    one_class = np.full(50, 4)
    assert metrics.expr_f1(one_class, one_class) == pytest.approx(1 / 8, abs=TOL)
    constant = np.zeros(50, dtype=int)
    assert metrics.expr_f1(t[:50].clip(0), constant) == pytest.approx(
        sklearn_expr_f1(t[:50].clip(0), constant), abs=TOL
    )
    assert np.isnan(metrics.expr_f1(np.full(10, -1), np.zeros(10)))


def sklearn_au_f1(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    out = []
    for k in range(t.shape[1]):
        valid = t[:, k] >= 0
        out.append(f1_score(t[valid, k], p[valid, k], labels=[0, 1], zero_division=0))
    return np.array(out)


@pytest.mark.parametrize("seed", range(5))
def test_au_f1_random_with_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = (rng.random((300, 12)) < rng.uniform(0.05, 0.6, 12)).astype(int)
    t[rng.random((300, 12)) < 0.2] = -1
    p = (rng.random((300, 12)) < 0.3).astype(int)
    expected = sklearn_au_f1(t, p)
    np.testing.assert_allclose(metrics.au_f1_per_au(t, p), expected, atol=TOL)
    assert metrics.au_f1(t, p) == pytest.approx(expected.mean(), abs=TOL)


def test_au_f1_edge_cases() -> None:
    t = np.zeros((20, 12), dtype=int)
    t[:5, 0] = 1
    all_zero = np.zeros_like(t)
    expected = sklearn_au_f1(t, all_zero)  # constant negative prediction: F1 0
    np.testing.assert_allclose(metrics.au_f1_per_au(t, all_zero), expected, atol=TOL)
    t[:, 3] = -1  # an AU with no valid label: NaN, and so is the mean (never a silent 0)
    per_au = metrics.au_f1_per_au(t, all_zero)
    assert np.isnan(per_au[3]) and not np.isnan(per_au[2])
    assert np.isnan(metrics.au_f1(t, all_zero))
    with pytest.raises(ValueError):
        metrics.au_f1_per_au(t, all_zero[:, :11])


def test_mtl_score_is_the_sum() -> None:
    assert metrics.mtl_score(0.5, 0.3, 0.4) == pytest.approx(1.2, abs=TOL)


def test_present_class_scores_average_only_what_the_labels_contain() -> None:
    """Smile vs neutral: ABAW's P_EXPR is capped at 0.25 by the 6 absent classes; the
    present-class score is the macro over the two that occur."""
    truth = np.array([0, 0, 4, 4, -1])
    pred = np.array([0, 4, 4, 4, 2])
    per_class = metrics.expr_f1_per_class(truth, pred)
    assert metrics.expr_f1(truth, pred) == pytest.approx(per_class.sum() / 8)
    assert metrics.expr_f1_present(truth, pred) == pytest.approx((per_class[0] + per_class[4]) / 2)
    assert np.isnan(metrics.expr_f1_present(np.array([-1]), np.array([0])))
    aus = np.zeros((4, 12), dtype=int)
    aus[:2, 0] = 1
    guess = aus.copy()
    guess[0, 0] = 0
    assert metrics.au_f1_present(aus, guess) == pytest.approx(metrics.au_f1_per_au(aus, guess)[0])
    assert metrics.au_f1(aus, guess) == pytest.approx(metrics.au_f1_per_au(aus, guess)[0] / 12)

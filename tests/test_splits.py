"""The hold-out-by-group splits (`affectpipe.splits`) assign exactly as their callers did."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import GroupKFold

from affectpipe.heads.fitting import early_stopping_split
from affectpipe.splits import group_kfold, held_out_groups, video_folds

GROUPS = np.array(list("aabbbbcdddeeeeef"))  # 6 groups of 1 to 5 rows
ROWS = np.arange(100, 100 + len(GROUPS))


def test_group_kfold_is_sklearns_assignment_on_the_given_rows():
    rng = np.random.default_rng(0)
    groups = rng.choice([f"v{i}" for i in range(17)], 400)
    rows = np.sort(rng.choice(5000, 400, replace=False))
    for n_folds in (2, 3, 5):
        folds = group_kfold(rows, groups, n_folds)
        expected = GroupKFold(n_splits=n_folds).split(rows, groups=groups)
        assert len(folds) == n_folds
        for (fit, held), (fit_idx, held_idx) in zip(folds, expected, strict=True):
            np.testing.assert_array_equal(fit, rows[fit_idx])
            np.testing.assert_array_equal(held, rows[held_idx])
        held_groups = [set(groups[np.isin(rows, held)]) for _, held in folds]
        assert set().union(*held_groups) == set(groups)
        assert sum(map(len, held_groups)) == len(set(groups))  # every group held out once


def test_the_splits_keep_their_assignments():
    """Pinned: a change here changes heads' and blend's recorded numbers."""
    folds = [(fit.tolist(), held.tolist()) for fit, held in group_kfold(ROWS, GROUPS, 3)]
    assert [held for _, held in folds] == [
        [106, 110, 111, 112, 113, 114],
        [102, 103, 104, 105, 115],
        [100, 101, 107, 108, 109],
    ]
    assert video_folds(GROUPS, 3, 0).tolist() == [1, 1, 2, 2, 2, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    assert held_out_groups(GROUPS, 2, 7).tolist() == ["e", "d"]


@pytest.mark.parametrize("seed", [0, 3, None])
def test_held_out_groups_is_a_seeded_choice_of_distinct_groups(seed):
    chosen = held_out_groups(GROUPS, 3, seed)
    assert len(set(chosen)) == 3 and set(chosen) <= set(GROUPS)
    if seed is not None:
        expected = np.random.default_rng(seed).choice(np.unique(GROUPS), 3, replace=False)
        np.testing.assert_array_equal(chosen, expected)


def test_early_stopping_holds_out_a_tenth_of_the_train_videos():
    video = np.repeat(np.arange(40), 30)
    train_rows = np.arange(len(video))
    fit, held = early_stopping_split(train_rows, video, seed=4)
    held_videos = held_out_groups(video, 4, 4)
    assert set(video[held]) == set(held_videos) and not set(video[fit]) & set(held_videos)

"""Reading crafted files: LightGBM model texts checked and rebuilt, JSON and file caps,
schemas that catch NaN (the pieces `test_shared_run_corpus` exercises end to end)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from affectpipe.errors import InputError
from affectpipe.heads.lgbtext import ModelTextError, checked_model
from affectpipe.untrusted import FINITE, check_schema, read_json

WIDTH = 12


@pytest.fixture(scope="module")
def boosters() -> dict[str, object]:
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, WIDTH)).astype(np.float32)
    X[rng.random(X.shape) < 0.05] = np.nan  # missing-value splits (threshold inf)
    targets = {
        "expr": ({"objective": "multiclass", "num_class": 8}, rng.integers(0, 8, len(X))),
        "au": ({"objective": "binary"}, (np.nan_to_num(X[:, 0]) > 0).astype(int)),
        "va": ({"objective": "regression"}, np.nan_to_num(X[:, 1])),
    }
    params = {"verbose": -1, "num_leaves": 7, "min_data_in_leaf": 5}
    return {
        task: lgb.train({**params, **objective}, lgb.Dataset(X, y), 8)
        for task, (objective, y) in targets.items()
    }


@pytest.mark.parametrize("task", ["expr", "au", "va"])
def test_checked_model_predicts_exactly_as_the_original(boosters, task: str) -> None:
    import lightgbm as lgb

    original = boosters[task]
    rebuilt = lgb.Booster(model_str=checked_model(original.model_to_string(), WIDTH, task))
    X = np.random.default_rng(1).normal(size=(300, WIDTH))
    X[::7, 3] = np.nan
    X[::5, 2] = 0.0
    np.testing.assert_array_equal(rebuilt.predict(X), original.predict(X))


def _first(text: str, pattern: str, replacement: str) -> str:
    changed, n = re.subn(pattern, replacement, text, count=1, flags=re.M)
    assert n == 1
    return changed


@pytest.mark.parametrize(
    ("pattern", "replacement", "why"),
    [
        (r"^split_feature=\d+", "split_feature=100000000", "split feature is outside"),
        (r"^left_child=-?\d+", "left_child=0", "not a tree"),  # a cycle through the root
        (r"^right_child=-?\d+", "right_child=-99", "not a tree"),
        (r"^leaf_value=\S+", "leaf_value=nan", "leaf_value: not finite"),
        (r"^threshold=\S+", "threshold=nan", "threshold: not finite"),
        (r"^decision_type=\d+", "decision_type=1", "only numerical splits"),
        (r"^max_feature_idx=\d+", "max_feature_idx=99", "max_feature_idx"),
        (r"^objective=.*$", "objective=binary sigmoid:1", "objective"),
        (r"^Tree=1$", "Tree=7", "labelled"),
        (r"^num_leaves=\d+", "num_leaves=abc", "num_leaves"),
    ],
)
def test_checked_model_refuses_what_would_crash_or_mislead(boosters, pattern, replacement, why):
    text = _first(boosters["expr"].model_to_string(), pattern, replacement)
    with pytest.raises(ModelTextError, match=why):
        checked_model(text, WIDTH, "expr")


def test_checked_model_refuses_another_width_or_task(boosters) -> None:
    text = boosters["va"].model_to_string()
    with pytest.raises(ModelTextError, match="max_feature_idx"):
        checked_model(text, WIDTH + 1, "va")
    with pytest.raises(ModelTextError, match="objective"):
        checked_model(text, WIDTH, "au")


def test_read_json_refuses_special_files_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(InputError, match="is a FIFO"):
        read_json(tmp_path / "fifo.json")
    os.symlink("/dev/zero", tmp_path / "zero.json")
    with pytest.raises(InputError, match="is a character device"):
        read_json(tmp_path / "zero.json")
    with pytest.raises(InputError, match="file not found"):
        read_json(tmp_path / "missing.json")


def test_read_json_caps_size_and_depth(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match="nested"):
        read_json(path)
    path.write_text("[" * 65 + "]" * 65)
    with pytest.raises(InputError, match="more than 64 levels"):
        read_json(path)
    path.write_text("[" * 64 + "]" * 64)
    assert isinstance(read_json(path), list)  # 64 levels are allowed
    path.write_text(" " * 1000 + "{}")
    with pytest.raises(InputError, match="over the limit"):
        read_json(path, max_bytes=1000)


def test_schema_finite_keyword_catches_nan_and_booleans() -> None:
    schema = {"type": "object", "properties": {"w": {**FINITE, "maximum": 1}}}
    check_schema({"w": 0.5}, schema, "blend.json")
    for bad in (float("nan"), float("inf"), True, "1"):
        with pytest.raises(InputError, match=r"blend.json: \$\.w"):
            check_schema({"w": bad}, schema, "blend.json")

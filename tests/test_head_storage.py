"""Heads on disk without pickle: exact round trips, and planted pickles or tampered head
files refused without running anything."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.fsutil import sha256_file
from affectpipe.heads.fitted import FittedHead, arrays_path, load_head
from affectpipe.heads.model_registry import make_model
from affectpipe.heads.preprocess import FeatureScaler
from affectpipe.tasks import get_task

RNG = np.random.default_rng(0)
X = RNG.standard_normal((200, 150)).astype(np.float32)
LABELS = {
    "va": np.tanh(X[:, :2]).astype(np.float32),
    "expr": (np.abs(X[:, 0] * 3).astype(np.int64) % 8),
    "au": np.where(RNG.random((200, 12)) < 0.1, -1, (X[:, :12] > 0).astype(np.int64)),
}
MODELS = [
    ("linear", "va", {}, 1),
    ("linear", "expr", {}, 1),
    ("mlp", "au", {"max_epochs": 2, "hidden": 8}, 1),
    ("mlp", "expr", {"max_epochs": 2, "hidden": 0}, 2),  # a seed bag
    ("lightgbm", "au", {"n_estimators": 5, "min_data_in_leaf": 5}, 1),
    ("lightgbm", "expr", {"n_estimators": 5, "min_data_in_leaf": 5}, 1),
    ("lightgbm", "va", {"n_estimators": 5, "min_data_in_leaf": 5}, 1),
]


def fitted_head(model_name: str, task: str, params: dict, seeds: int) -> FittedHead:
    scaler = FeatureScaler(n_components=16).fit(X[:150])
    Z = scaler.transform(X)
    y = LABELS[task]
    model = make_model(model_name, task, params, seeds=seeds)
    model.fit(Z[:150], y[:150], eval_set=(Z[150:], y[150:]))
    return FittedHead(
        task=task,
        candidate=f"test:embedding__{model_name}",
        feature_set="test:embedding",
        scaler=scaler,
        model=model,
        output_columns=get_task(task).pred_columns,
        provenance={"seed": 0, "scores": {"p": float("nan")}},
    )


@pytest.fixture()
def head_path(tmp_path: Path) -> Path:
    return DatasetPaths(tmp_path / "data").head("r1", "expr", "test.embedding__linear")


@pytest.mark.parametrize(("model_name", "task", "params", "seeds"), MODELS)
def test_round_trip_predicts_identically(tmp_path, model_name, task, params, seeds) -> None:
    head = fitted_head(model_name, task, params, seeds)
    path = tmp_path / "heads" / "h.json"
    head.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["h.json", "h.safetensors"]
    json.loads(path.read_text())  # plain JSON
    loaded = load_head(path)
    assert type(loaded.model) is type(head.model)
    assert loaded.model.get_params(deep=False).keys() == head.model.get_params(deep=False).keys()
    assert loaded.output_columns == head.output_columns
    np.testing.assert_array_equal(loaded.predict_features(X), head.predict_features(X))


class _Gadget:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_planted_joblib_is_refused_and_never_unpickled(tmp_path: Path, head_path: Path) -> None:
    marker = tmp_path / "MARKER"
    planted = head_path.with_suffix(".joblib")
    planted.parent.mkdir(parents=True)
    planted.write_bytes(pickle.dumps(_Gadget(f"touch {marker}")))
    for target in (head_path, planted):  # the head's name, or the pickle itself
        with pytest.raises(InputError) as error:
            load_head(target)
        message = str(error.value)
        assert str(planted) in message and "pickle" in message
        assert "pipeline heads --dataset data --run r1" in message
    assert not marker.exists()


def test_pickle_disguised_as_arrays_file_is_refused(tmp_path: Path, head_path: Path) -> None:
    marker = tmp_path / "MARKER"
    fitted_head("linear", "expr", {}, 1).save(head_path)
    arrays = arrays_path(head_path)
    arrays.write_bytes(pickle.dumps(_Gadget(f"touch {marker}")))
    with pytest.raises(InputError, match="does not match the sha256"):
        load_head(head_path)
    # Even with the recorded hash updated to the pickle's, it is not read as arrays.
    document = json.loads(head_path.read_text())
    document["arrays"]["sha256"] = sha256_file(arrays)
    head_path.write_text(json.dumps(document))
    with pytest.raises(InputError, match=str(head_path)):
        load_head(head_path)
    assert not marker.exists()


def _tamper(path: Path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize(
    ("case", "change", "reason"),
    [
        ("unknown class", lambda d: d["model"].update(estimator="Popen"), "unknown estimator"),
        (
            "dunder attribute",
            lambda d: d["model"]["fitted"]["map"].update(__class__="x"),
            "attribute '__class__'",
        ),
        ("bad param", lambda d: d["model"]["params"]["map"].update(evil=1), "bad parameters"),
        ("unknown node", lambda d: d.update(scaler={"pickle": "gASV"}), "unexpected"),
        ("old format", lambda d: d.update(format="affectpipe-head/0"), "format"),
    ],
)
def test_tampered_head_json_is_refused(head_path: Path, case, change, reason) -> None:
    fitted_head("linear", "expr", {}, 1).save(head_path)
    _tamper(head_path, change)
    with pytest.raises(InputError, match=reason) as error:
        load_head(head_path)
    assert str(head_path) in str(error.value)


def test_tampered_lightgbm_model_is_refused(head_path: Path) -> None:
    """LightGBM boosters are stored in LightGBM's text model format: one that does not parse
    is refused when the head is loaded, before LightGBM sees it, never code run."""
    fitted_head("lightgbm", "expr", {"n_estimators": 3, "min_data_in_leaf": 5}, 1).save(head_path)
    _tamper(
        head_path,
        lambda d: d["model"]["fitted"]["map"]["boosters_"]["list"].__setitem__(
            0, "import os; os.system('touch MARKER')"
        ),
    )
    with pytest.raises(InputError, match="LightGBM booster: does not start with 'tree'"):
        load_head(head_path)


def test_not_json_is_refused(head_path: Path) -> None:
    fitted_head("linear", "expr", {}, 1).save(head_path)
    head_path.write_bytes(b"\x80\x04\x95 not json")
    with pytest.raises(InputError, match="unreadable JSON"):
        load_head(head_path)

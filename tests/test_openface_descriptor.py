"""The built-in OpenFace-style descriptor: layout, determinism, train-only PCA, real smiles."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from affectpipe.errors import InputError
from affectpipe.extract.backbones.openface import QUALITY_COLUMNS, OpenFaceDescriptor
from affectpipe.extract.backbones.openface_geometry import AU_MEASUREMENTS
from affectpipe.extract.backbones.openface_hog import HOG_DIM
from affectpipe.features import read_feature_file, write_feature_file


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def bench(fixtures_dir: Path) -> tuple[list[str], np.ndarray]:
    """Names and raw descriptors of 24 real 112x112 face crops."""
    paths = sorted((fixtures_dir / "images/bench112").glob("*.jpg"))[:24]
    descriptor = OpenFaceDescriptor()
    raws = [descriptor.describe(load_rgb(path)) for path in paths]
    assert all(ok for _, ok in raws)
    return [p.name for p in paths], np.stack([raw for raw, _ in raws])


def test_describe_layout_and_determinism(fixtures_dir, bench):
    _, raw = bench
    descriptor = OpenFaceDescriptor()
    assert raw.shape == (24, descriptor.raw_dim) and raw.dtype == np.float32
    assert descriptor.raw_dim == 136 + len(AU_MEASUREMENTS) + len(QUALITY_COLUMNS) + HOG_DIM
    assert np.isfinite(raw).all()
    first = load_rgb(sorted((fixtures_dir / "images/bench112").glob("*.jpg"))[0])
    again, ok = descriptor.describe(first)
    # A pickled copy (as sent to a worker process) gives the very same vector.
    copy, copy_ok = pickle.loads(pickle.dumps(descriptor)).describe(first)
    assert ok and copy_ok
    assert np.array_equal(again, raw[0]) and np.array_equal(copy, raw[0])


def test_describe_refuses_what_is_not_an_rgb_image():
    raw, ok = OpenFaceDescriptor().describe(np.zeros((112, 112), dtype=np.uint8))
    assert not ok and raw.shape == (OpenFaceDescriptor.raw_dim,) and not raw.any()


def test_finalize_layout_groups_and_non_ok_rows(bench):
    _, raw = bench
    ok = np.ones(len(raw), dtype=bool)
    ok[3] = False
    train = np.arange(len(raw)) < 16
    embedding, groups, attrs = OpenFaceDescriptor().finalize(raw, ok, train)
    # 15 ok train rows fit the PCA, so at most 15 components.
    assert groups == {
        "geometry": [0, 136],
        "au": [136, 155],
        "quality": [155, 162],
        "hog": [162, 177],
    }
    assert embedding.shape == (24, 177) and embedding.dtype == np.float32
    assert not embedding[3].any()
    assert np.array_equal(embedding[~ok][:, :162], np.zeros((1, 162)))
    assert np.array_equal(embedding[ok, :162], raw[ok, :162])
    assert (
        attrs["openface_descriptor"]["hog_pca"]["n_components"] == 15
        and attrs["openface_descriptor"]["hog_pca"]["fit_rows"] == 15
    )
    assert len(attrs["landmark_model_sha256"]) == 64


def test_finalize_fits_the_pca_on_train_rows_only(bench):
    _, raw = bench
    ok = np.ones(len(raw), dtype=bool)
    train = np.arange(len(raw)) % 3 != 0
    descriptor = OpenFaceDescriptor(hog_components=8)
    embedding, groups, attrs = descriptor.finalize(raw, ok, train)
    again, _, attrs_again = descriptor.finalize(raw.copy(), ok, train)
    assert np.array_equal(embedding, again)  # deterministic, attrs and PCA arrays too
    assert attrs.keys() == attrs_again.keys()
    for key, value in attrs.items():
        assert (
            np.array_equal(value, attrs_again[key])
            if key.startswith("hog_pca_")
            else (value == attrs_again[key])
        )

    changed = raw.copy()
    changed[0] = raw[1]  # a test row
    changed[3, 200:] = 0.0  # another test row
    other, _, other_attrs = descriptor.finalize(changed, ok, train)
    assert np.array_equal(other[train], embedding[train])
    assert other_attrs["openface_descriptor"]["hog_pca"] == attrs["openface_descriptor"]["hog_pca"]
    assert not np.array_equal(other[0], embedding[0])

    changed_train = raw.copy()
    changed_train[1] = raw[4]  # a train row: the PCA moves
    moved, _, _ = descriptor.finalize(changed_train, ok, train)
    start, stop = groups["hog"]
    assert not np.allclose(moved[4, start:stop], embedding[4, start:stop])


def test_finalize_subsamples_train_rows_deterministically(bench):
    _, raw = bench
    ok = np.ones(len(raw), dtype=bool)
    train = np.ones(len(raw), dtype=bool)
    descriptor = OpenFaceDescriptor(hog_components=4, pca_max_rows=10, seed=3)
    embedding, _, attrs = descriptor.finalize(raw, ok, train)
    again, _, _ = OpenFaceDescriptor(hog_components=4, pca_max_rows=10, seed=3).finalize(
        raw, ok, train
    )
    assert (
        attrs["openface_descriptor"]["hog_pca"]["fit_rows"] == 10
        and attrs["openface_descriptor"]["hog_pca"]["train_rows_ok"] == 24
    )
    assert np.array_equal(embedding, again)


def test_finalize_needs_train_images(bench):
    _, raw = bench
    ok = np.ones(len(raw), dtype=bool)
    train = np.zeros(len(raw), dtype=bool)
    train[0] = True
    with pytest.raises(InputError, match="train"):
        OpenFaceDescriptor().finalize(raw, ok, train)


def test_finalized_features_round_trip_through_the_feature_file(tmp_path, bench):
    names, raw = bench
    ok = np.ones(len(raw), dtype=bool)
    embedding, groups, attrs = OpenFaceDescriptor().finalize(raw, ok, np.arange(24) < 20)
    path = tmp_path / "openface.h5"
    write_feature_file(
        path, np.asarray(names), embedding, ok, {**attrs, "backbone": "openface", "groups": groups}
    )
    features = read_feature_file(path)
    assert features.parts() == ["embedding", "geometry", "au", "quality", "hog"]
    assert np.array_equal(features.load("au"), embedding[:, 136:155])
    details = json.loads(features.attrs["openface_descriptor"])
    assert details["hog"]["orientations"] == 9
    assert details["au_measurements"][0] == "inner_brow_raise_r"
    assert details["hog_pca"]["fit_rows"] == 20


@pytest.fixture(scope="module")
def realfaces(realfaces_dir: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Labels and raw descriptors of the 400 real 112x112 neutral or smiling faces."""
    labels = pd.read_csv(realfaces_dir / "labels.csv")
    descriptor = OpenFaceDescriptor()
    raw = np.stack(
        [descriptor.describe(load_rgb(realfaces_dir / "images" / n))[0] for n in labels["image"]]
    )
    return labels, raw


def test_descriptor_separates_smiles_from_neutral_on_held_out_people(realfaces):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels, raw = realfaces
    people = sorted(labels["person"].unique())
    held_out = set(people[::4])  # a quarter of the people, never seen in training
    test = labels["person"].isin(held_out).to_numpy()
    smiling = (labels["expression"] == 4).to_numpy()
    ok = np.ones(len(raw), dtype=bool)
    embedding, _, _ = OpenFaceDescriptor().finalize(raw, ok, ~test)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    model.fit(embedding[~test], smiling[~test])
    predicted = model.predict(embedding[test])
    accuracy = accuracy_score(smiling[test], predicted)
    f1 = f1_score(smiling[test], predicted, average="macro")
    print(f"realfaces held-out people: n={test.sum()} accuracy={accuracy:.3f} macro F1={f1:.3f}")
    assert accuracy > 0.75 and f1 > 0.75  # chance is 0.5


def test_smile_measurements_move_as_documented_on_real_faces(realfaces):
    from sklearn.metrics import roc_auc_score

    labels, raw = realfaces
    smiling = (labels["expression"] == 4).to_numpy()
    start = 136  # the au group
    auc = {
        name: roc_auc_score(smiling, raw[:, start + k]) for k, name in enumerate(AU_MEASUREMENTS)
    }
    # AU12 raises and widens the lip corners; with AU6 they come closer to the eyes.
    for name in ("lip_corner_raise_r", "lip_corner_raise_l", "mouth_width"):
        assert auc[name] > 0.75, (name, auc[name])
    for name in ("corner_to_eye_r", "corner_to_eye_l"):
        assert auc[name] < 0.25, (name, auc[name])


def test_feature_file_stores_the_pca_that_reproduces_the_hog_columns(bench, tmp_path):
    _, raw = bench
    ok = np.ones(len(raw), dtype=bool)
    train = np.arange(len(raw)) % 3 != 0
    embedding, groups, attrs = OpenFaceDescriptor(hog_components=8).finalize(raw, ok, train)
    path = tmp_path / "openface.h5"
    images = np.array([f"v/{i:05d}.jpg" for i in range(len(raw))])
    write_feature_file(path, images, embedding, ok, {**attrs, "groups": groups})

    stored = read_feature_file(path)
    mean, components = stored.extra("hog_pca_mean"), stored.extra("hog_pca_components")
    start, stop = groups["hog"]
    hog_raw = raw[:, raw.shape[1] - components.shape[1] :]
    np.testing.assert_allclose(
        (hog_raw - mean) @ components.T, stored.load("hog"), rtol=1e-4, atol=1e-4
    )
    assert stop - start == components.shape[0] == 8

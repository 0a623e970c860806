"""Synthetic s-Aff-Wild2 demo data: layout, determinism, label rates, labels in the pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from affectpipe.data.index import index_dataset
from affectpipe.data.synthetic import write_demo_dataset
from affectpipe.errors import InputError
from affectpipe.manifest import read_manifest, read_manifest_metadata
from affectpipe.pipeline import cli


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, dict]:
    root = write_demo_dataset(tmp_path_factory.mktemp("demo") / "data")
    result = index_dataset(root, "abaw-mtl", "demo", root.parent / "cache")
    return root, read_manifest(result.manifest_path), read_manifest_metadata(result.manifest_path)


def test_layout_and_row_counts(demo: tuple[Path, pd.DataFrame, dict]) -> None:
    root, frame, meta = demo
    counts = frame["split"].value_counts().to_dict()
    assert counts["train"] == 6 * 40 and counts["val"] == 3 * 40
    assert counts["test"] == 3 * 40 + 3  # one repeated key per test video
    assert frame.groupby("video")["split"].nunique().max() == 1  # splits by video
    assert frame["video"].nunique() == 12
    test = frame[frame["split"] == "test"]
    assert test["image"].duplicated().sum() == 3
    absent = 1 - test["has_image"].mean()
    assert 0 < absent < 0.15  # a few listed test frames have no image
    assert frame.loc[frame["split"] != "test", "has_image"].all()
    assert meta["image_roots"]["test"].endswith("test_data/cropped_aligned")
    assert meta["test_list"]["trailing_comma"] and meta["test_list"]["style"] == "mtl"
    assert meta["test_list"]["header"] == "image,valence,arousal,expression,aus"
    # Sparse frame numbers like the real static subset.
    steps = frame[frame["split"] == "train"].groupby("video")["frame"].diff().dropna()
    assert (steps >= 1).all() and (steps > 1).any()
    with Image.open(root / "cropped_aligned" / frame.loc[0, "image"]) as image:
        assert image.size == (112, 112) and image.mode == "RGB" and image.format == "JPEG"


def au_valid(part: pd.DataFrame) -> pd.Series:
    return (part[[c for c in part if c.startswith("au")]] >= 0).all(axis=1)


def test_cli_indexes_the_demo_and_reuses_it(demo: tuple[Path, pd.DataFrame, dict]) -> None:
    root, frame, _ = demo
    args = ["--cache-dir", str(root.parent / "cache"), "index", str(root)]
    result = CliRunner().invoke(cli, [*args, "--format", "abaw-mtl", "--name", "demo"])
    assert result.exit_code == 0, result.output
    assert "is up to date" in result.output
    assert f"rows per split:  train 240, val 120, test {len(frame) - 360}" in result.output


def test_missing_label_rates(demo: tuple[Path, pd.DataFrame, dict]) -> None:
    _, frame, _ = demo
    train, val = frame[frame["split"] == "train"], frame[frame["split"] == "val"]
    assert train["valence"].notna().mean() == pytest.approx(0.73, abs=0.03)
    assert (train["expression"] >= 0).mean() == pytest.approx(0.64, abs=0.03)
    assert au_valid(train).mean() == pytest.approx(0.73, abs=0.03)
    assert val["valence"].notna().all() and au_valid(val).all()
    assert (val["expression"] >= 0).mean() == pytest.approx(0.57, abs=0.03)
    codes = np.bincount(train["expression"][train["expression"] >= 0], minlength=8)
    assert (codes > 0).sum() >= 6 and codes.max() > 2 * codes.min()  # imbalanced classes
    positives = (train[[f"au{n}" for n in (1, 4, 12, 25)]] == 1).mean()
    assert ((positives > 0.03) & (positives < 0.7)).all()


def mouth_pixels(root: Path, keys: pd.Series) -> np.ndarray:
    rows = []
    for key in keys:
        with Image.open(root / "cropped_aligned" / key) as image:
            gray = np.asarray(image.convert("L"), dtype=np.float64)
        rows.append(gray[68:100:2, 28:84:2].ravel())  # the mouth region, subsampled
    return np.array(rows)


def test_labels_are_visible_in_the_pixels(demo: tuple[Path, pd.DataFrame, dict]) -> None:
    root, frame, _ = demo
    labelled = frame[frame["valence"].notna()]
    train, val = labelled[labelled["split"] == "train"], labelled[labelled["split"] == "val"]
    x_train, x_val = mouth_pixels(root, train["image"]), mouth_pixels(root, val["image"])
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mean) / std, (x_val - mean) / std
    weights = np.linalg.solve(a.T @ a + 300 * np.eye(a.shape[1]), a.T @ train["valence"])
    correlation = np.corrcoef(b @ weights, val["valence"])[0, 1]
    print(f"mouth-pixel ridge -> valence, correlation on val videos: {correlation:.3f}")
    assert correlation > 0.5  # unseen identities: the mouth shows the valence


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    options = {"n_videos": 4, "frames_per_video": 6, "n_val": 1, "n_test": 1}
    first = files(write_demo_dataset(tmp_path / "a", seed=3, **options))
    second = files(write_demo_dataset(tmp_path / "b", seed=3, **options))
    other = files(write_demo_dataset(tmp_path / "c", seed=4, **options))
    assert first == second and len(first) > 20
    assert first != other


def test_rewrites_only_when_asked_for_another_dataset(tmp_path: Path) -> None:
    options = {"n_videos": 3, "frames_per_video": 5, "n_val": 1, "n_test": 1}
    root = write_demo_dataset(tmp_path / "d", seed=1, **options)
    annotations = root / "training_set_annotations.txt"
    stamp = annotations.stat().st_mtime_ns
    write_demo_dataset(root, seed=1, **options)
    assert annotations.stat().st_mtime_ns == stamp  # complete and identical: kept

    def listing(folder: Path) -> set[str]:
        return {str(p.relative_to(folder)) for p in folder.rglob("*")}

    write_demo_dataset(root, seed=2, **options)  # another seed replaces it, no stale files
    assert listing(root) == listing(write_demo_dataset(tmp_path / "fresh", seed=2, **options))

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        write_demo_dataset(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"

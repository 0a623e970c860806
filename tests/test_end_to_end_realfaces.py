"""The whole chain through the real CLI on real face photos with expression-only labels.

index (csv) -> extract (openface) -> heads -> blend -> validate-submission, as subprocesses,
on ../shared/data/realfaces-smile: the shape of a photo FER dataset (no VA, no AUs). Once as is,
and once on a copy where a test image is missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

pytestmark = pytest.mark.slow


def _write_dataset(
    realfaces: Path, root: Path, missing_test_images: int, every: int = 1
) -> pd.DataFrame:
    """A csv dataset on every `every`th person: 3/4 of them train, 1/8 val, 1/8 test (test
    rows unlabelled)."""
    labels = pd.read_csv(realfaces / "labels.csv")
    people = np.array(sorted(labels["person"].unique()))[::every]
    labels = labels[labels["person"].isin(people)]
    role = {
        p: ("val" if i % 8 == 3 else "test" if i % 8 == 7 else "train")
        for i, p in enumerate(people)
    }
    table = labels.assign(split=labels["person"].map(role), video=labels["person"])
    table.loc[table["split"] == "test", "expression"] = -1
    (root / "images").mkdir(parents=True)
    for name in table["image"]:
        shutil.copyfile(realfaces / "images" / name, root / "images" / name)
    for name in table.loc[table["split"] == "test", "image"].iloc[:missing_test_images]:
        (root / "images" / name).unlink()
    table[["image", "expression", "split", "video"]].to_csv(root / "labels.csv", index=False)
    return table


def _chain(root: Path, cache: Path, out: Path):
    common = ("--cache-dir", cache)
    run_cli(*common, "index", root / "labels.csv", "--format", "csv", "--name", "faces", check=True)
    run_cli(
        *common,
        "extract",
        "--dataset",
        "faces",
        "--backbones",
        "openface",
        "--workers",
        "0",
        check=True,
    )
    heads = run_cli(*common, "heads", "--dataset", "faces", check=True)
    blend = run_cli(*common, "blend", "--dataset", "faces", "--out", out, "--no-report")
    return heads, blend


@pytest.mark.parametrize("missing", [0, 1], ids=["all-test-images", "one-test-image-missing"])
def test_expression_only_real_faces_through_the_cli(
    realfaces_dir: Path, tmp_path: Path, missing: int
):
    table = _write_dataset(realfaces_dir, tmp_path / "data", missing)
    cache, out = tmp_path / "cache", tmp_path / "submission"
    heads, blend = _chain(tmp_path / "data", cache, out)

    # Only the labelled task is trained, and the others are named as skipped.
    assert "skipped task va" in heads.stdout + heads.stderr
    assert "skipped task au" in heads.stdout + heads.stderr
    assert blend.returncode == 0, blend.stdout + blend.stderr

    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["EXPR_predictions.txt"], files
    lines = files[0].read_text().splitlines()
    test = table[table["split"] == "test"]
    assert len(lines) == 1 + len(test)  # header + one line per listed test image, in order
    assert [line.split(",")[0] for line in lines[1:]] == test["image"].tolist()
    predicted = np.array([int(line.split(",")[1]) for line in lines[1:]])
    assert set(predicted) <= {0, 1, 2, 3, 4, 5, 6, 7}
    # Real predictions, not a prior on every line: both classes present in the test people.
    truth = pd.read_csv(realfaces_dir / "labels.csv").set_index("image").loc[test["image"]]
    accuracy = float((predicted == truth["expression"].to_numpy()).mean())
    assert accuracy > 0.7, accuracy

    check = run_cli("--cache-dir", cache, "validate-submission", files[0], "--dataset", "faces")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "constant" not in check.stdout + check.stderr


def test_test_images_in_an_unknown_folder_are_refused(realfaces_dir: Path, tmp_path: Path):
    """All test images missing (issue 9.4): the blend refuses a prior-only submission.
    A quarter of the people suffice to train the heads that the refusal needs."""
    table = _write_dataset(realfaces_dir, tmp_path / "data", missing_test_images=10_000, every=4)
    heads, blend = _chain(tmp_path / "data", tmp_path / "cache", tmp_path / "submission")
    n_test = int((table["split"] == "test").sum())
    assert blend.returncode == 1, blend.stdout + blend.stderr
    assert f"{n_test} of its {n_test} listed test rows" in blend.stdout + blend.stderr
    assert not (tmp_path / "submission" / "EXPR_predictions.txt").exists()

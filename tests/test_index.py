"""`pipeline index --format abaw-mtl`: layouts, located errors, lenient mode, re-indexing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from affectpipe.data.index import index_dataset
from affectpipe.errors import AnnotationError, InputError
from affectpipe.manifest import read_manifest, read_manifest_metadata
from affectpipe.pipeline import cli
from affectpipe.schema import AU_COLUMNS

HEADER = "image,valence,arousal,expression,AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"
AUS_ON = "0,0,0,1,1,1,1,0,0,0,1,0"
AUS_OFF = ",".join(["0"] * 12)
AUS_MISSING = ",".join(["-1"] * 12)
TRAIN = [
    f"video1/00001.jpg,0.5,-0.25,4,{AUS_ON}",
    f"video1/00003.jpg,-5,-5,-1,{AUS_MISSING}",
    f"video1/00001.jpg,0.1,0.2,0,{AUS_OFF}",  # a repeated key is kept
    f"134-30-1280x720/00007.jpg,0.3,-5,4,{AUS_ON}",  # one -5 makes both missing
]
VAL = [
    f"video2_left/00002.jpg,-1,1,7,{AUS_ON}",
    f"video2_left/00005.jpg,0.0,0.0,2,{AUS_MISSING}",  # no image on disk
]
TEST_KEYS = ["t1/00001.jpg", "t1/00004.jpg", "t1/00001.jpg"]
TEST_HEADER = "image,valence,arousal,expression,aus"


def touch_images(root: Path, keys: list[str]) -> None:
    for key in keys:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(b"jpg")


def write_mtl(
    root: Path, *, style: str = "abaw7", train: list[str] = TRAIN, val: list[str] = VAL
) -> Path:
    """A tiny s-Aff-Wild2 folder; `style` abaw7 (MTL.txt with trailing commas) or abaw4."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "training_set_annotations.txt").write_text("\n".join([HEADER, *train]) + "\n")
    (root / "validation_set_annotations.txt").write_text("\n".join([HEADER, *val]) + "\n")
    touch_images(
        root / "cropped_aligned",
        [
            "video1/00001.jpg",
            "video1/00003.jpg",
            "134-30-1280x720/00007.jpg",
            "video2_left/00002.jpg",
        ],
    )
    if style == "abaw7":
        listed = root / "test_set_examples" / "MTL.txt"
        lines = [f"{k}," for k in TEST_KEYS]
        test_root = root / "test_data" / "cropped_aligned"
    else:
        listed = root / "MTL_Challenge_test_set_release.txt"
        lines = TEST_KEYS
        test_root = root / "mtl_test_data" / "cropped_aligned"
    listed.parent.mkdir(parents=True, exist_ok=True)
    listed.write_text("\n".join([TEST_HEADER, *lines]) + "\n")
    touch_images(test_root, ["t1/00001.jpg"])
    return root


@pytest.mark.parametrize("style", ["abaw7", "abaw4"])
def test_mtl_layouts(tmp_path: Path, style: str) -> None:
    root = write_mtl(tmp_path / "data", style=style)
    result = index_dataset(root, "abaw-mtl", "ds", tmp_path / "cache")
    assert result.rows == 9 and not result.reused
    frame = read_manifest(result.manifest_path)
    assert frame["split"].tolist() == ["train"] * 4 + ["val"] * 2 + ["test"] * 3
    assert frame["image"].tolist() == [line.split(",")[0] for line in TRAIN + VAL] + TEST_KEYS
    assert frame["video"].tolist()[:4] == ["video1", "video1", "video1", "134-30-1280x720"]
    assert frame["frame"].tolist() == [1, 3, 1, 7, 2, 5, 1, 4, 1]
    assert frame["has_image"].tolist() == [True] * 5 + [False, True, False, True]
    np.testing.assert_allclose(
        frame["valence"].to_numpy()[:6], [0.5, np.nan, 0.1, np.nan, -1.0, 0.0]
    )
    assert np.isnan(frame["arousal"][3])
    assert frame["expression"].tolist() == [4, -1, 0, 4, 7, 2, -1, -1, -1]
    assert frame.loc[0, list(AU_COLUMNS)].tolist() == [int(v) for v in AUS_ON.split(",")]
    assert (frame.loc[[1, 5], list(AU_COLUMNS)] == -1).all().all()
    assert (frame.loc[6:, list(AU_COLUMNS)] == -1).all().all()

    meta = read_manifest_metadata(result.manifest_path)
    assert meta["dataset"] == "ds" and meta["format"] == "abaw-mtl"
    test_folder = "test_data" if style == "abaw7" else "mtl_test_data"
    assert meta["image_roots"]["test"] == str((root / test_folder / "cropped_aligned").resolve())
    assert meta["image_roots"]["train"] == str((root / "cropped_aligned").resolve())
    assert len(meta["sources"]) == 3 and all(len(s["sha256"]) == 64 for s in meta["sources"])
    assert meta["package_version"]
    listed = meta["test_list"]
    assert listed["style"] == "mtl" and listed["header"] == TEST_HEADER
    assert listed["trailing_comma"] is (style == "abaw7")

    summary = result.summary
    assert "rows per split:  train 4, val 2, test 3" in summary
    assert "labelled va      train 2, val 2" in summary
    assert "expression train: neutral 1, anger 0, disgust 0, fear 0, happiness 2" in summary
    assert "val: 1 listed image(s) missing on disk: video2_left/00005.jpg" in summary
    assert "test: 1 listed image(s) missing on disk: t1/00004.jpg" in summary


def test_test_images_fall_back_to_the_image_root(tmp_path: Path) -> None:
    root = write_mtl(tmp_path / "data")
    (root / "test_data" / "cropped_aligned" / "t1").rename(root / "cropped_aligned" / "t1")
    (root / "test_data" / "cropped_aligned").rmdir()
    result = index_dataset(root, "abaw-mtl", "ds", tmp_path / "cache")
    meta = read_manifest_metadata(result.manifest_path)
    assert meta["image_roots"]["test"] == meta["image_roots"]["train"]
    assert read_manifest(result.manifest_path)["has_image"].tolist()[6:] == [True, False, True]


def test_explicit_file_options(tmp_path: Path) -> None:
    root = write_mtl(tmp_path / "data")
    odd = tmp_path / "elsewhere"
    odd.mkdir()
    for name, target in [
        ("training_set_annotations.txt", "train.txt"),
        ("validation_set_annotations.txt", "val.txt"),
        ("test_set_examples/MTL.txt", "list.txt"),
    ]:
        (root / name).rename(odd / target)
    (root / "cropped_aligned").rename(odd / "faces")
    (root / "test_data" / "cropped_aligned").rename(odd / "test_faces")
    runner = CliRunner()
    args = ["--cache-dir", str(tmp_path / "cache"), "index", str(root), "--format", "abaw-mtl"]
    args += ["--name", "ds", "--train-file", str(odd / "train.txt"), "--val-file"]
    args += [str(odd / "val.txt"), "--test-list", str(odd / "list.txt")]
    args += ["--image-root", str(odd / "faces"), "--test-image-root", str(odd / "test_faces")]
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    frame = read_manifest(tmp_path / "cache" / "ds" / "manifest.parquet")
    assert len(frame) == 9 and frame["has_image"].sum() == 7


BAD_LINES = [
    (f"video1/00009.jpg,0.5,0.5,4,{AUS_ON},1", "expected 16 fields, found 17"),
    (f"video1/00009.jpg,abc,0.5,4,{AUS_ON}", "valence 'abc'"),
    (f"video1/00009.jpg,0.5,1.5,4,{AUS_ON}", "arousal '1.5'"),
    (f"video1/00009.jpg,0.5,0.5,8,{AUS_ON}", "expression '8'"),
    (f"video1/00009.jpg,0.5,0.5,2.5,{AUS_ON}", "expression '2.5'"),
    (f"video1/00009.jpg,0.5,0.5,4,2,{AUS_ON[2:]}", "au1 '2'"),
    (f"video1/frame9.jpg,0.5,0.5,4,{AUS_ON}", "not an image key"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_LINES)
def test_bad_line_is_located_and_nothing_written(tmp_path: Path, bad: str, message: str) -> None:
    root = write_mtl(tmp_path / "data", train=[*TRAIN[:2], bad, *TRAIN[2:]])
    runner = CliRunner()
    args = ["--cache-dir", str(tmp_path / "cache"), "index", str(root), "--format", "abaw-mtl"]
    result = runner.invoke(cli, [*args, "--name", "ds"], standalone_mode=False)
    error = result.exception
    assert isinstance(error, AnnotationError) and error.exit_code == 2
    assert error.path == (root / "training_set_annotations.txt").resolve()
    assert error.line == 4  # header, two good lines, then the bad one
    assert message in str(error) and str(error).startswith(f"{error.path}:4: ")
    assert not (tmp_path / "cache").exists()


def test_error_exit_code_from_the_entry_point(tmp_path: Path) -> None:
    root = write_mtl(tmp_path / "data", val=[*VAL, f"video2_left/00009.jpg,0.5,0.5,9,{AUS_ON}"])
    command = [sys.executable, "-c", "from affectpipe.pipeline import main; main()"]
    command += ["--cache-dir", str(tmp_path / "cache"), "index", str(root)]
    command += ["--format", "abaw-mtl", "--name", "ds"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "validation_set_annotations.txt:4: expression '9'" in done.stderr
    assert not (tmp_path / "cache" / "ds" / "manifest.parquet").exists()


def test_lenient_marks_bad_fields_missing_and_counts(tmp_path: Path) -> None:
    train = [
        *TRAIN,
        f"video1/00010.jpg,0.5,1.5,4,{AUS_ON}",  # arousal out of range -> VA missing
        f"video1/00011.jpg,0.5,0.5,4,{AUS_ON},1",  # wrong field count -> all labels missing
        f"video1/00012.jpg,0.2,0.3,x,2,{AUS_ON[2:]}",  # bad expression and AU1
    ]
    root = write_mtl(tmp_path / "data", train=train)
    result = index_dataset(root, "abaw-mtl", "ds", tmp_path / "cache", lenient=True)
    frame = read_manifest(result.manifest_path)
    assert result.rows == 12
    assert np.isnan(frame.loc[4, ["valence", "arousal"]].to_numpy(dtype=float)).all()
    assert frame.loc[4, "expression"] == 4
    assert frame.loc[5, "image"] == "video1/00011.jpg"
    assert frame.loc[5, "expression"] == -1 and np.isnan(frame.loc[5, "valence"])
    assert frame.loc[6, ["expression", "au1"]].tolist() == [-1, -1]
    assert frame.loc[6, "au6"] == 1 and frame.loc[6, "valence"] == pytest.approx(0.2)
    path = (root / "training_set_annotations.txt").resolve()
    assert f"lenient: 3 line(s) of {path} had bad fields" in result.summary
    assert read_manifest_metadata(result.manifest_path)["lenient_fixes"] == {str(path): 3}


def test_reindex_is_a_noop_until_inputs_change(tmp_path: Path) -> None:
    root = write_mtl(tmp_path / "data")
    cache = tmp_path / "cache"
    first = index_dataset(root, "abaw-mtl", "ds", cache)
    stamp = first.manifest_path.stat().st_mtime_ns
    again = index_dataset(root, "abaw-mtl", "ds", cache)
    assert again.reused and "up to date" in again.summary and again.rows == first.rows
    assert first.manifest_path.stat().st_mtime_ns == stamp

    touch_images(root / "cropped_aligned", ["video2_left/00005.jpg"])  # the image set changed
    changed = index_dataset(root, "abaw-mtl", "ds", cache)
    assert not changed.reused
    assert read_manifest(changed.manifest_path)["has_image"].sum() == 8

    with (root / "validation_set_annotations.txt").open("a") as handle:  # a source changed
        handle.write(f"video2_left/00006.jpg,0.1,0.1,1,{AUS_OFF}\n")
    grown = index_dataset(root, "abaw-mtl", "ds", cache)
    assert not grown.reused and grown.rows == 10

    assert index_dataset(root, "abaw-mtl", "ds", cache).reused
    assert not index_dataset(root, "abaw-mtl", "ds", cache, lenient=True).reused  # options
    assert not index_dataset(root, "abaw-mtl", "ds", cache, lenient=True, force=True).reused


def test_annotation_file_without_header_loses_no_row(tmp_path: Path) -> None:
    root = write_mtl(tmp_path / "data")
    (root / "training_set_annotations.txt").write_text("\n".join(TRAIN) + "\n")
    frame = read_manifest(index_dataset(root, "abaw-mtl", "ds", tmp_path / "cache").manifest_path)
    assert (frame["split"] == "train").sum() == len(TRAIN)


def test_input_errors(tmp_path: Path) -> None:
    root = write_mtl(tmp_path / "data")
    cache = tmp_path / "cache"
    with pytest.raises(InputError, match="unknown dataset format"):
        index_dataset(root, "abaw-xyz", "ds", cache)
    with pytest.raises(InputError, match="--val-fraction does not apply"):
        index_dataset(root, "abaw-mtl", "ds", cache, val_fraction=0.2)
    with pytest.raises(InputError, match="--train-file"):
        index_dataset(root, "abaw-mtl", "ds", cache, train_file=root / "nope.txt")
    (root / "validation_set_annotations.txt").unlink()
    with pytest.raises(InputError, match="no validation annotations found"):
        index_dataset(root, "abaw-mtl", "ds", cache)
    assert not cache.exists()

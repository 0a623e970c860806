"""`pipeline index` for the per-task Aff-Wild2 layouts and for CSV tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from affectpipe.data.index import index_dataset
from affectpipe.errors import AnnotationError, InputError
from affectpipe.manifest import read_manifest, read_manifest_metadata
from affectpipe.pipeline import cli
from affectpipe.schema import AU_COLUMNS, TASK_HEADERS


def touch_images(root: Path, keys: list[str]) -> None:
    for key in keys:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(b"jpg")


def write_task(
    annotations: Path, folder: str, header: str, train: dict[str, list[str]], val: dict
) -> Path:
    """`<annotations>/<folder>/{Train_Set,Validation_Set}/<video>.txt` files; the task folder."""
    for set_name, videos in (("Train_Set", train), ("Validation_Set", val)):
        (annotations / folder / set_name).mkdir(parents=True, exist_ok=True)
        for video, lines in videos.items():
            text = "\n".join([header, *lines]) + "\n"
            (annotations / folder / set_name / f"{video}.txt").write_text(text)
    return annotations / folder


@pytest.fixture
def aff_wild2(tmp_path: Path) -> Path:
    """Images shared by the per-task sets: cropped_aligned/ next to the annotations."""
    touch_images(
        tmp_path / "cropped_aligned",
        [
            "10-60-1280x720_right/00001.jpg",
            "10-60-1280x720_right/00002.jpg",
            "video3/00001.jpg",
            "video3/00003.jpg",  # frame 2 has no image
            "test_a/00001.jpg",
            "test_a/00002.jpg",
            "test_a/00005.jpg",
            "test_b/00002.jpg",
        ],
    )
    return tmp_path


@pytest.mark.parametrize("folder", ["EXPR_Classification_Challenge", "EXPR_Recognition_Challenge"])
def test_expr_with_abaw3_video_list(aff_wild2: Path, folder: str) -> None:
    annotations = aff_wild2 / "annotations"
    task_dir = write_task(
        annotations,
        folder,
        TASK_HEADERS["expr"],
        {"10-60-1280x720_right": ["4", "-1", "7"]},
        {"video3": ["0", "0", "5"]},
    )
    (annotations / "Expression_Classification_Challenge_test_set_release.txt").write_text(
        "test_a\ntest_b\n"
    )
    # ROOT may be the annotations folder or the task folder itself.
    root = annotations if folder.endswith("Classification_Challenge") else task_dir
    result = index_dataset(root, "abaw-expr", "ds", aff_wild2 / "cache")
    frame = read_manifest(result.manifest_path)
    assert frame["split"].tolist() == ["train"] * 3 + ["val"] * 3 + ["test"] * 7
    assert frame["image"].tolist()[:6] == [
        "10-60-1280x720_right/00001.jpg",
        "10-60-1280x720_right/00002.jpg",
        "10-60-1280x720_right/00003.jpg",
        "video3/00001.jpg",
        "video3/00002.jpg",
        "video3/00003.jpg",
    ]
    assert frame["expression"].tolist()[:6] == [4, -1, 7, 0, 0, 5]
    assert frame["valence"].isna().all() and (frame[list(AU_COLUMNS)] == -1).all().all()
    # test_a expands to frames 1..5 (its last image), test_b to 1..2.
    tests = frame[frame["split"] == "test"]
    assert tests["video"].tolist() == ["test_a"] * 5 + ["test_b"] * 2
    assert tests["frame"].tolist() == [1, 2, 3, 4, 5, 1, 2]
    assert tests["has_image"].tolist() == [True, True, False, False, True, False, True]
    assert frame["has_image"].tolist()[:6] == [True, True, False, True, False, True]
    meta = read_manifest_metadata(result.manifest_path)
    assert meta["test_list"]["style"] == "video-names" and meta["test_list"]["header"] is None
    assert "expression train: neutral 0, anger 0, disgust 0, fear 0, happiness 1" in result.summary


def test_va_with_abaw5_sample_list(aff_wild2: Path) -> None:
    annotations = aff_wild2 / "annotations"
    write_task(
        annotations,
        "VA_Estimation_Challenge",
        TASK_HEADERS["va"],
        {"video3": ["0.1,0.2", "-5,-5", "0.3,-5"]},
        {"10-60-1280x720_right": ["-1,1", "0.5,0.5"]},
    )
    header = "image_location,valence,arousal"
    (annotations / "CVPR_5th_ABAW_VA_test_set_sample.txt").write_text(
        f"{header}\ntest_a/00001.jpg,\ntest_a/00002.jpg,\ntest_a/00003.jpg,\n"
    )
    result = index_dataset(annotations, "abaw-va", "ds", aff_wild2 / "cache")
    frame = read_manifest(result.manifest_path)
    np.testing.assert_allclose(frame["valence"][:5], [0.1, np.nan, np.nan, -1.0, 0.5])
    np.testing.assert_allclose(frame["arousal"][:5], [0.2, np.nan, np.nan, 1.0, 0.5])
    assert (frame["expression"] == -1).all()
    assert frame["image"].tolist()[5:] == [
        "test_a/00001.jpg",
        "test_a/00002.jpg",
        "test_a/00003.jpg",
    ]
    assert frame["has_image"].tolist()[5:] == [True, True, False]
    listed = read_manifest_metadata(result.manifest_path)["test_list"]
    assert listed == {**listed, "style": "frame-lines", "header": header, "trailing_comma": True}


def test_au_with_abaw6_prefilled_list(aff_wild2: Path) -> None:
    annotations = aff_wild2 / "6th ABAW Annotations"
    on = "1,0,1,1,1,0,0,0,0,0,1,0"
    write_task(
        annotations,
        "AU_Detection_Challenge",
        TASK_HEADERS["au"],
        {"video3": [on, ",".join(["-1"] * 12)]},
        {"10-60-1280x720_right": [on]},
    )
    listed = annotations / "test_set_examples" / "CVPR_6th_ABAW_AU_test_set_example.txt"
    listed.parent.mkdir()
    listed.write_text(
        f"image_location,{TASK_HEADERS['au']}\ntest_b/00002.jpg,{on}\ntest_b/00003.jpg,{on}\n"
    )
    result = index_dataset(annotations, "abaw-au", "ds", aff_wild2 / "cache")
    frame = read_manifest(result.manifest_path)
    assert frame.loc[0, list(AU_COLUMNS)].tolist() == [int(v) for v in on.split(",")]
    assert (frame.loc[1, list(AU_COLUMNS)] == -1).all()
    assert frame["image"].tolist()[3:] == ["test_b/00002.jpg", "test_b/00003.jpg"]
    assert (frame.loc[3:, list(AU_COLUMNS)] == -1).all().all()  # pre-filled values ignored
    meta = read_manifest_metadata(result.manifest_path)
    assert meta["test_list"]["trailing_comma"] is False


def test_per_task_errors_name_file_and_line(aff_wild2: Path) -> None:
    annotations = aff_wild2 / "annotations"
    write_task(
        annotations,
        "VA_Estimation_Challenge",
        TASK_HEADERS["va"],
        {"video3": ["0.1,0.2", "0.1"]},
        {"10-60-1280x720_right": ["0.5,0.5"]},
    )
    with pytest.raises(AnnotationError) as caught:
        index_dataset(annotations, "abaw-va", "ds", aff_wild2 / "cache")
    assert caught.value.line == 3 and caught.value.path.name == "video3.txt"
    assert "expected 2 fields, found 1" in str(caught.value)
    result = index_dataset(annotations, "abaw-va", "ds", aff_wild2 / "cache", lenient=True)
    assert read_manifest(result.manifest_path)["valence"].notna().sum() == 2
    fixed = "\n".join([TASK_HEADERS["va"], "0.1,0.2", "0.1,0.1"]) + "\n"
    (annotations / "VA_Estimation_Challenge" / "Train_Set" / "video3.txt").write_text(fixed)
    listed = annotations / "Valence_Arousal_Estimation_Challenge_test_set_release.txt"
    listed.write_text("test_b\nno_such_video\n")
    with pytest.raises(AnnotationError, match="no images of video 'no_such_video'") as caught:
        index_dataset(annotations, "abaw-va", "ds", aff_wild2 / "cache")
    assert caught.value.path == listed.resolve() and caught.value.line == 2
    skipped = index_dataset(annotations, "abaw-va", "ds", aff_wild2 / "cache", lenient=True)
    assert f"lenient: 1 line(s) of {listed.resolve()}" in skipped.summary
    with pytest.raises(InputError, match="neither Train_Set"):
        index_dataset(annotations, "abaw-au", "ds", aff_wild2 / "cache")


def write_csv(folder: Path, text: str, images: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.csv").write_text(text)
    touch_images(folder / "images", images)
    return folder


def test_csv_labels_splits_and_image_root(tmp_path: Path) -> None:
    text = (
        "Image,Valence,arousal,expression,AU01,au12,split\n"
        "a/001.jpg,0.5,0.1,4,1,0,train\n"
        "a/002.jpg,,,,,1,validation\n"
        "b/x.jpg,-5,0.2,-1,-1,,test\n"
    )
    root = write_csv(tmp_path / "table", text, ["a/001.jpg", "a/002.jpg"])
    result = index_dataset(root, "csv", "ds", tmp_path / "cache")
    frame = read_manifest(result.manifest_path)
    assert frame["split"].tolist() == ["train", "val", "test"]
    assert frame["video"].tolist() == ["a", "a", "b"]
    assert frame["frame"].tolist() == [1, 2, 1]  # from the file name, else order in video
    assert frame["has_image"].tolist() == [True, True, False]  # found under images/
    np.testing.assert_allclose(frame["valence"], [0.5, np.nan, np.nan])
    assert frame["expression"].tolist() == [4, -1, -1]
    assert frame["au1"].tolist() == [1, -1, -1] and frame["au12"].tolist() == [0, 1, -1]
    assert (frame["au26"] == -1).all()  # absent column -> missing
    meta = read_manifest_metadata(result.manifest_path)
    assert meta["image_roots"]["train"] == str((root / "images").resolve())
    assert meta["test_list"] is None


def test_csv_val_fraction_is_by_video_and_deterministic(tmp_path: Path) -> None:
    rows = "".join(f"v{v}/{f:05d}.jpg,{f % 8}\n" for v in range(10) for f in range(1, 4))
    root = write_csv(tmp_path / "table", "image,expression\n" + rows, [])
    splits = []
    for name in ("one", "two"):
        result = index_dataset(root, "folder", name, tmp_path / "cache", val_fraction=0.3)
        frame = read_manifest(result.manifest_path)
        per_video = frame.groupby("video")["split"].nunique()
        assert (per_video == 1).all()
        assert frame.groupby("split")["video"].nunique().to_dict() == {"train": 7, "val": 3}
        splits.append(frame["split"].tolist())
    assert splits[0] == splits[1]
    plain = read_manifest(index_dataset(root, "csv", "three", tmp_path / "cache").manifest_path)
    assert (plain["split"] == "train").all()


def test_csv_errors(tmp_path: Path) -> None:
    text = "image,valence,arousal\na.jpg,0.1,0.1\n\nb.jpg,2,0\n\n"
    root = write_csv(tmp_path / "table", text, [])
    with pytest.raises(AnnotationError) as caught:
        index_dataset(root, "csv", "ds", tmp_path / "cache")
    assert caught.value.line == 3 and "empty image path" in str(caught.value)
    (root / "labels.csv").write_text(text.replace("\n\nb", "\nb"))
    with pytest.raises(AnnotationError) as caught:
        index_dataset(root, "csv", "ds", tmp_path / "cache")
    assert caught.value.line == 3 and "valence '2'" in str(caught.value)
    lenient = index_dataset(root, "csv", "ds", tmp_path / "cache", lenient=True)
    assert "lenient: 1 line(s)" in lenient.summary and lenient.rows == 2
    (root / "labels.csv").write_text("file,valence\na.jpg,0.1\n")
    with pytest.raises(InputError, match="no `image` column"):
        index_dataset(root, "csv", "ds2", tmp_path / "cache")
    (root / "labels.csv").write_text("image,split\na.jpg,holdout\n")
    with pytest.raises(AnnotationError, match="split 'holdout'"):
        index_dataset(root, "csv", "ds3", tmp_path / "cache")
    with pytest.raises(InputError, match="drop --val-fraction"):
        index_dataset(root, "csv", "ds3", tmp_path / "cache", val_fraction=0.2)


def test_csv_options_through_the_cli(tmp_path: Path) -> None:
    rows = "".join(f"{p}_{k}.jpg,{k % 2},{p}\n" for p in "abcdef" for k in range(2))
    root = write_csv(tmp_path / "table", "image,expression,person\n" + rows, ["a_0.jpg"])
    args = ["--cache-dir", str(tmp_path / "cache"), "index", str(root / "labels.csv")]
    args += ["--format", "csv", "--name", "ds", "--video-column", "person"]
    result = CliRunner().invoke(cli, [*args, "--val-fraction", "0.5"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    frame = read_manifest(tmp_path / "cache" / "ds" / "manifest.parquet")
    assert frame["video"].tolist() == [p for p in "abcdef" for _ in range(2)]
    assert frame.groupby("split")["video"].nunique().to_dict() == {"train": 3, "val": 3}
    assert frame["has_image"].sum() == 1
    bad = CliRunner().invoke(cli, [*args, "--val-fraction", "1.5"])
    assert bad.exit_code == 2 and "1.5" in bad.output

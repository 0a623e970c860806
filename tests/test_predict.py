"""`pipeline predict`, `Predictor` and exported runs, on a run trained on real faces.

One run is trained through the real CLI (index csv -> extract openface -> heads expr ->
blend) on realfaces-smile with a quarter of the people held out as unlabelled test rows;
its own test-row predictions (the heads' prediction files and the blend's submission) are
what `predict` must reproduce from the same images copied under new names.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import photo_dataset, run_cli

from affectpipe.pipeline import cli
from affectpipe.predict.api import DETECTION_COLUMNS
from affectpipe.schema import EXPR_NAMES

pytestmark = pytest.mark.slow
P_EXPR = [f"p_{name}" for name in EXPR_NAMES]
# Tests asking for `mtcnn_detector` need MTCNN's weights (fetched once with pip; skipped offline).


@pytest.fixture(scope="module")
def trained(realfaces_dir: Path, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("predict")
    # About half the people (a quicker test); one "video" per image: the run's own test
    # outputs are then unsmoothed, like photos.
    table = photo_dataset(realfaces_dir, root, every=2)
    cache = root / "cache"
    common = ("--cache-dir", cache)
    # In process: the run is this module's input; what is tested here runs as subprocesses.
    _invoke(*common, "index", root / "labels.csv", "--format", "csv", "--name", "faces")
    _invoke(*common, "extract", "--dataset", "faces", "--backbones", "openface", "--workers", "0")
    _invoke(*common, "heads", "--dataset", "faces", "--task", "expr")
    _invoke(*common, "blend", "--dataset", "faces", "--out", root / "sub", "--no-report")
    test = table[table["split"] == "test"].reset_index(drop=True)
    plain = root / "plain"  # held-out images under new names, in a nested folder
    (plain / "nested").mkdir(parents=True)
    for i, name in enumerate(test["image"]):
        shutil.copyfile(realfaces_dir / "images" / name, plain / "nested" / f"photo_{i:03d}.jpg")
    archive = root / "shared-run.tar.gz"
    _invoke(*common, "export-run", "--dataset", "faces", "--out", archive)
    return {"root": root, "cache": cache, "test": test, "plain": plain, "archive": archive}


def predict_faces(trained: dict, *args, **kwargs) -> subprocess.CompletedProcess:
    """`pipeline predict --dataset faces ARGS...` on the trained cache (a real subprocess)."""
    return run_cli(
        "--cache-dir", trained["cache"], "predict", "--dataset", "faces", *args, **kwargs
    )


def _invoke(*args: str | Path) -> None:
    result = CliRunner().invoke(cli, [*map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _expected_probabilities(cache: Path, images: list[str]) -> np.ndarray:
    """The run's own blended test probabilities: its prediction files mixed by blend.json."""
    run = cache / "faces" / "runs" / "default"
    blend = json.loads((run / "blend" / "blend.json").read_text())["tasks"]["expr"]
    total = np.zeros((len(images), len(P_EXPR)))
    for name, weight in blend["weights"]["expression"].items():
        preds = pd.read_parquet(run / "preds" / "expr" / f"{name}.parquet")
        preds = preds[preds["split"] == "test"].set_index("image")
        total += weight * preds.loc[images, P_EXPR].to_numpy(np.float64)
    return total


def test_predict_reproduces_the_runs_own_test_predictions(trained: dict):
    cache, test, out = trained["cache"], trained["test"], trained["root"] / "preds.parquet"
    result = run_cli(
        "--cache-dir", cache, "predict", "--dataset", "faces", "--out", out, trained["plain"]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = pd.read_parquet(out)
    assert list(table.columns) == [
        "source",
        "face_id",
        "face_ok",
        "face_check",
        "reason",
        *DETECTION_COLUMNS,
        "expression",
        *P_EXPR,
    ]
    assert (table["face_id"] == 0).all() and table[list(DETECTION_COLUMNS)].isna().all().all()
    assert table["reason"].isna().all()
    assert [Path(s).name for s in table["source"]] == [
        f"photo_{i:03d}.jpg" for i in range(len(test))
    ]
    assert table["face_ok"].all()
    assert (table["face_check"] == "crop-check").all()  # real crops pass the fast check
    expected = _expected_probabilities(cache, test["image"].tolist())
    np.testing.assert_allclose(table[P_EXPR].to_numpy(np.float64), expected, atol=1e-5)
    submitted = pd.read_csv(trained["root"] / "sub" / "EXPR_predictions.txt")
    assert submitted.iloc[:, 0].tolist() == test["image"].tolist()
    np.testing.assert_array_equal(table["expression"].to_numpy(), submitted.iloc[:, 1].to_numpy())

    # The Python API gives the same table.
    from affectpipe import Predictor

    api = Predictor.load(cache, "faces").predict([trained["plain"]])
    pd.testing.assert_frame_equal(api, table, check_dtype=False)

    # An exported archive predicts the same on "another machine" (no cache there).
    out2 = trained["root"] / "exported.parquet"
    run_cli(
        "--cache-dir",
        trained["root"] / "elsewhere",
        "predict",
        "--from-run",
        trained["archive"],
        "--out",
        out2,
        trained["plain"],
        check=True,
    )
    pd.testing.assert_frame_equal(pd.read_parquet(out2), table)


def test_a_corrupt_image_gives_a_row_without_a_face(trained: dict, tmp_path: Path):
    folder = tmp_path / "in"
    folder.mkdir()
    first = sorted((trained["plain"] / "nested").iterdir())[0]
    shutil.copyfile(first, folder / "a.jpg")
    (folder / "b.jpg").write_bytes(first.read_bytes()[:200])  # truncated
    out = tmp_path / "out.csv"
    result = run_cli(
        "--cache-dir", trained["cache"], "predict", "--dataset", "faces", "--out", out, folder
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = pd.read_csv(out)
    assert table["face_ok"].tolist() == [True, False]
    assert table["face_check"].tolist() == ["crop-check", "none"]
    assert table["expression"].tolist()[1] == -1 and table.loc[1, P_EXPR].isna().all()
    assert pd.isna(table["reason"][0]) and table["reason"][1].startswith("undecodable")


def test_detect_finds_and_aligns_the_face_in_a_larger_frame(
    trained: dict, mtcnn_detector, tmp_path: Path
):
    """--detect on raw frames: one face pasted (upscaled) at two places of a plain 320x240
    frame is found and aligned the same way both times, so its predictions agree; an empty
    frame gives a row without a face. Decoding in worker processes (the CLI) and in this
    process (the API) give the same table."""
    from PIL import Image

    from affectpipe import Predictor

    folder = tmp_path / "frames"
    folder.mkdir()
    face = Image.open(sorted((trained["plain"] / "nested").iterdir())[0]).convert("RGB")
    for i, corner in enumerate([(40, 32), (120, 64)]):
        canvas = Image.new("RGB", (320, 240), (90, 100, 110))
        canvas.paste(face.resize((168, 168)), corner)
        canvas.save(folder / f"frame_{i}.png")
    Image.new("RGB", (320, 240), (90, 100, 110)).save(folder / "frame_9_empty.png")
    out = tmp_path / "detected.csv"
    result = predict_faces(
        trained,
        "--detect",
        "--workers",
        "1",
        "--out",
        out,
        folder,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = pd.read_csv(out)
    assert table["face_ok"].tolist() == [True, True, False]
    assert (table["face_check"] == "detection").all()
    probabilities = table[P_EXPR].to_numpy()
    np.testing.assert_allclose(probabilities[0], probabilities[1], atol=0.05)
    assert np.isnan(probabilities[2]).all() and table["expression"][2] == -1
    api = Predictor.load(trained["cache"], "faces", detect=True, workers=0).predict(folder)
    pd.testing.assert_frame_equal(api, table, check_dtype=False)


def _write_video(path: Path, images: list, fps: int = 10, size: tuple = (112, 112)) -> int:
    """A video of `images` (paths or PIL images of `size`)."""
    import av
    from PIL import Image

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        stream.options = {"qscale": "2"}
        for image in images:
            if not isinstance(image, Image.Image):
                image = Image.open(image)
            frame = av.VideoFrame.from_image(image.convert("RGB"))
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return len(images)


def test_video_frames_are_subsampled_and_smoothed(trained: dict, tmp_path: Path):
    from affectpipe import Predictor
    from affectpipe.blend.smoothing import VideoOrder, smooth

    faces = sorted((trained["plain"] / "nested").iterdir())[:10]
    n = _write_video(tmp_path / "clip.mp4", [f for f in faces for _ in range(3)])  # 3 s at 10 fps
    out = tmp_path / "clip.csv"
    result = predict_faces(
        trained,
        "--every",
        "2",
        "--out",
        out,
        tmp_path / "clip.mp4",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = pd.read_csv(out)
    assert table["frame"].tolist() == list(range(1, n + 1, 2))  # ABAW's frames start at 00001
    np.testing.assert_allclose(table["timestamp"], (table["frame"] - 1) / 10, atol=1e-6)
    assert table["face_ok"].all() and (table["face_check"] == "crop-check").all()

    # Smoothing: with a tuned window, each kept frame's probabilities are the mean over its
    # kept neighbours within the window (box kernel), computed here from unsmoothed outputs.
    predictor = Predictor.load(trained["cache"], "faces", every=2)
    plan = predictor.bundle.tasks["expr"]
    plan.blend.half_width = 0
    raw = predictor.predict(tmp_path / "clip.mp4")
    plan.blend.kernel, plan.blend.half_width = "box", 2
    smoothed = predictor.predict(tmp_path / "clip.mp4")
    values = raw[P_EXPR].to_numpy()
    expected = np.stack([values[max(0, i - 2) : i + 3].mean(axis=0) for i in range(len(values))])
    np.testing.assert_allclose(smoothed[P_EXPR].to_numpy(), expected, atol=1e-6)
    assert not np.allclose(expected, values)
    order = VideoOrder.of(np.zeros(len(values), int), raw["frame"].to_numpy())
    assert np.allclose(smooth(values, order, "box", 2), expected, atol=1e-6)


class _Payload:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_planted_pickles_are_refused_never_loaded(trained: dict, tmp_path: Path):
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Payload(marker))
    cache = tmp_path / "cache"
    shutil.copytree(trained["cache"], cache)
    planted = cache / "faces" / "runs" / "default" / "heads" / "expr" / "evil.joblib"
    planted.write_bytes(payload)
    for args in (
        ("predict", "--dataset", "faces", "--out", tmp_path / "p.csv", trained["plain"]),
        ("blend", "--dataset", "faces", "--no-report"),
    ):
        result = run_cli("--cache-dir", cache, *args)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "evil.joblib" in result.stderr and "pickle" in result.stderr
    planted.unlink()

    exported = tmp_path / "exported"
    with tarfile.open(trained["archive"]) as tar:
        tar.extractall(exported, filter="data")
    (exported / "heads" / "expr" / "model.pkl").write_bytes(payload)
    result = run_cli(
        "predict", "--from-run", exported, "--out", tmp_path / "q.csv", trained["plain"]
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "model.pkl" in result.stderr
    (exported / "heads" / "expr" / "model.pkl").unlink()

    # An archive with a member escaping its folder is refused before anything is extracted.
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(exported / "export.json", arcname="export.json")
        tar.add(exported / "blend.json", arcname="../escaped.json")
    result = run_cli("predict", "--from-run", evil, "--out", tmp_path / "r.csv", trained["plain"])
    assert result.returncode == 2, result.stdout + result.stderr
    assert "escaped.json" in result.stderr
    assert not marker.exists()
    assert not (tmp_path.parent / "escaped.json").exists()


def test_detect_applies_the_exif_orientation(trained: dict, mtcnn_detector, tmp_path: Path):
    """A photo stored sideways with an EXIF orientation (as phones write them) is turned
    upright before the face is searched for: without it, no face is found."""
    from PIL import Image

    face = Image.open(sorted((trained["plain"] / "nested").iterdir())[0]).convert("RGB")
    canvas = Image.new("RGB", (320, 240), (90, 100, 110))
    canvas.paste(face.resize((168, 168)), (70, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    folder = tmp_path / "photos"
    folder.mkdir()
    canvas.transpose(Image.Transpose.ROTATE_90).save(folder / "sideways.jpg", exif=exif)
    out = tmp_path / "sideways.csv"
    predict_faces(
        trained,
        "--detect",
        "--workers",
        "0",
        "--out",
        out,
        folder,
        check=True,
    )
    assert pd.read_csv(out)["face_ok"].tolist() == [True]


def test_face_ok_means_a_face_was_seen(trained: dict, mtcnn_detector, tmp_path: Path):
    """No input is taken on trust: a blank grey video and blank / noise images are
    `face_ok=False` (whatever the heads would say), a real face pasted into a 320x240 webcam-
    style frame is found by detection (not crop-shaped), and `--assume-aligned` skips the
    check, saying so. The CLI and the API agree."""
    from PIL import Image

    from affectpipe import Predictor

    grey = Image.new("RGB", (112, 112), (128, 128, 128))
    _write_video(tmp_path / "blank.mp4", [grey] * 6)
    folder = tmp_path / "images"
    folder.mkdir()
    face = Image.open(sorted((trained["plain"] / "nested").iterdir())[0]).convert("RGB")
    face.save(folder / "a_face.png")
    grey.save(folder / "b_grey.png")
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "c_noise.png")
    webcam = Image.new("RGB", (320, 240), (90, 100, 110))
    webcam.paste(face.resize((150, 150)), (100, 50))
    webcam.save(folder / "d_webcam.png")
    out = tmp_path / "checked.csv"
    result = predict_faces(
        trained,
        "--out",
        out,
        folder,
        tmp_path / "blank.mp4",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = pd.read_csv(out)
    images, video = table[table["frame"] == -1], table[table["frame"] >= 1]
    assert images["timestamp"].isna().all()
    assert images["face_ok"].tolist() == [True, False, False, True]
    assert images["face_check"].tolist() == ["crop-check", "detection", "detection", "detection"]
    assert len(video) == 6 and not video["face_ok"].any()
    assert (video["face_check"] == "detection").all() and (video["expression"] == -1).all()
    assert "10 rows (8 without a usable face)" in result.stdout
    api = Predictor.load(trained["cache"], "faces").predict([folder, tmp_path / "blank.mp4"])
    pd.testing.assert_frame_equal(api, table, check_dtype=False)

    assumed = tmp_path / "assumed.csv"
    predict_faces(
        trained,
        "--assume-aligned",
        "--out",
        assumed,
        folder,
        check=True,
    )
    table = pd.read_csv(assumed)
    assert table["face_ok"].all() and (table["face_check"] == "assumed").all()

    both = predict_faces(
        trained,
        "--assume-aligned",
        "--detect",
        "--out",
        assumed,
        folder,
    )
    assert both.returncode == 2 and "exclude each other" in both.stderr
    assert "Traceback" not in both.stderr


def _raw_frames(faces: list[Path], corners: list[list[tuple[int, int]]], side: int = 150) -> list:
    """640x480 frames on a smooth background, face k of each frame pasted at corners[i][k]."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(0)
    background = (
        Image.fromarray(rng.integers(60, 200, (6, 8, 3), dtype=np.uint8))
        .resize((640, 480), Image.Resampling.BICUBIC)
        .filter(ImageFilter.GaussianBlur(8))
    )
    frames = []
    for face_paths, places in zip(faces, corners, strict=True):
        frame = background.copy()
        for path, corner in zip(face_paths, places, strict=True):
            frame.paste(Image.open(path).convert("RGB").resize((side, side)), corner)
        frames.append(frame)
    return frames


def test_raw_video_gives_the_crops_predictions_with_boxes_and_landmarks(
    trained: dict, mtcnn_detector, tmp_path: Path
):
    """The new user's case: a raw 640x480 video (no --detect). Every frame is too wide for
    the crop check, so MTCNN finds the face, the ABAW alignment crops it, and the predicted
    expressions agree with those of the photos themselves; the empty frames at the end say
    face_ok=False. Box, landmarks and score are where the face was pasted. CLI == API."""
    from affectpipe import Predictor

    photos = sorted((trained["plain"] / "nested").iterdir())[:12]
    frames = _raw_frames([[p] for p in photos], [[(200 + 8 * i, 120)] for i in range(12)])
    _write_video(tmp_path / "raw.mp4", frames + _raw_frames([[], []], [[], []]), size=(640, 480))
    out = tmp_path / "raw.csv"
    result = predict_faces(
        trained,
        "--out",
        out,
        tmp_path / "raw.mp4",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = pd.read_csv(out)
    assert table["frame"].tolist() == list(range(1, 15))
    assert table["face_ok"].tolist() == [True] * 12 + [False] * 2
    assert (table["face_check"] == "detection").all()
    assert table["face_id"].tolist() == [0] * 12 + [-1] * 2  # one track
    faces = table[table["face_ok"]]
    left = 200 + 8 * np.arange(12)
    assert (faces["box_x1"] > left - 10).all() and (faces["box_x2"] < left + 160).all()
    assert (faces["left_eye_x"] < faces["nose_x"]).all()
    assert (faces["nose_x"] < faces["right_eye_x"]).all()
    assert (faces["det_score"] > 0.9).all()
    crops = Predictor.load(trained["cache"], "faces").predict(photos)
    agree = (faces["expression"].to_numpy() == crops["expression"].to_numpy()).mean()
    assert agree >= 10 / 12, agree
    api = Predictor.load(trained["cache"], "faces").predict(tmp_path / "raw.mp4")
    pd.testing.assert_frame_equal(api, table, check_dtype=False)


def test_a_two_person_video_gives_two_tracks(trained: dict, mtcnn_detector, tmp_path: Path):
    """Two people side by side, moving towards each other: two face_ids, each on its own
    side in every frame; smoothing runs along each track. --detector dlib-hog also runs."""
    photos = sorted((trained["plain"] / "nested").iterdir())
    pair = [photos[0], photos[5]]
    corners = [[(40 + 10 * i, 100), (440 - 10 * i, 160)] for i in range(8)]
    _write_video(tmp_path / "two.mp4", _raw_frames([pair] * 8, corners, side=140), size=(640, 480))
    out = tmp_path / "two.csv"
    (tmp_path / "again").mkdir()
    shutil.copyfile(tmp_path / "two.mp4", tmp_path / "again" / "two.mp4")
    result = predict_faces(
        trained,
        "--detect",
        "--out",
        out,
        "--per-video",
        tmp_path / "csv",
        "--plot",
        tmp_path / "html",
        tmp_path / "two.mp4",
        tmp_path / "again" / "two.mp4",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    both = pd.read_csv(out)
    table = both[both["source"] == str(tmp_path / "two.mp4")].reset_index(drop=True)
    # One CSV per video (the second of the same name numbered), without the source column.
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == ["two.csv", "two_2.csv"]
    per_video = pd.read_csv(tmp_path / "csv" / "two.csv")
    pd.testing.assert_frame_equal(
        per_video, table.drop(columns="source").sort_values(["frame", "face_id"], ignore_index=True)
    )
    page = (tmp_path / "html" / "two.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 2  # a thumbnail per track
    assert "face_id 0: frames 1-8" in page and "face_id 1: frames 1-8" in page
    assert "<h2>Expression</h2>" in page and "Valence" not in page  # an expr-only run
    assert len(table) == 16 and table["face_ok"].all()
    assert table.groupby("frame").size().eq(2).all()
    assert sorted(table["face_id"].unique()) == [0, 1]
    sides = table.assign(left=table["box_x1"] < 320).groupby("face_id")["left"].agg(["min", "max"])
    assert (sides["min"] == sides["max"]).all() and sides["min"].nunique() == 2

    hog = tmp_path / "hog.csv"
    predict_faces(
        trained,
        "--detect",
        "--detector",
        "dlib-hog",
        "--out",
        hog,
        tmp_path / "two.mp4",
        check=True,
    )
    assert sorted(pd.read_csv(hog)["face_id"].unique()) == [0, 1]
    bad = predict_faces(
        trained,
        "--detect",
        "--detector",
        "nope",
        "--out",
        hog,
        tmp_path / "two.mp4",
    )
    assert bad.returncode == 2 and "unknown face detector 'nope'" in bad.stderr

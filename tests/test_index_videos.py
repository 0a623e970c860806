"""`pipeline index --format videos`: raw videos -> aligned frames in the cache -> manifest, then
extract -> heads -> blend on them (real faces, MTCNN)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from PIL import Image

pytestmark = pytest.mark.slow


def _video(path: Path, photo: Path, frames: int, blank_last: bool = False) -> None:
    """A 320x240 clip of one photo drifting right (the last frame blank when asked)."""
    import av

    face = Image.open(photo).convert("RGB").resize((120, 120))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"qscale": "2"}
        for k in range(frames):
            canvas = Image.new("RGB", (320, 240), (110, 120, 100))
            if not (blank_last and k == frames - 1):
                canvas.paste(face, (80 + 6 * k, 60))
            container.mux(stream.encode(av.VideoFrame.from_image(canvas)))
        container.mux(stream.encode(None))


def test_videos_index_extract_heads_blend(realfaces_dir: Path, mtcnn_detector, tmp_path: Path):
    labels = pd.read_csv(realfaces_dir / "labels.csv")
    people = labels.drop_duplicates("person")
    neutral = people[people["expression"] == 0]["image"].tolist()[:8]
    smiling = people[people["expression"] == 4]["image"].tolist()[:8]
    videos, annotations = tmp_path / "videos", tmp_path / "EXPR_Set"
    videos.mkdir()
    header = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n"
    for k, (a, b) in enumerate(zip(neutral, smiling, strict=True)):
        for code, image in ((0, a), (4, b)):
            name = f"v{k}_{code}"
            _video(videos / f"{name}.mp4", realfaces_dir / "images" / image, 4, blank_last=(k == 0))
            split = "Train_Set" if k < 5 else "Validation_Set" if k < 7 else None
            if split is not None:
                (annotations / split).mkdir(parents=True, exist_ok=True)
                (annotations / split / f"{name}.txt").write_text(header + f"{code}\n" * 4)
    cache = tmp_path / "cache"
    index = ("--cache-dir", cache, "index", videos, "--format", "videos", "--name", "mine",
             "--labels", annotations, "--task", "expr")  # fmt: skip
    result = run_cli(*index)
    assert result.returncode == 0, result.stdout + result.stderr
    frames = cache / "mine" / "frames"
    assert sorted(p.name for p in (frames / "v1_4").iterdir()) == [
        "00001.jpg",
        "00002.jpg",
        "00003.jpg",
        "00004.jpg",
        "done.json",
        "missing.tsv",
    ]
    assert Image.open(frames / "v1_4" / "00001.jpg").size == (112, 112)
    # The blank last frame of v0_*: no image, recorded, not fatal.
    assert (frames / "v0_0" / "missing.tsv").read_text() == "frame\treason\n4\tno face detected\n"
    manifest = pd.read_parquet(cache / "mine" / "manifest.parquet")
    assert manifest.groupby("split").size().to_dict() == {"test": 8, "train": 40, "val": 16}
    assert not manifest.loc[manifest["image"] == "v0_0/00004.jpg", "has_image"].item()
    done = json.loads((frames / "v3_0" / "done.json").read_text())
    assert done["frames_written"] == 4 and done["detector"] == "mtcnn"

    # Again: nothing re-detected (done.json), the manifest reused.
    stamp = (frames / "v1_4" / "00001.jpg").stat().st_mtime_ns
    again = run_cli(
        *index,
        check=True,
    )
    assert "up to date" in again.stdout
    assert (frames / "v1_4" / "00001.jpg").stat().st_mtime_ns == stamp

    common = ("--cache-dir", cache)
    run_cli(
        *common,
        "extract",
        "--dataset",
        "mine",
        "--backbones",
        "openface",
        "--workers",
        "0",
        check=True,
    )
    run_cli(*common, "heads", "--dataset", "mine", "--task", "expr", check=True)
    run_cli(
        *common, "blend", "--dataset", "mine", "--out", tmp_path / "sub", "--no-report", check=True
    )
    submitted = pd.read_csv(tmp_path / "sub" / "EXPR_predictions.txt")
    assert len(submitted) == 8
    assert set(np.unique(submitted.iloc[:, 1])) <= {0, 1, 2, 3, 4, 5, 6, 7}


def test_videos_format_refuses_bad_input(tmp_path: Path):
    empty = tmp_path / "none"
    empty.mkdir()
    result = run_cli(
        "--cache-dir", tmp_path / "c", "index", empty, "--format", "videos", "--name", "x"
    )
    assert result.returncode == 2 and "no video files under" in result.stderr
    (empty / "a.mp4").write_bytes(b"not a video")
    half = run_cli(
        "--cache-dir",
        tmp_path / "c",
        "index",
        empty,
        "--format",
        "videos",
        "--name",
        "x",
        "--task",
        "expr",
    )
    assert half.returncode == 2 and "--labels and --task go together" in half.stderr
    assert "Traceback" not in half.stderr
    # An undecodable video: recorded in missing.tsv; no face anywhere is exit 2, no manifest.
    bad = run_cli(
        "--cache-dir", tmp_path / "c", "index", empty, "--format", "videos", "--name", "x"
    )
    assert bad.returncode == 2 and "no face in any frame" in bad.stderr
    missing = tmp_path / "c" / "x" / "frames" / "a" / "missing.tsv"
    assert "undecodable video" in missing.read_text()
    assert not (tmp_path / "c" / "x" / "manifest.parquet").exists()

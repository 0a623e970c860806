"""Submission writers (byte-exact on hand-made lists) and `validate-submission`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from affectpipe.blend.runner import run as blend_run
from affectpipe.blend.tuning import BlendOptions
from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.manifest import empty_manifest, write_manifest
from affectpipe.pipeline import cli
from affectpipe.predictions import write_prediction_run
from affectpipe.schema import AU_COLUMNS, MTL_SUBMISSION_HEADER, TASKS
from affectpipe.submission.checks import validate_file, validate_video_folder

EXACT = BlendOptions(correction=False, smoothing=False)  # one candidate: outputs = its values


def write_toy(
    root: Path, test: list[tuple], style: str, header: str | None, trailing_comma: bool = False
) -> DatasetPaths:
    """A manifest with labelled train/val rows and the given test rows, plus one candidate
    per task: perfect on val, the given values on test (NaN = no prediction).

    `test` holds (video, frame, has_image, valence, arousal, expr_code, au_prob) tuples.
    """
    val_frames = np.arange(1, 9)
    val_expr = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    val_va = np.linspace(-0.7, 0.7, 8)
    val_au = (np.arange(8)[:, None] + np.arange(12)[None, :]) % 2
    n_train, n_val = 4, len(val_frames)
    frame = empty_manifest(n_train + n_val + len(test))
    frame["split"] = ["train"] * n_train + ["val"] * n_val + ["test"] * len(test)
    videos = ["t1"] * n_train + ["v1"] * n_val + [row[0] for row in test]
    frames = [1, 2, 3, 4, *val_frames, *[row[1] for row in test]]
    frame["video"] = videos
    frame["frame"] = frames
    frame["image"] = [f"{v}/{f:05d}.jpg" for v, f in zip(videos, frames, strict=True)]
    frame["has_image"] = [True] * (n_train + n_val) + [row[2] for row in test]
    n_labelled = n_train + n_val
    columns = {
        "valence": np.r_[[0.1] * n_train, val_va],
        "arousal": np.r_[[0.2] * n_train, -val_va],
        "expression": np.r_[[4] * n_train, val_expr],
        **{c: np.r_[[0, 1, 0, 1], val_au[:, a]] for a, c in enumerate(AU_COLUMNS)},
    }
    for column, values in columns.items():
        full = frame[column].to_numpy().copy()
        full[:n_labelled] = values
        frame[column] = full
    paths = DatasetPaths.of(root, "toy")
    test_list = {
        "path": "list.txt",
        "sha256": "0",
        "style": style,
        "header": header,
        "trailing_comma": trailing_comma,
    }
    metadata = {
        "dataset": "toy",
        "format": "abaw-mtl" if style == "mtl" else "abaw-task",
        "image_roots": {},
        "sources": [],
        "package_version": "test",
        "options": {},
        "test_list": test_list,
    }
    write_manifest(frame, paths.manifest, metadata)
    rows = np.arange(n_train, len(frame))
    nan_rows = np.array([not np.isfinite(r[3]) for r in test])
    va = np.r_[np.c_[val_va, -val_va], np.array([[r[3], r[4]] for r in test])]
    expr = np.r_[
        np.eye(8)[val_expr] * 0.9 + 0.0125,
        np.array(
            [np.eye(8)[int(r[5])] * 0.9 + 0.0125 if r[5] >= 0 else [np.nan] * 8 for r in test]
        ),
    ]
    au = np.r_[val_au * 0.8 + 0.1, np.array([[r[6]] * 12 for r in test])]
    base = pd.DataFrame(
        {
            "row": rows,
            "image": frame["image"].to_numpy()[rows],
            "split": frame["split"].to_numpy()[rows],
        }
    )
    outputs = {}
    for task, values in (("va", va), ("expr", expr), ("au", au)):
        values = values.astype(np.float32)
        values[n_val:][nan_rows] = np.nan
        outputs[task] = {"only": values}
    write_prediction_run(paths, "default", base, outputs)
    return paths


NAN = float("nan")
# ABAW4-style list: sparse frames, a repeated key, a listed frame without image (NaN).
ABAW4_TEST = [
    ("video45_1", 1, True, 0.1, -0.2, 7, 0.9),
    ("video45_1", 8, True, 0.2, -0.4, 5, 0.2),
    ("video45_1", 17, False, NAN, NAN, -1, NAN),
    ("video45_1", 21, True, 0.6, 1.5, 5, 0.8),
    ("video45_1", 8, True, 0.2, -0.4, 5, 0.2),
    ("130-25-1280x720_left", 3, True, -0.5, 0.25, 0, 0.1),
]
ABAW4_EXPECTED = (
    MTL_SUBMISSION_HEADER + "\n"
    "video45_1/00001.jpg,0.100000,-0.200000,7,1,1,1,1,1,1,1,1,1,1,1,1\n"
    "video45_1/00008.jpg,0.200000,-0.400000,5,0,0,0,0,0,0,0,0,0,0,0,0\n"
    # frame 17: 9/13 of the way from frame 8 to 21 (arousal 1.5 clipped only after)
    "video45_1/00017.jpg,0.476923,0.915385,5,1,1,1,1,1,1,1,1,1,1,1,1\n"
    "video45_1/00021.jpg,0.600000,1.000000,5,1,1,1,1,1,1,1,1,1,1,1,1\n"
    "video45_1/00008.jpg,0.200000,-0.400000,5,0,0,0,0,0,0,0,0,0,0,0,0\n"
    "130-25-1280x720_left/00003.jpg,-0.500000,0.250000,0,0,0,0,0,0,0,0,0,0,0,0,0\n"
)


@pytest.mark.parametrize("trailing_comma", [False, True])
def test_mtl_submission_is_byte_exact(tmp_path, trailing_comma):
    # ABAW7 lists end each path with a comma; the manifest keeps the bare path, and so
    # does the submission.
    # 1 of the 6 listed rows (frame 17, no image) is interpolated: allowed by --max-filled 0.2
    paths = write_toy(tmp_path, ABAW4_TEST, "mtl", MTL_SUBMISSION_HEADER, trailing_comma)
    result = blend_run(
        paths,
        out_dir=tmp_path / "out",
        progress=False,
        options=EXACT,
        report=False,
        max_filled=0.2,
    )
    assert [p.name for p in result.submission_files] == ["MTL_predictions.txt"]
    assert result.submission_files[0].read_bytes() == ABAW4_EXPECTED.encode()
    assert result.complete and result.shortfall() is None


def test_abaw5_task_files_are_byte_exact(tmp_path):
    test = [
        ("2-30-640x360", 1, True, 0.25, 0.5, 4, 0.9),
        ("2-30-640x360", 2, False, NAN, NAN, -1, NAN),
        ("2-30-640x360", 3, True, 0.75, 0.0, 4, 0.7),
    ]
    paths = write_toy(tmp_path, test, "frame-lines", "image_location,valence,arousal")
    files = blend_run(paths, out_dir=tmp_path / "out", progress=False, options=EXACT, report=False)
    by_name = {p.name: p.read_text() for p in files.submission_files}
    assert by_name["VA_predictions.txt"] == (
        "image_location,valence,arousal\n"
        "2-30-640x360/00001.jpg,0.250000,0.500000\n"
        "2-30-640x360/00002.jpg,0.500000,0.250000\n"
        "2-30-640x360/00003.jpg,0.750000,0.000000\n"
    )
    assert by_name["EXPR_predictions.txt"] == (
        "image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n"
        "2-30-640x360/00001.jpg,4\n2-30-640x360/00002.jpg,4\n2-30-640x360/00003.jpg,4\n"
    )
    assert by_name["AU_predictions.txt"].splitlines()[2] == "2-30-640x360/00002.jpg," + ",".join(
        ["1"] * 12
    )


def test_abaw3_per_video_files_cover_every_frame(tmp_path):
    # frame 3 is not listed at all and frame 2 has no image: both interpolated
    test = [
        ("10-60-1280x720_right", 1, True, 0.0, 0.0, 1, 0.1),
        ("10-60-1280x720_right", 2, False, NAN, NAN, -1, NAN),
        ("10-60-1280x720_right", 4, True, 0.3, -0.3, 1, 0.1),
        ("v2", 2, True, 0.5, 0.5, 6, 0.9),
    ]
    paths = write_toy(tmp_path, test, "video-names", None)
    result = blend_run(paths, out_dir=tmp_path / "out", progress=False, options=EXACT, report=False)
    va = tmp_path / "out" / "VA" / "10-60-1280x720_right.txt"
    assert va.read_text() == (
        "valence,arousal\n0.000000,0.000000\n0.100000,-0.100000\n"
        "0.200000,-0.200000\n0.300000,-0.300000\n"
    )
    assert (tmp_path / "out" / "EXPR" / "v2.txt").read_text() == (
        "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n6\n6\n"
    )
    assert len(result.submission_files) == 6
    manifest = pd.read_parquet(paths.manifest)
    assert validate_video_folder(tmp_path / "out" / "VA", manifest) == []
    va.write_text(va.read_text().replace("0.100000,-0.100000\n", "0.1,x\n"))
    (tmp_path / "out" / "VA" / "v2.txt").unlink()
    found = validate_video_folder(tmp_path / "out" / "VA", manifest)
    assert [(name, p.line) for name, p in found] == [(va.name, 3), ("v2.txt", 0)]
    assert "arousal 'x'" in found[0][1].message


def test_validate_accepts_written_file_and_reports_each_problem(tmp_path):
    paths = write_toy(tmp_path, ABAW4_TEST, "mtl", MTL_SUBMISSION_HEADER)
    result = blend_run(
        paths,
        out_dir=tmp_path / "out",
        progress=False,
        options=EXACT,
        report=False,
        max_filled=0.2,
    )
    manifest = pd.read_parquet(paths.manifest)
    good = result.submission_files[0]
    assert validate_file(good, manifest) == []
    lines = good.read_text().splitlines()
    lines[1] = lines[1].replace("0.100000", "1.500000")  # VA out of range
    lines[2] = lines[2].replace(",5,", ",5.0,")  # expression not an integer
    lines[3] = lines[3].replace("video45_1/00017", "video45_1/00018")  # wrong order / key
    lines[4] = lines[4][:-1] + "2"  # AU not 0/1
    lines[5] = lines[5][: lines[5].rindex(",")]  # a field missing
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(lines[:-1]) + "\n")  # and the last line missing
    problems = validate_file(bad, manifest)
    found = {(p.line, p.message.split()[0]) for p in problems}
    assert (2, "valence") in found
    assert (3, "expression") in found
    assert (4, "image") in found
    assert (5, "AU") in found
    assert (6, "15") in found  # "15 fields, expected 16"
    assert any(p.line == 7 and "missing" in p.message for p in problems)
    assert len(problems) == 6


def test_validate_flags_header_and_extra_lines(tmp_path):
    paths = write_toy(tmp_path, ABAW4_TEST, "mtl", MTL_SUBMISSION_HEADER)
    manifest = pd.read_parquet(paths.manifest)
    text = ABAW4_EXPECTED.replace(MTL_SUBMISSION_HEADER, "image,valence,arousal")
    bad = tmp_path / "bad.txt"
    bad.write_text(text + text.splitlines()[1] + "\n")
    problems = validate_file(bad, manifest, TASKS)
    assert problems[0].line == 1 and "header" in problems[0].message
    assert problems[-1].line == 8 and "extra" in problems[-1].message


def test_validate_submission_cli_exit_codes(tmp_path):
    paths = write_toy(tmp_path, ABAW4_TEST, "mtl", MTL_SUBMISSION_HEADER)
    good = tmp_path / "good.txt"
    good.write_text(ABAW4_EXPECTED)
    bad = tmp_path / "bad.txt"
    bad.write_text(ABAW4_EXPECTED.replace(",7,", ",9,"))
    runner = CliRunner()
    args = ["--cache-dir", str(tmp_path), "validate-submission", "--dataset", "toy"]
    ok = runner.invoke(cli, [*args, str(good)])
    assert ok.exit_code == 0, ok.output
    failed = runner.invoke(cli, [*args, str(bad)])
    assert failed.exit_code == 2
    assert "line 2: expression '9'" in failed.output
    assert paths.manifest.exists()


def test_a_manifest_naming_an_unknown_style_is_refused_without_a_traceback(tmp_path):
    """A manifest's test list (local, but a file like any other) names a style no one
    registered: blend exits 2 naming it and the registered ones."""
    paths = write_toy(tmp_path, ABAW4_TEST, "no-such-style", None)
    result = CliRunner().invoke(cli, ["--cache-dir", str(tmp_path), "blend", "-d", "toy"])
    assert result.exit_code != 0 and isinstance(result.exception, InputError)
    assert "unknown submission style 'no-such-style'" in str(result.exception)
    assert "mtl" in str(result.exception) and paths.manifest.exists()

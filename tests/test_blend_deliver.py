"""What `pipeline blend` delivers: the requested submission or exit 1 naming what is
missing (issue 9.3/9.4), the best single candidate when the blend cross-fits worse (9.6),
per-task test lists of one dataset (`test_lists`), and blend.json committed with the files
it describes (issue 15.9)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from test_submission import EXACT, NAN, write_toy

from affectpipe import predictions
from affectpipe.blend import runner, synthetic
from affectpipe.blend.runner import run as blend_run
from affectpipe.blend.tuning import BlendOptions
from affectpipe.config import DatasetPaths
from affectpipe.manifest import read_manifest_metadata, write_manifest
from affectpipe.schema import MTL_SUBMISSION_HEADER
from affectpipe.submission.checks import (
    blend_record_warnings,
    constant_columns,
    validate_file,
    validate_video_folder,
)


@pytest.mark.slow
def test_mtl_dataset_without_va_predictions_writes_task_files_and_exits_1(tmp_path):
    # An OpenFace-only cache: heads trained EXPR and AU candidates, none for VA.
    paths = synthetic.write_synthetic_run(DatasetPaths.of(tmp_path, "synth"), n_candidates=1)
    shutil.rmtree(paths.run() / "preds" / "va")
    out = tmp_path / "sub"
    args = ["--cache-dir", tmp_path, "blend", "-d", "synth", "--out", out, "--no-report"]
    result = run_cli(*args)
    assert result.returncode == 1, result.stderr
    assert "error: the submission the test list asks for was not written" in result.stderr
    assert "MTL_predictions.txt: va: no predictions under" in result.stderr
    assert "trained no va candidate" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["AU_predictions.txt", "EXPR_predictions.txt"]
    document = json.loads((paths.blend_dir() / "blend.json").read_text())
    assert document["submission"]["missing"].keys() == {"MTL_predictions.txt"}
    accepted = run_cli(*args, "--partial")
    assert accepted.returncode == 0, accepted.stderr
    assert "not written (--partial): MTL_predictions.txt: va: no predictions" in accepted.stderr


# Test images the indexer did not find (another folder): no image, no prediction anywhere.
UNSEEN_TEST = [(video, frame, False, NAN, NAN, -1, NAN) for video in "ab" for frame in (1, 2, 3)]


@pytest.mark.slow
def test_test_rows_filled_with_the_prior_are_refused_with_counts(tmp_path):
    write_toy(tmp_path, UNSEEN_TEST, "mtl", MTL_SUBMISSION_HEADER)
    out = tmp_path / "out"
    args = ["--cache-dir", tmp_path, "blend", "-d", "toy", "--out", out, "--no-report"]
    refused = run_cli(*args, "--no-smoothing")
    assert refused.returncode == 1, refused.stderr
    assert (
        "va: 6 of its 6 listed test rows (100.0%) have no real prediction (0 interpolated, "
        "0 without an image file, 6 the training prior), over the limit of 5% (--max-filled)"
    ) in refused.stderr
    assert not out.exists() or not any(out.iterdir())  # every task refused: nothing written
    forced = run_cli(*args, "--no-smoothing", "--max-filled", "1")
    assert forced.returncode == 0, forced.stderr
    submission = out / "MTL_predictions.txt"
    checked = run_cli("--cache-dir", tmp_path, "validate-submission", "-d", "toy", submission)
    assert checked.returncode == 0, checked.stderr  # well-formed ...
    assert "warning: column valence is '0.100000' on all 6 lines" in checked.stderr  # ... but
    assert "column expression is '4' on all 6 lines" in checked.stderr


def test_fill_limit_spares_imageless_frames_of_per_task_lists_only(tmp_path):
    # ABAW5 lists ask for every frame, also frames without an image: filling those is normal.
    test = [
        ("2-30-640x360", 1, True, 0.25, 0.5, 4, 0.9),
        ("2-30-640x360", 2, False, NAN, NAN, -1, NAN),
        ("2-30-640x360", 3, True, 0.75, 0.0, 4, 0.7),
    ]
    header = "image_location,valence,arousal"
    paths = write_toy(tmp_path / "a", test, "frame-lines", header)
    result = blend_run(
        paths, out_dir=tmp_path / "a" / "out", progress=False, options=EXACT, report=False
    )
    assert result.complete
    assert result.outcomes["va"].fill == runner.FillCounts(3, 0, 1, 0)
    # The same gap where the image exists (no face found, say): a third of the list unpredicted.
    test[1] = ("2-30-640x360", 2, True, NAN, NAN, -1, NAN)
    paths = write_toy(tmp_path / "b", test, "frame-lines", header)
    result = blend_run(
        paths, out_dir=tmp_path / "b" / "out", progress=False, options=EXACT, report=False
    )
    assert set(result.missing) == {
        "VA_predictions.txt",
        "EXPR_predictions.txt",
        "AU_predictions.txt",
    }
    assert "1 of its 3 listed test rows (33.3%)" in result.missing["VA_predictions.txt"]
    assert result.submission_files == [] and result.shortfall(partial=True)
    lenient = blend_run(
        paths,
        out_dir=tmp_path / "b" / "out",
        progress=False,
        options=EXACT,
        report=False,
        max_filled=0.4,
    )
    assert lenient.complete and len(lenient.submission_files) == 3


def test_constant_columns_are_flagged():
    rows = [["0.1", "0.5", "4"], ["0.2", "0.5", "4"], ["0.3", "0.5", "4"]]
    assert constant_columns([r[:2] for r in rows], ("va",)) == [
        "column arousal is '0.5' on all 3 lines: a constant, not predictions (a training "
        "prior or a default?)"
    ]
    assert constant_columns([r[2:] for r in rows], ("expr",))[0].startswith(
        "column expression is '4'"
    )
    assert constant_columns([["0.1", "0.5"]], ("va",)) == []  # one line says nothing


@pytest.mark.slow
def test_blend_cross_fitting_below_the_best_single_candidate_is_not_used(tmp_path):
    # Seed 1 of this small synthetic EXPR task: tuning the mix overfits the validation videos.
    paths = synthetic.write_synthetic_run(
        DatasetPaths.of(tmp_path, "synth"), n_rows=600, n_videos=10, n_candidates=5, seed=1
    )
    args = ["--cache-dir", tmp_path, "blend", "-d", "synth", "--task", "expr", "--partial"]
    result = run_cli(*args, "--no-smoothing")
    assert result.returncode == 0, result.stderr
    document = json.loads((paths.blend_dir() / "blend.json").read_text())
    expr = document["tasks"]["expr"]
    blend_cf, single_cf = (expr["alternatives"][k]["crossfit"] for k in ("blend", "single"))
    assert single_cf > blend_cf
    assert expr["choice"] == "single" and expr["crossfit_score"] == single_cf
    assert len(expr["weights"]["expression"]) == 1  # one candidate, weight 1
    assert (
        f"expr: the cross-fitted blend ({blend_cf:.4f}) does not score above the cross-fitted "
        f"best single candidate ({single_cf:.4f}): the submission uses "
    ) in result.stdout
    assert "(--prefer blend to override)" in result.stdout
    report = (paths.blend_dir() / "report.html").read_text()
    assert "Submission uses the best single candidate." in report
    kept = blend_run(
        paths,
        tasks=["expr"],
        progress=False,
        report=False,
        options=BlendOptions(smoothing=False, prefer="blend"),
    )
    outcome = kept.outcomes["expr"]
    assert outcome.choice == "blend" and "as --prefer blend asks" in outcome.choice_note
    assert outcome.crossfit_score == pytest.approx(blend_cf)


@pytest.mark.slow
def test_report_shows_support_tables_and_provenance(tmp_path):
    paths = synthetic.write_synthetic_run(DatasetPaths.of(tmp_path, "synth"), n_candidates=2)
    manifest = pd.read_parquet(paths.manifest)
    manifest.loc[manifest["split"] == "val", "au15"] = 0  # no positive AU15 in validation
    write_manifest(manifest, paths.manifest, read_manifest_metadata(paths.manifest))
    paths.features_dir.mkdir(parents=True)
    with h5py.File(paths.features("openface"), "w") as handle:
        handle.attrs["backbone"] = "openface"
        handle.attrs["weights_sha256"] = "f00dfeed" * 8
    result = blend_run(paths, progress=False)
    text = result.report.read_text()
    assert (
        "AU: no positives in validation for au15: their F1 is 0 by definition and says "
        "nothing" in text
    )
    for header in (
        "train support",
        "val support",
        "F1 tuned",
        "F1 cross-fitted",
        "CCC cross-fitted",
        "<th>thresholds</th>",
        "<th>offsets</th>",
        "<th>scale</th>",
        "<th>shift</th>",
        "weight (valence)",
    ):
        assert header in text
    assert "{&#x27;" not in text and "{'" not in text  # tables, not dict reprs
    for item in (
        "date (UTC)",
        "command",
        "torch version",
        "affectpipe version",
        "manifest fingerprint",
        "f00dfeed" * 8,
        "prediction file sha256",
    ):
        assert item in text
    document = json.loads(result.blend_json.read_text())
    provenance = document["provenance"]
    assert provenance["features"]["openface"]["weights_sha256"] == "f00dfeed" * 8
    assert set(provenance["predictions"]["va"]) == {"cand0", "cand1"}
    au = document["tasks"]["au"]
    assert au["support"]["val"]["au15"] == 0 and au["support"]["train"]["au15"] > 0
    assert set(au["validation_crossfit"]["f1_per_au"]) == set(au["validation"]["f1_per_au"])


def _sha_of_record(json_path: Path) -> dict[str, str]:
    entries = json.loads(json_path.read_text())["submission_files"]
    return {Path(e["path"]).name: e["sha256"] for e in entries}


@pytest.mark.slow
def test_blend_json_is_committed_with_the_submission_it_describes(tmp_path, monkeypatch):
    from affectpipe.fsutil import sha256_file

    paths = synthetic.write_synthetic_run(DatasetPaths.of(tmp_path, "synth"), n_candidates=1)
    first = blend_run(paths, progress=False, report=False)
    mtl = first.submission_files[0]
    recorded = _sha_of_record(first.blend_json)
    assert recorded == {mtl.name: sha256_file(mtl)}
    assert blend_record_warnings(paths.root / "runs", mtl) == []
    # New predictions, then a blend killed right before blend.json is written.
    pred = paths.preds("default", "va", "cand0")
    frame = pd.read_parquet(pred)
    frame.loc[frame["split"] == "test", ["valence", "arousal"]] *= 0.5
    metadata = pq.read_schema(pred).metadata  # keep the contract's metadata: only rows change
    pq.write_table(pa.Table.from_pandas(frame).replace_schema_metadata(metadata), pred)

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(runner, "write_text_atomic", killed)
        with pytest.raises(KeyboardInterrupt):
            blend_run(paths, progress=False, report=False)
    assert mtl.exists() and sha256_file(mtl) != recorded[mtl.name]  # the new submission ...
    assert not first.blend_json.exists()  # ... never beside the previous run's record
    assert "no blend.json under" in blend_record_warnings(paths.root / "runs", mtl)[0]
    # A partial rerun removes the old MTL file it recorded and records only what it wrote.
    again = blend_run(paths, progress=False, report=False)
    partial = blend_run(paths, tasks=["va"], progress=False, report=False)
    assert not mtl.exists() and again.blend_json == partial.blend_json
    va = partial.submission_files[0]
    assert _sha_of_record(partial.blend_json) == {"VA_predictions.txt": sha256_file(va)}
    va.write_text(va.read_text().replace("0", "1", 1))
    assert "differs from the file" in blend_record_warnings(paths.root / "runs", va)[0]


def _with_test_lists(paths: DatasetPaths, lists: dict[str, tuple[str, str | None, int]]) -> None:
    """Turn write_toy's single test list into per-task lists over consecutive test rows, as if
    the dataset had been indexed that way (the recorded fingerprint, which the predictions
    were made from, stays)."""
    manifest = pd.read_parquet(paths.manifest)
    metadata = read_manifest_metadata(paths.manifest)
    metadata["fingerprint"] = predictions.manifest_fingerprint(paths.manifest)
    start = int(np.flatnonzero(manifest["split"] == "test")[0])
    metadata["format"] = "abaw-tasks"
    metadata["test_list"] = None
    metadata["test_lists"] = {}
    for task, (style, header, n) in lists.items():
        metadata["test_lists"][task] = {
            "path": f"{task}.txt",
            "sha256": "0",
            "style": style,
            "header": header,
            "trailing_comma": style == "frame-lines",
            "rows": [start, start + n],
        }
        start += n
    write_manifest(manifest, paths.manifest, metadata)


def test_per_task_test_lists_of_one_dataset_give_three_files(tmp_path):
    va_rows = [("2-30-640x360", f, True, 0.1 * f, -0.1 * f, 1, 0.9) for f in (1, 2, 3)]
    expr_rows = [("14-30-1920x1080", f, True, 0.0, 0.0, f % 8, 0.2) for f in (1, 2, 3, 4)]
    au_rows = [
        ("2-30-640x360", f, True, 0.1 * f, -0.1 * f, 1, 0.9 - 0.6 * (f == 3)) for f in (2, 3)
    ]  # the same frames as in the VA list: keys repeat
    paths = write_toy(tmp_path, va_rows + expr_rows + au_rows, "frame-lines", None)
    _with_test_lists(
        paths,
        {
            "va": ("frame-lines", "image_location,valence,arousal", 3),
            "expr": ("video-names", None, 4),
            "au": ("frame-lines", None, 2),
        },
    )
    out = tmp_path / "out"
    result = blend_run(paths, out_dir=out, progress=False, options=EXACT, report=False)
    assert result.complete, result.missing
    assert result.requested == ["VA_predictions.txt", "EXPR/", "AU_predictions.txt"]
    assert (out / "VA_predictions.txt").read_text() == (
        "image_location,valence,arousal\n2-30-640x360/00001.jpg,0.100000,-0.100000\n"
        "2-30-640x360/00002.jpg,0.200000,-0.200000\n2-30-640x360/00003.jpg,0.300000,-0.300000\n"
    )
    assert (out / "EXPR" / "14-30-1920x1080.txt").read_text().splitlines()[1:] == [
        "1",
        "2",
        "3",
        "4",
    ]
    assert (out / "AU_predictions.txt").read_text().splitlines()[1:] == [
        "2-30-640x360/00002.jpg," + ",".join(["1"] * 12),
        "2-30-640x360/00003.jpg," + ",".join(["0"] * 12),
    ]
    manifest = pd.read_parquet(paths.manifest)
    metadata = read_manifest_metadata(paths.manifest)
    assert validate_file(out / "VA_predictions.txt", manifest, metadata=metadata) == []
    assert validate_file(out / "AU_predictions.txt", manifest, metadata=metadata) == []
    assert validate_video_folder(out / "EXPR", manifest, metadata=metadata) == []
    # Without AU predictions the AU file is named as missing; the other two are written.
    shutil.rmtree(paths.run() / "preds" / "au")
    result = blend_run(paths, out_dir=out, progress=False, options=EXACT, report=False)
    assert list(result.missing) == ["AU_predictions.txt"]
    assert {p.name for p in result.submission_files} == {
        "VA_predictions.txt",
        "14-30-1920x1080.txt",
    }
    assert not (out / "AU_predictions.txt").exists()  # the previous run's file went with it


def test_report_draws_time_series_for_videos_and_none_for_photo_collections():
    from types import SimpleNamespace

    from affectpipe.blend.report import MIN_TRACE_ROWS, trace_videos

    labels = np.arange(40) % 8
    photos = SimpleNamespace(task="expr", val_labels=labels, val_videos=np.arange(40) // 2)
    assert trace_videos(photos) is None  # 2 photos per person: no time in their order
    clips = SimpleNamespace(
        task="expr", val_labels=labels, val_videos=np.arange(40) // (2 * MIN_TRACE_ROWS)
    )
    clips.val_labels = np.where(clips.val_videos == 1, -1, labels)  # video 1 unlabelled
    assert list(trace_videos(clips)) == [0, 2, 3]

"""`blend.run` and `pipeline blend` end to end on a synthetic run: json, report, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from affectpipe.blend import synthetic
from affectpipe.blend.runner import run as blend_run
from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.manifest import read_manifest_metadata, write_manifest
from affectpipe.schema import MTL_SUBMISSION_HEADER


def write_synthetic_run(root: Path, n_candidates: int = 3) -> DatasetPaths:
    return synthetic.write_synthetic_run(DatasetPaths.of(root, "synth"), n_candidates=n_candidates)


@pytest.fixture(scope="module")
def blended(tmp_path_factory):
    paths = write_synthetic_run(tmp_path_factory.mktemp("blend"))
    return paths, blend_run(paths, progress=False)


def test_blend_improves_on_best_candidate_and_records_every_choice(blended):
    paths, result = blended
    document = json.loads(result.blend_json.read_text())
    assert set(document["tasks"]) == {"va", "expr", "au"}
    for info in document["tasks"].values():
        assert set(info["candidates"]) == {"cand0", "cand1", "cand2"}
        assert info["stage_scores"]["smoothing"] > max(info["candidate_scores"].values())
        assert info["crossfit_folds"] == 3 and np.isfinite(info["crossfit_score"])
        assert info["smoothing"]["half_width"] > 0
        assert "tuned and scored on the same rows" in info["data"]["tuned"]
        for group in info["weights"].values():  # each group's weights form a mixture
            assert sum(group.values()) == pytest.approx(1.0)
    assert len(document["tasks"]["au"]["thresholds"]["thresholds"]) == 12
    p = document["p_mtl"]
    assert p["tuned"] == pytest.approx(sum(s["tuned"] for s in document["scores"].values()))
    assert p["tuned"] > p["best_single"]


def test_submission_has_one_line_per_test_row(blended):
    paths, result = blended
    manifest = pd.read_parquet(paths.manifest)
    lines = result.submission_files[0].read_text().splitlines()
    test_images = manifest.loc[manifest["split"] == "test", "image"].tolist()
    assert lines[0] == MTL_SUBMISSION_HEADER
    assert [line.split(",")[0] for line in lines[1:]] == test_images
    assert all(len(line.split(",")) == 16 for line in lines[1:])


def test_report_is_self_contained(blended):
    _, result = blended
    text = result.report.read_text()
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", text)
    assert "http://" not in text and "https://" not in text
    # per task: its scores plot and the submitted blend along validation videos
    assert text.count("data:image/png;base64,") == 6
    assert "P_MTL" in text and "cross-fitted" in text


@pytest.mark.slow
def test_blend_cli_without_the_mtl_file_exits_1_unless_partial(tmp_path):
    paths = write_synthetic_run(tmp_path, n_candidates=2)
    args = ["--cache-dir", tmp_path, "blend", "--dataset", "synth", "--task", "va"]
    args += ["--no-smoothing", "--out", tmp_path / "sub"]
    result = run_cli(*args)
    assert result.returncode == 1, result.stderr
    assert re.search(
        r"^va\s+[-0-9.]+\s+[-0-9.]+\s+[-0-9.]+\s+[-0-9.]+\s+(blend|single)$", result.stdout, re.M
    )
    # the MTL file needs all three tasks: the VA file is written instead, and that is said
    assert "MTL_predictions.txt: expr: not blended (only --task va asked)" in result.stderr
    assert "written instead: VA_predictions.txt (--partial accepts them)" in result.stderr
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["VA_predictions.txt"]
    assert (paths.blend_dir() / "report.html").exists()
    document = json.loads((paths.blend_dir() / "blend.json").read_text())
    assert document["submission"]["complete"] is False
    partial = run_cli(*args, "--partial")
    assert partial.returncode == 0, partial.stderr
    assert "not written (--partial): MTL_predictions.txt" in partial.stderr


def test_stale_or_missing_predictions_are_input_errors(tmp_path):
    paths = write_synthetic_run(tmp_path, n_candidates=1)
    pred = paths.preds("default", "va", "cand0")
    frame = pd.read_parquet(pred)
    frame.loc[0, "image"] = "other/00001.jpg"
    metadata = pq.read_schema(pred).metadata  # keep the contract's metadata: only rows change
    pq.write_table(pa.Table.from_pandas(frame).replace_schema_metadata(metadata), pred)
    with pytest.raises(InputError, match="stale"):
        blend_run(paths, tasks=["va"], progress=False, report=False)
    table = pa.Table.from_pandas(frame.drop(columns=["valence"]))
    pq.write_table(table.replace_schema_metadata(metadata), pred)
    with pytest.raises(InputError, match=r"lacks columns \['valence'\]"):
        blend_run(paths, tasks=["va"], progress=False, report=False)
    with pytest.raises(InputError, match="run `pipeline heads`"):
        blend_run(paths, run="nothing", progress=False, report=False)


def test_task_without_validation_labels_is_skipped_unless_requested(tmp_path):
    paths = write_synthetic_run(tmp_path, n_candidates=1)
    manifest = pd.read_parquet(paths.manifest)
    manifest["expression"] = manifest["expression"].where(manifest["split"] != "val", -1)
    write_manifest(manifest, paths.manifest, read_manifest_metadata(paths.manifest))
    result = blend_run(paths, progress=False, report=False)
    assert set(result.outcomes) == {"va", "au"}
    assert any("skipped: task expr" in w for w in result.warnings)
    assert result.missing == {
        "MTL_predictions.txt": "expr: task expr: no labelled validation rows to tune the blend on"
    }
    assert [p.name for p in result.submission_files] == ["VA_predictions.txt", "AU_predictions.txt"]
    with pytest.raises(InputError, match="no labelled validation rows"):
        blend_run(paths, tasks=["expr"], progress=False, report=False)


def test_random_init_features_are_flagged_in_the_report(tmp_path):
    import h5py

    paths = write_synthetic_run(tmp_path, n_candidates=1)
    paths.features_dir.mkdir(parents=True)
    with h5py.File(paths.features("ddamfn"), "w") as handle:
        handle.attrs["backbone"] = "ddamfn"
        handle.attrs["random_init"] = True
    with h5py.File(paths.features("openface"), "w") as handle:
        handle.attrs["backbone"] = "openface"
    result = blend_run(paths, tasks=["va"], progress=False)
    assert "RANDOM-INIT FEATURES (ddamfn)" in result.report.read_text()
    assert json.loads(result.blend_json.read_text())["notes"][0].startswith("RANDOM-INIT")

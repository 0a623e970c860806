"""`pipeline run --config FILE` through the real CLI: one TOML drives every stage.

A tiny real-face dataset (36 photos) is indexed, extracted (the OpenFace-style descriptor:
no weights needed), trained and blended from the file's [run] and [heads] tables alone; an
option on the command line wins over the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli

pytestmark = pytest.mark.slow


def test_run_takes_every_stage_from_one_toml(realfaces_dir: Path, tmp_path: Path):
    labels = pd.read_csv(realfaces_dir / "labels.csv")
    labels = labels.iloc[:: len(labels) // 36].head(36).reset_index(drop=True)
    labels["split"] = ["train", "train", "val", "test"] * 9
    labels["video"] = labels["image"]
    labels.loc[labels["split"] == "test", "expression"] = -1
    data = tmp_path / "data"
    data.mkdir()
    labels[["image", "expression", "split", "video"]].to_csv(data / "labels.csv", index=False)
    (data / "images").symlink_to(realfaces_dir / "images")
    config = tmp_path / "pipeline.toml"
    config.write_text(
        f'[run]\ndataset = "faces"\ndata = "{data}"\nformat = "csv"\n'
        f'backbones = ["openface"]\ntasks = ["expr"]\nworkers = 0\nbatch_size = 8\n'
        f'out = "{tmp_path / "sub"}"\nprogress = false\n'
        '[heads]\nmodels = ["linear", "mlp"]\ntemporal = false\n'
    )
    cache = tmp_path / "cache"
    result = run_cli("--cache-dir", cache, "run", "--config", config, "--run", "cli-wins")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "sub" / "EXPR_predictions.txt").is_file()
    features = cache / "faces" / "features"
    assert sorted(p.name for p in features.glob("*.h5")) == ["openface.h5"]
    run = cache / "faces" / "runs" / "cli-wins"  # --run on the command line beat the default
    trained = sorted(p.stem for p in (run / "preds").rglob("*.parquet"))
    assert {p.parent.name for p in (run / "preds").rglob("*.parquet")} == {"expr"}
    assert {name.split("__")[-1] for name in trained} == {"linear", "mlp"}  # from [heads]
    blend = json.loads((run / "blend" / "blend.json").read_text())
    assert set(blend["tasks"]) == {"expr"}

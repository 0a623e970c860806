"""A dataset without validation rows (a CSV without a split column, as realfaces-smile ships):
`index` says so and how to make them, `heads` and `blend` refuse with that message (exit 2,
no traceback), the Python API raises the same error, and the command it names works."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli

from affectpipe import DatasetPaths, train_heads, tune_blend
from affectpipe.errors import InputError, NoValidationError

pytestmark = pytest.mark.slow


def test_a_csv_without_split_asks_for_validation_rows(realfaces_dir: Path, tmp_path: Path):
    labels = pd.read_csv(realfaces_dir / "labels.csv").iloc[::8]  # 50 photos, both classes
    labels.to_csv(tmp_path / "labels.csv", index=False)
    os.symlink(realfaces_dir / "images", tmp_path / "images")
    cache = tmp_path / "cache"

    def cli(*args, check=False):
        return run_cli("--cache-dir", cache, *args, check=check)

    indexed = cli("index", tmp_path / "labels.csv", "--format", "csv", "--name", "smile")
    assert indexed.returncode == 0, indexed.stderr
    assert "no validation rows" in indexed.stdout
    assert "--val-fraction" in indexed.stdout and "--video-column" in indexed.stdout
    cli("extract", "--dataset", "smile", "--backbones", "openface", "--workers", "0", check=True)

    for args in (
        ("heads", "--dataset", "smile"),
        ("heads", "--dataset", "smile", "--task", "expr"),
        ("blend", "--dataset", "smile", "--no-report"),
    ):
        refused = cli(*args)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "has no validation rows" in refused.stderr, refused.stderr
        assert "--val-fraction 0.2 --video-column" in refused.stderr
        assert "Traceback" not in refused.stderr
    paths = DatasetPaths.of(cache, "smile")
    with pytest.raises(NoValidationError, match="no validation rows labelled for expr") as error:
        train_heads(paths, progress=False)
    assert isinstance(error.value, InputError)
    with pytest.raises(NoValidationError, match="--val-fraction"):
        tune_blend(paths, progress=False)

    # The fix the message names: whole people held out, then everything runs.
    cli(
        "index",
        tmp_path / "labels.csv",
        "--format",
        "csv",
        "--name",
        "smile",
        "--val-fraction",
        "0.2",
        "--video-column",
        "person",
        check=True,
    )
    cli("extract", "--dataset", "smile", "--backbones", "openface", "--workers", "0", check=True)
    cli("heads", "--dataset", "smile", check=True)
    blended = cli("blend", "--dataset", "smile", "--no-report")
    assert blended.returncode == 0, blended.stdout + blended.stderr

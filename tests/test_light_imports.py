"""Help and early errors answer without importing torch (issue 11.5)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

CHECK = """
import sys
from affectpipe.pipeline import main
sys.argv = ["pipeline", *{args!r}]
try:
    main()
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "torchvision", "timm", "sklearn", "h5py") if m in sys.modules)
print("EXIT", code, "HEAVY", ",".join(heavy))
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["predict", "--help"],
        ["run", "--help"],
        ["predict", "--dataset", "nope", "--out", "x.csv", "."],
        ["export-run", "--dataset", "nope", "--out", "x"],
    ],
)
def test_no_torch_for_help_and_a_missing_dataset(args: list[str], tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-c", CHECK.format(args=["--cache-dir", str(tmp_path), *args])],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO)},
    )
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("EXIT 0" if "--help" in args else "EXIT 2"), result.stderr
    assert last.split("HEAVY")[1].strip() == "", last


def test_the_package_exports_its_api_lazily():
    code = (
        "import sys, affectpipe; assert 'torch' not in sys.modules; "
        "print(sorted(affectpipe.__all__)); affectpipe.Predictor; affectpipe.tune_blend; "
        "affectpipe.extract_features; "
        "print(affectpipe.train_heads.__doc__ is not None)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(REPO)}
    )
    assert result.returncode == 0, result.stderr
    assert "Predictor" in result.stdout and "True" in result.stdout


# The extraction stage's modules: importing the package or its registry loads none of them.
STAGE_MODULES = (
    "assemble",
    "compute",
    "decode",
    "engine",
    "importers",
    "onnx_runtime",
    "plan",
    "results",
    "shards",
    "stage",
    "staleness",
    "store",
    "weights",
)


@pytest.mark.parametrize("module", ["affectpipe.extract.registry", "affectpipe.extract"])
def test_the_extract_registry_and_package_import_no_stage_module(module: str):
    code = (
        f"import sys, {module}\n"
        f"stage = [m for m in {STAGE_MODULES!r} if 'affectpipe.extract.' + m in sys.modules]\n"
        "heavy = [m for m in ('torch', 'torchvision', 'h5py', 'sklearn') if m in sys.modules]\n"
        "print('STAGE', stage, 'HEAVY', heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(REPO)}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "STAGE [] HEAVY []", result.stdout


def test_the_extract_package_resolves_its_api_on_first_use():
    import importlib

    import affectpipe.extract as api

    assert api.__all__ == sorted(api._LAZY)
    for name, module in api._LAZY.items():
        assert getattr(api, name) is getattr(importlib.import_module(module), name), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        api.nope  # noqa: B018


def test_predict_imports_only_the_extract_package():
    """predict uses the extraction stage's public API (`affectpipe.extract`), no module in it."""
    sources = sorted((REPO / "affectpipe" / "predict").rglob("*.py"))
    private = [
        f"{path.name}: {line.strip()}"
        for path in sources
        for line in path.read_text().splitlines()
        if "affectpipe.extract." in line
    ]
    assert sources and private == []

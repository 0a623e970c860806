"""End-to-end parity: `pipeline extract` on the fixture photos reproduces the official outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from affectpipe.config import DatasetPaths
from affectpipe.features import read_feature_file
from affectpipe.manifest import empty_manifest, write_manifest
from affectpipe.pipeline import cli

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def dev_features(fixtures_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> DatasetPaths:
    weights = {
        "mt-emotieffnet": fixtures_dir / "emotieffnet" / "enet_b0_8_va_mtl_calib.pt",
        "ddamfn": fixtures_dir / "ddamfn" / "ddamfn_affectnet8_calib.pth",
    }
    names = [str(n) for n in np.load(fixtures_dir / "ddamfn" / "ref_calib_dev.npz")["names"]]
    frame = empty_manifest(len(names))
    frame["image"] = names
    frame["video"] = "dev"
    frame["split"] = "val"
    frame["has_image"] = True
    paths = DatasetPaths.of(tmp_path_factory.mktemp("cache"), "dev")
    roots = {"val": str(fixtures_dir / "images" / "dev")}
    write_manifest(frame, paths.manifest, {"dataset": "dev", "image_roots": roots})
    args = ["--cache-dir", str(paths.root.parent), "extract", "--dataset", "dev"]
    args += ["--backbones", "mt-emotieffnet,ddamfn", "--batch-size", "5", "--workers", "1"]
    args += ["--runtime", "torch"]  # the ONNX runtime's parity: tests/test_onnx_runtime.py
    for name, path in weights.items():
        args += ["--weights", f"{name}={path}"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return paths


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backbone", "folder", "embedding_key"),
    [("mt-emotieffnet", "emotieffnet", "features"), ("ddamfn", "ddamfn", "embedding")],
)
def test_extract_reproduces_official_outputs(
    dev_features: DatasetPaths, fixtures_dir: Path, backbone: str, folder: str, embedding_key: str
) -> None:
    reference = np.load(fixtures_dir / folder / "ref_calib_dev.npz")
    features = read_feature_file(dev_features.features(backbone))
    assert list(features.images) == [str(n) for n in reference["names"]]
    assert features.ok.all()
    np.testing.assert_allclose(features.load("logits"), reference["logits"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(
        features.load("embedding"), reference[embedding_key], rtol=0, atol=TOLERANCE
    )
    attrs = features.attrs
    assert attrs["random_init"] is False and len(attrs["weights_sha256"]) == 64
    assert attrs["abaw_expr_index"] is not None and attrs["precision"] == "fp32"

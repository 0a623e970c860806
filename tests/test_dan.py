"""DAN: official state_dict layout, strict loading, parity through `pipeline extract`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image

from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.extract.backbones import get_backbone
from affectpipe.extract.weights import get_weights_entry
from affectpipe.features import read_feature_file
from affectpipe.manifest import empty_manifest, write_manifest

NAME = "dan"
RELATIVE_TOLERANCE = 1e-4  # per image, times max(1, max |reference row|): fixtures README


@pytest.fixture(scope="module")
def reference(fixtures_dir: Path) -> dict[str, np.ndarray]:
    return dict(np.load(fixtures_dir / "dan" / "ref_calib_dev.npz"))


@pytest.fixture(scope="module")
def checkpoint(fixtures_dir: Path) -> Path:
    return fixtures_dir / "dan" / "dan_affectnet8_calib.pth"


def relative_error(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Per row: max |a - b| / max(1, max |b|)."""
    scale = np.maximum(1.0, np.abs(expected).max(axis=1))
    return np.abs(actual - expected).max(axis=1) / scale


def test_state_dict_keys_and_shapes_equal_the_official_layout(fixtures_dir):
    layout = [
        line.split("\t")
        for line in (fixtures_dir / "dan" / "state_dict_layout.txt").read_text().splitlines()
        if line[:1] != "#"
    ]
    state = get_backbone(NAME).build().state_dict()
    assert list(state) == [key for _, key, _, _ in layout]
    for _, key, shape, _ in layout:
        assert str(tuple(state[key].shape)) == shape, key
    params = sum(v.numel() for k, v in state.items() if "running" not in k and "num_b" not in k)
    assert params == 19_724_248


def test_registry_entry():
    spec = get_backbone(NAME)
    assert (spec.input_size, spec.embedding_dim, len(spec.logit_names)) == (224, 512, 8)
    assert [spec.logit_names[i] for i in spec.abaw_expr_index] == [
        "neutral", "anger", "disgust", "fear", "happy", "sad", "surprise", "contempt",
    ]  # fmt: skip
    entry = get_weights_entry(NAME)
    assert entry.filename == "affecnet8_epoch5_acc0.6209.pth"
    assert entry.urls and entry.urls[0].startswith("https://drive.google.com/")


def test_preprocessing_equals_the_official_input(fixtures_dir, reference):
    spec = get_backbone(NAME)
    names = [str(n) for n in reference["names"][:12]]
    x = torch.stack(
        [spec.preprocess(Image.open(fixtures_dir / "images" / n).convert("RGB")) for n in names]
    )
    np.testing.assert_array_equal(x.numpy(), reference["input"])


def test_truncated_or_foreign_checkpoint_is_a_clear_error(tmp_path, checkpoint, fixtures_dir):
    spec = get_backbone(NAME)
    truncated = tmp_path / "truncated.pth"
    with open(checkpoint, "rb") as handle:
        truncated.write_bytes(handle.read(1_000_000))
    refused = r"refusing to load this weights file: not a readable zip archive \(truncated"
    with pytest.raises(InputError, match=refused) as info:
        spec.load(truncated)
    assert str(truncated) in str(info.value)
    foreign = fixtures_dir / "ddamfn" / "ddamfn_affectnet8_calib.pth"
    with pytest.raises(InputError, match="not a DAN AffectNet-8 checkpoint") as info:
        spec.load(foreign)
    assert str(foreign) in str(info.value)


@pytest.mark.slow
def test_extract_reproduces_the_official_outputs(fixtures_dir, reference, checkpoint, tmp_path):
    """All 268 reference photos through `pipeline extract` (a subprocess, BN folding on)."""
    names = [str(n) for n in reference["names"]]
    frame = empty_manifest(len(names))
    frame["image"] = names
    frame["video"] = [n.split("/")[0] for n in names]
    frame["split"] = "val"
    frame["has_image"] = True
    paths = DatasetPaths.of(tmp_path / "cache", "dan")
    roots = {"val": str(fixtures_dir / "images")}
    write_manifest(frame, paths.manifest, {"dataset": "dan", "image_roots": roots})
    run_cli(
        "--cache-dir", paths.root.parent, "extract", "--dataset", "dan", "--backbones", NAME,
        "--batch-size", "64", "--workers", "1", "--weights", f"{NAME}={checkpoint}",
        "--runtime", "torch",  # the ONNX runtime's parity: tests/test_onnx_runtime.py
        check=True,
    )  # fmt: skip
    features = read_feature_file(paths.features(NAME))
    assert list(features.images) == names and features.ok.all()
    embedding = relative_error(features.load("embedding"), reference["embedding"])
    logits = relative_error(features.load("logits"), reference["logits"])
    print(f"dan parity on {len(names)} images: max relative diff embedding "
          f"{embedding.max():.3g}, logits {logits.max():.3g}")  # fmt: skip
    assert embedding.max() <= RELATIVE_TOLERANCE
    assert logits.max() <= RELATIVE_TOLERANCE
    assert (features.load("logits").argmax(1) == reference["pred"]).mean() > 0.99
    attrs = features.attrs
    assert attrs["random_init"] is False and attrs["weights_name"] == "dan_affectnet8"

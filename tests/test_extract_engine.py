"""Extraction engine mechanics with a tiny registered backbone: contract, odd images, resume,
skip/change detection, shards, descriptors and the CLI."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from affectpipe import extract
from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.extract import decode, registry
from affectpipe.extract.backbones import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec
from affectpipe.extract.rawrows import Finalized
from affectpipe.features import decode_attrs, read_feature_file
from affectpipe.manifest import empty_manifest, write_manifest
from affectpipe.pipeline import cli

TINY = "tiny-test"
# A parts folder: once it holds two committed chunks, forward stops there until the run is
# killed, so a test kills it part-way whatever the machine's load.
HOLD_ENV = "AFFECTPIPE_TEST_TINY_HOLD"


class TinyNet(torch.nn.Module):
    """Conv-BN-ReLU, pooled: embedding [N, 6]; linear logits [N, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(6)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hold = os.environ.get(HOLD_ENV)
        while hold and len(list(Path(hold).glob("chunk-*.npz"))) >= 2:
            time.sleep(0.1)
        embedding = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return embedding, self.fc(embedding)


def _load_tiny(path: Path) -> torch.nn.Module:
    model = TinyNet()
    model.load_state_dict(torch.load(path))
    return model


def register_tiny() -> BackboneSpec:
    if TINY not in registry.names():
        spec = BackboneSpec(
            name=TINY,
            input_size=16,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            embedding_dim=6,
            logit_names=("a", "b", "c"),
            abaw_expr_index=None,
            builder=TinyNet,
            loader=_load_tiny,
        )
        registry.register(registry.Backbone(TINY, "model", spec, registry.CNN_HEADS))
    from affectpipe.extract.backbones import get_backbone

    return get_backbone(TINY)


class MeanColour:
    """A toy descriptor: mean RGB; finalize centres on the mean of the ok train rows."""

    name = "toy-descriptor"
    raw_dim = 3

    def describe(self, rgb: np.ndarray) -> tuple[np.ndarray, bool]:
        return rgb.reshape(-1, 3).mean(axis=0).astype(np.float32), True

    def finalize_rows(self, rows, train_mask, scratch=None):
        centre = np.concatenate(list(rows.take(np.flatnonzero(rows.ok & train_mask)))).mean(0)

        def chunks():
            for start, raw in rows.blocks():
                ok = rows.ok[start : start + len(raw)]
                yield start, {"embedding": np.where(ok[:, None], raw - centre, 0), "ok": ok}

        attrs = {"centre": [float(c) for c in centre]}
        return Finalized(3, {"colour": [0, 3]}, attrs, chunks())


def make_images(root: Path, n_good: int = 14, seed: int = 0) -> list[str]:
    """Good JPEGs of odd sizes plus every awkward case; returns the keys in manifest order."""
    rng = np.random.default_rng(seed)
    keys = []
    for i in range(n_good):
        size = (int(rng.integers(8, 40)), int(rng.integers(8, 40)))
        pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        key = f"vid{i % 3}/{i:05d}.jpg"
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / key, quality=95)
        keys.append(key)
    odd = root / "odd"
    odd.mkdir(parents=True, exist_ok=True)
    grey = rng.integers(0, 256, (20, 20), dtype=np.uint8)
    Image.fromarray(grey, "L").save(odd / "grey.jpg")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).convert("CMYK").save(
        odd / "cmyk.jpg"
    )
    Image.fromarray(rng.integers(0, 256, (20, 20, 4), dtype=np.uint8), "RGBA").save(
        odd / "rgba.png"
    )
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
        odd / "png_named.jpg", format="PNG"
    )
    Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16)).save(odd / "wide.png")
    Image.fromarray(grey, "L").convert("P").save(odd / "palette.gif")
    (odd / "empty.jpg").write_bytes(b"")
    (odd / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    good = (root / keys[0]).read_bytes()
    (odd / "truncated.jpg").write_bytes(good[: len(good) // 2])
    names = ["grey.jpg", "cmyk.jpg", "rgba.png", "png_named.jpg", "wide.png", "palette.gif"]
    bad = ["empty.jpg", "corrupt.jpg", "truncated.jpg", "missing.jpg"]
    return keys + [f"odd/{n}" for n in names + bad]


BAD_KEYS = {"odd/empty.jpg", "odd/corrupt.jpg", "odd/truncated.jpg", "odd/missing.jpg", "test/none"}


def make_dataset(tmp_path: Path, name: str = "toy", **kwargs) -> DatasetPaths:
    """A manifest over `make_images` with repeated keys and a test row without an image."""
    root = tmp_path / "images"
    keys = make_images(root, **kwargs)
    rows = keys + keys[:3] + ["test/none"]  # repeated keys are extracted once
    frame = empty_manifest(len(rows))
    frame["image"] = rows
    frame["video"] = [k.split("/")[0] for k in rows]
    frame["frame"] = np.arange(len(rows))
    frame["split"] = ["train"] * 8 + ["val"] * (len(rows) - 9) + ["test"]
    frame["has_image"] = [k != "test/none" for k in rows]
    paths = DatasetPaths.of(tmp_path / "cache", name)
    roots = {split: str(root) for split in ("train", "val", "test")}
    write_manifest(frame, paths.manifest, {"dataset": name, "image_roots": roots})
    return paths


@pytest.fixture()
def tiny() -> BackboneSpec:
    return register_tiny()


@pytest.fixture()
def toy(tmp_path: Path) -> DatasetPaths:
    return make_dataset(tmp_path)


def run_tiny(paths: DatasetPaths, **kwargs):
    options = {"random_init": True, "workers": 0, "batch_size": 4, "chunk_rows": 8}
    return extract.run(paths, [TINY], progress=False, **{**options, **kwargs})


def arrays_of(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as handle:
        return {name: handle[name][...] for name in handle}


def attrs_of(path: Path) -> dict:
    with h5py.File(path, "r") as handle:
        return decode_attrs(handle.attrs)


# --- decoding -----------------------------------------------------------------------------


def test_load_rgb_handles_odd_files(tmp_path: Path) -> None:
    make_images(tmp_path, n_good=1)
    odd = tmp_path / "odd"
    for name in ("grey.jpg", "cmyk.jpg", "rgba.png", "png_named.jpg", "wide.png", "palette.gif"):
        image, reason = decode.load_rgb(odd / name)
        assert reason is None and image.mode == "RGB" and image.size == (20, 20), name
    grey, _ = decode.load_rgb(odd / "grey.jpg")
    pixels = np.asarray(grey)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    wide, _ = decode.load_rgb(odd / "wide.png")
    assert (np.asarray(wide) == 255).all()  # 16-bit full scale -> 255, not clipped garbage
    assert decode.load_rgb(odd / "empty.jpg") == (None, "empty file")
    assert decode.load_rgb(odd / "missing.jpg") == (None, "missing file")
    assert decode.load_rgb(None)[1].startswith("no image file")
    for name in ("corrupt.jpg", "truncated.jpg"):
        image, reason = decode.load_rgb(odd / name)
        assert image is None and reason.startswith("undecodable"), name


# --- the contract ---------------------------------------------------------------------------


def test_run_writes_the_feature_contract(toy: DatasetPaths, tiny: BackboneSpec) -> None:
    summary = run_tiny(toy)
    (report,) = summary.reports
    assert report.action == "extracted"
    features = read_feature_file(toy.features(TINY))
    frame_keys = list(dict.fromkeys(features.images))
    assert list(features.images) == frame_keys and len(features.images) == 25  # distinct
    bad = np.isin(features.images, list(BAD_KEYS))
    np.testing.assert_array_equal(features.ok, ~bad)
    embedding, logits = features.load("embedding"), features.load("logits")
    assert embedding.shape == (25, 6) and logits.shape == (25, 3)
    assert (embedding[bad] == 0).all() and (logits[bad] == 0).all()
    assert np.abs(embedding[~bad]).sum(axis=1).min() > 0
    attrs = features.attrs
    assert attrs["random_init"] is True and attrs["weights_sha256"] == "random-init"
    assert attrs["logit_names"] == ["a", "b", "c"] and attrs["precision"] == "fp32"
    assert attrs["failed_count"] == 5 and attrs["committed_rows"] == 25
    reasons = {f["image"]: f["reason"] for f in attrs["failed_images"]}
    assert set(reasons) == BAD_KEYS and reasons["odd/missing.jpg"] == "missing file"
    assert "5 failed" in summary.text() and "RANDOM weights" in summary.text()
    assert not list(toy.features_dir.glob(".*.parts"))  # parts removed after assembly

    # The engine's features equal the model applied to the official preprocessing directly.
    torch.manual_seed(0)
    model = tiny.build()
    root = Path(toy.manifest).parents[2] / "images"
    good = [i for i, k in enumerate(features.images) if not bad[i]]
    batch = torch.stack(
        [tiny.preprocess(decode.load_rgb(root / features.images[i])[0]) for i in good]
    )
    with torch.no_grad():
        expected_embedding, expected_logits = model(batch)
    np.testing.assert_allclose(embedding[good], expected_embedding.numpy(), atol=1e-5)
    np.testing.assert_allclose(logits[good], expected_logits.numpy(), atol=1e-5)


def test_workers_and_batch_sizes_agree(toy: DatasetPaths, tiny: BackboneSpec, tmp_path) -> None:
    run_tiny(toy)
    other = make_dataset(tmp_path / "b")
    run_tiny(other, workers=2, batch_size=7, chunk_rows=10, channels_last=False)
    a, b = arrays_of(toy.features(TINY)), arrays_of(other.features(TINY))
    np.testing.assert_array_equal(a["ok"], b["ok"])
    np.testing.assert_allclose(a["embedding"], b["embedding"], atol=1e-5)


def test_skip_when_complete_and_recompute_on_change(toy: DatasetPaths, tiny: BackboneSpec) -> None:
    run_tiny(toy)
    path = toy.features(TINY)
    mtime = path.stat().st_mtime_ns
    assert run_tiny(toy).reports[0].action == "skipped"
    assert path.stat().st_mtime_ns == mtime
    assert run_tiny(toy, force=True).reports[0].action == "extracted"
    assert run_tiny(toy, amp="bf16").reports[0].action == "extracted"  # precision changed
    assert attrs_of(path)["precision"] == "bf16"
    with h5py.File(path, "a") as handle:  # an older package version wrote this file
        handle.attrs["package_version"] = "0.0.1"
    assert run_tiny(toy, amp="bf16").reports[0].action == "extracted"
    # A changed image list (one more image) changes the fingerprint.
    before = attrs_of(path)["manifest_fingerprint"]
    from affectpipe.manifest import read_manifest, read_manifest_metadata

    frame = read_manifest(toy.manifest)
    metadata = read_manifest_metadata(toy.manifest)
    write_manifest(frame.iloc[:-2], toy.manifest, metadata)
    assert run_tiny(toy, amp="bf16").reports[0].action == "extracted"
    assert attrs_of(path)["manifest_fingerprint"] != before


def test_bf16_stays_close_to_fp32(toy: DatasetPaths, tiny: BackboneSpec) -> None:
    run_tiny(toy)
    fp32 = arrays_of(toy.features(TINY))["embedding"]
    run_tiny(toy, amp="bf16")
    bf16 = arrays_of(toy.features(TINY))["embedding"]
    assert 0 < np.abs(fp32 - bf16).max() < 0.1


# --- crash safety ---------------------------------------------------------------------------

KILLED_RUN = """
import sys
sys.path.insert(0, {tests!r})
import test_extract_engine as t
from affectpipe import extract
from affectpipe.config import DatasetPaths
t.register_tiny()
from pathlib import Path
extract.run(DatasetPaths(Path({root!r})), [t.TINY], random_init=True, workers=0, batch_size=2,
            chunk_rows=4, progress=False, runtime="torch")
"""


def test_resume_after_sigkill_equals_uninterrupted_run(
    toy: DatasetPaths, tiny: BackboneSpec, tmp_path: Path
) -> None:
    script = KILLED_RUN.format(tests=str(Path(__file__).parent), root=str(toy.root))
    parts = toy.features_dir / f".{TINY}.h5.parts"
    env = {**os.environ, HOLD_ENV: str(parts)}
    child = subprocess.Popen([sys.executable, "-c", script], env=env)
    # Wait on the run's progress, not the clock: the child holds after two committed chunks.
    started = time.monotonic()
    while len(list(parts.glob("chunk-*.npz"))) < 2:
        assert child.poll() is None, "the child finished before it could be killed"
        assert time.monotonic() - started < 600, "no two chunks committed in 10 minutes"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    committed = len(list(parts.glob("chunk-*.npz")))
    assert 2 <= committed < 7  # 25 rows in chunks of 4: killed part-way
    assert not toy.features(TINY).exists()  # nothing that looks complete
    with pytest.raises(InputError):
        read_feature_file(toy.features(TINY))

    # torch: TinyNet's hold is Python in its forward, which an exported graph does not keep
    options = {"random_init": True, "workers": 0, "batch_size": 2, "chunk_rows": 4}
    resumed = extract.run(toy, [TINY], **options, progress=False, runtime="torch")
    assert resumed.reports[0].action == "resumed"
    reference = make_dataset(tmp_path / "ref")
    extract.run(reference, [TINY], **options, progress=False, runtime="torch")
    got, want = arrays_of(toy.features(TINY)), arrays_of(reference.features(TINY))
    for name in ("embedding", "logits", "ok"):
        np.testing.assert_array_equal(got[name], want[name])
    assert attrs_of(toy.features(TINY)) == attrs_of(reference.features(TINY))


def test_stale_parts_are_not_resumed(toy: DatasetPaths, tiny: BackboneSpec) -> None:
    from affectpipe.extract.store import PartStore

    store = PartStore(toy.features(TINY), {"backbone": TINY, "other": "inputs"}, 25, 8)
    store.open()
    store.commit(0, {"ok": np.zeros(8, bool), "embedding": np.ones((8, 6), np.float32)})
    report = run_tiny(toy).reports[0]
    assert report.action == "extracted"
    assert arrays_of(toy.features(TINY))["ok"][:8].any()


def test_a_second_writer_is_refused(toy: DatasetPaths, tiny: BackboneSpec) -> None:
    from affectpipe.errors import AffectpipeError
    from affectpipe.fsutil import file_lock

    lock = toy.features_dir / f".{TINY}.h5.lock"
    with file_lock(lock), pytest.raises(AffectpipeError, match="locked"):
        run_tiny(toy)


# --- shards ---------------------------------------------------------------------------------


def test_shards_merge_into_the_single_run_file(
    toy: DatasetPaths, tiny: BackboneSpec, tmp_path: Path
) -> None:
    for i in (1, 2, 3):
        run_tiny(toy, shard=(i, 3))
    assert not toy.features(TINY).exists()
    shard_rows = [attrs_of(p)["shard_rows"] for p in sorted(toy.features_dir.glob("*.shard-*.h5"))]
    assert shard_rows == [[0, 8], [8, 16], [16, 25]]
    summary = extract.merge(toy, [TINY], progress=False)
    assert summary.reports[0].action == "merged"
    single = make_dataset(tmp_path / "single")
    run_tiny(single)
    got, want = arrays_of(toy.features(TINY)), arrays_of(single.features(TINY))
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    assert attrs_of(toy.features(TINY)) == attrs_of(single.features(TINY))


def test_merge_refuses_incomplete_or_mismatched_shards(
    toy: DatasetPaths, tiny: BackboneSpec
) -> None:
    run_tiny(toy, shard=(1, 2))
    with pytest.raises(InputError, match="2/2 are missing"):
        extract.merge(toy, [TINY], progress=False)
    run_tiny(toy, shard=(2, 2), amp="bf16")
    with pytest.raises(InputError, match="computed differently"):
        extract.merge(toy, [TINY], progress=False)
    run_tiny(toy, shard=(2, 2))
    run_tiny(toy, shard=(1, 3))
    with pytest.raises(InputError, match="several splittings"):
        extract.merge(toy, [TINY], progress=False)


def test_bad_shard_is_refused(toy: DatasetPaths, tiny: BackboneSpec) -> None:
    with pytest.raises(InputError, match="bad shard"):
        run_tiny(toy, shard=(3, 2))


# --- descriptors ----------------------------------------------------------------------------


@pytest.fixture()
def toy_descriptor() -> Iterator[str]:
    registry.register(registry.Backbone("toy-descriptor", "descriptor", MeanColour))
    yield "toy-descriptor"
    registry.unregister("toy-descriptor")


def test_descriptor_rows_are_finalized_on_train_rows(
    toy: DatasetPaths, tiny: BackboneSpec, toy_descriptor: str, tmp_path: Path
) -> None:
    summary = extract.run(
        toy,
        [TINY, toy_descriptor],
        random_init=True,
        workers=2,
        batch_size=4,
        chunk_rows=8,
        progress=False,
    )
    assert [r.action for r in summary.reports] == ["extracted", "extracted"]
    features = read_feature_file(toy.features(toy_descriptor))
    assert features.attrs["groups"] == {"colour": [0, 3]}
    colour = features.load("colour")
    bad = np.isin(features.images, list(BAD_KEYS))
    np.testing.assert_array_equal(features.ok, ~bad)
    assert (colour[bad] == 0).all()
    train = np.arange(len(colour)) < 8  # the first 8 manifest rows are train, all distinct
    np.testing.assert_allclose(colour[train & ~bad].mean(axis=0), 0, atol=1e-4)

    for i in (1, 2):
        extract.run(toy, [toy_descriptor], shard=(i, 2), workers=0, chunk_rows=8, progress=False)
    toy.features(toy_descriptor).unlink()
    extract.merge(toy, [toy_descriptor], progress=False)
    merged = arrays_of(toy.features(toy_descriptor))
    np.testing.assert_allclose(merged["embedding"], features.load("embedding"), atol=1e-5)
    assert attrs_of(toy.features(toy_descriptor))["centre"] == features.attrs["centre"]


# --- errors and CLI -------------------------------------------------------------------------


def test_missing_weights_fail_before_any_work(
    toy: DatasetPaths, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from affectpipe.extract import weights

    monkeypatch.setenv("AFFECTPIPE_HOME", str(tmp_path / "home"))
    for name, entry in list(weights.WEIGHTS.items()):
        offline = dataclasses.replace(entry, urls=(f"http://127.0.0.1:9/{entry.filename}",))
        monkeypatch.setitem(weights.WEIGHTS, name, offline)
    result = CliRunner().invoke(
        cli,
        [
            "--cache-dir",
            str(toy.root.parent),
            "extract",
            "--dataset",
            "toy",
            "--backbones",
            "mt-emotieffnet",
        ],
        standalone_mode=False,
    )
    assert isinstance(result.exception, InputError)
    message = str(result.exception)
    assert "127.0.0.1:9/enet_b0_8_va_mtl.pt" in message
    assert str(tmp_path / "home" / "weights" / "enet_b0_8_va_mtl.pt") in message
    assert not toy.features_dir.exists()  # failed before any work


def test_cli_extract_random_init_and_merge(toy: DatasetPaths, tiny: BackboneSpec) -> None:
    base = ["--cache-dir", str(toy.root.parent), "extract", "--dataset", "toy"]
    opts = ["--backbones", TINY, "--random-init", "--workers", "0", "--batch-size", "4"]
    runner = CliRunner()
    result = runner.invoke(cli, [*base, *opts, "--no-channels-last"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "RANDOM" in result.output and f"{TINY}: extracted" in result.output
    assert runner.invoke(cli, [*base, *opts]).output.count("skipped") == 1
    for shard in ("1/2", "2/2"):
        assert runner.invoke(cli, [*base, *opts, "--shard", shard]).exit_code == 0
    result = runner.invoke(cli, [*base, "--merge", "--backbones", TINY])
    assert result.exit_code == 0 and "merged" in result.output, result.output
    bad = runner.invoke(cli, [*base, *opts, "--shard", "x"], standalone_mode=False)
    assert isinstance(bad.exception, InputError)


# --- bench ----------------------------------------------------------------------------------


def test_bench_reports_whole_path_and_forward(tiny: BackboneSpec, tmp_path: Path) -> None:
    folder = tmp_path / "crops"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(
            folder / f"{i}.jpg"
        )
    json_out = tmp_path / "bench.json"
    args = ["bench", "extract", "--images", str(folder), "--repeat", "2", "--backbones", TINY]
    args += ["--batch-size", "4", "--json", str(json_out)]  # the CLI's default workers
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"| {TINY} | cpu | 4 | 1 | 12 | random-init |" in result.output
    assert "torch threads" in result.output and "random init" in result.output
    import json

    (row,) = json.loads(json_out.read_text())["rows"]
    assert row["whole_path_images_per_s"] > 0 and row["forward_images_per_s"] > 0


def test_bench_times_the_openface_descriptor(fixtures_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "crops"
    folder.mkdir()
    for source in sorted((fixtures_dir / "images" / "bench112").glob("*.jpg"))[:4]:
        (folder / source.name).symlink_to(source)
    args = ["bench", "extract", "--images", str(folder), "--repeat", "1"]
    args += ["--backbones", "openface", "--workers", "0"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if line.startswith("| openface |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[4:7] == ["4", "built-in", "-"]  # a descriptor has no runtime
    assert all(float(rate) > 0 for rate in cells[7:10])


def test_bench_without_images_draws_its_own_faces(tiny: BackboneSpec) -> None:
    """No --images: synthetic crops, so the bench runs outside the repository too."""
    from affectpipe.extract.bench import BENCH_FACES

    args = ["bench", "extract", "--repeat", "1", "--backbones", TINY, "--workers", "0"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"| {TINY} | cpu | 64 | 0 | {BENCH_FACES} | random-init |" in result.output


def test_bench_without_images_asks_for_them(tmp_path: Path) -> None:
    args = ["bench", "extract", "--images", str(tmp_path / "nowhere")]
    result = CliRunner().invoke(cli, args, standalone_mode=False)
    assert isinstance(result.exception, InputError) and "--images" in str(result.exception)


# --- model preparation ------------------------------------------------------------------------


class SkipConnection(torch.nn.Module):
    """The conv output feeds the BN *and* a residual: folding would change the residual."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        out = self.bn(y) + y
        return out.mean(dim=(2, 3)), out.amax(dim=(2, 3))


def randomise_batchnorms(model: torch.nn.Module) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            for tensor in (module.weight, module.bias, module.running_mean):
                tensor.data = torch.randn(tensor.shape, generator=generator)
            module.running_var.data = (
                torch.rand(module.running_var.shape, generator=generator) + 0.5
            )
    return model.eval()


def test_batchnorm_folding_keeps_outputs(tiny: BackboneSpec) -> None:
    from affectpipe.extract.engine import prepare_model, probe_batch

    model = randomise_batchnorms(TinyNet())
    cpu = torch.device("cpu")
    folded = prepare_model(model, cpu, channels_last=True, probe=probe_batch(tiny))
    assert isinstance(folded.bn, torch.nn.Identity) and isinstance(model.bn, torch.nn.BatchNorm2d)
    x = probe_batch(tiny, 5)
    with torch.inference_mode():
        for want, got in zip(model(x), folded(x), strict=True):
            np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)

    residual = randomise_batchnorms(SkipConnection())
    kept = prepare_model(residual, cpu, channels_last=False, probe=probe_batch(tiny))
    assert kept is residual and isinstance(kept.bn, torch.nn.BatchNorm2d)


def test_openface_csv_is_imported_through_run(toy: DatasetPaths, tmp_path: Path) -> None:
    from affectpipe.extract.backbones.openface_csv import BLOCKS

    au = [*BLOCKS["au_r"], *BLOCKS["au_c"]]
    header = ["frame", "face_id", "timestamp", "confidence", "success", *au]
    rows = [[str(f), "0", "0.0", "0.9", "1", *[f"{f / 10:.1f}"] * len(au)] for f in range(1, 6)]
    openface_dir = tmp_path / "openface"
    openface_dir.mkdir()
    (openface_dir / "vid0.csv").write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")

    with pytest.raises(InputError, match="--openface-dir"):
        extract.run(toy, ["openface-csv"], progress=False)
    with pytest.raises(InputError, match="without --shard"):
        extract.run(toy, ["openface-csv"], openface_dir=openface_dir, shard=(1, 2), progress=False)
    summary = extract.run(toy, ["openface-csv"], openface_dir=openface_dir, progress=False)
    (report,) = summary.reports
    assert report.action == "imported"
    features = read_feature_file(toy.features("openface-csv"))
    in_csv = np.char.startswith(features.images.astype(str), "vid0/")
    np.testing.assert_array_equal(features.ok, in_csv)
    assert report.failed_count == int((~in_csv).sum())
    again = extract.run(toy, ["openface-csv"], openface_dir=openface_dir, progress=False)
    assert again.reports[0].action == "skipped"

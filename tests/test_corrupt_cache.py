"""Tampered cache files (feature files, manifests) end in exit 2 naming the file and the
command that rebuilds it, never in a traceback or a silent skip."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.features import read_feature_file, write_feature_file
from affectpipe.featuresets import clear_cache
from affectpipe.heads import train
from affectpipe.heads.synthetic import Scale, write_synthetic_cache
from affectpipe.manifest import METADATA_KEY, read_manifest, read_manifest_metadata
from tests.conftest import run_cli

TINY = Scale(n_train=120, n_val=60, n_test=30, rows_per_video=30)
CANDIDATE = "mt-emotieffnet:logits/linear"
FEATURE_REBUILD = "pipeline extract --dataset synth --backbones mt-emotieffnet --force"
MANIFEST_REBUILD = "pipeline index ROOT --format FORMAT --name synth --force"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine") / "synth"
    write_synthetic_cache(DatasetPaths(root), TINY, seed=1)
    return root


@pytest.fixture()
def cache(pristine: Path, tmp_path: Path) -> DatasetPaths:
    clear_cache()  # the feature-set reader keeps files per (path, mtime) in this process
    shutil.copytree(pristine, tmp_path / "synth")
    return DatasetPaths(tmp_path / "synth")


def _edit(path: Path, change: Callable[[h5py.File], None]) -> None:
    with h5py.File(path, "r+") as handle:
        change(handle)


def _replace(name: str, data: np.ndarray) -> Callable[[h5py.File], None]:
    def change(handle: h5py.File) -> None:
        del handle[name]
        handle.create_dataset(name, data=data)

    return change


def _huge_embedding(handle: h5py.File) -> None:
    """An embedding declaring 10M x 960 float32 (35.8 GiB) with no data: reads as zeros."""
    del handle["embedding"]
    handle.create_dataset("embedding", (10_000_000, 960), "float32", chunks=(1024, 960))


def _fewer_rows(path: Path) -> None:
    """A consistent, complete file that lacks the manifest's last 5 images."""
    features = read_feature_file(path)
    write_feature_file(
        path,
        features.images[:-5],
        features.load("embedding")[:-5],
        features.ok[:-5],
        {k: v for k, v in features.attrs.items() if k not in ("committed_rows", "complete")},
        logits=features.load("logits")[:-5],
    )


FEATURE_TAMPERS: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "HDF5"),
    "not-hdf5": (lambda p: p.write_text("<html>not found</html>"), "not a readable HDF5"),
    "missing-ok": (lambda p: _edit(p, lambda h: h.__delitem__("ok")), "no 'ok' dataset"),
    "missing-embedding": (
        lambda p: _edit(p, lambda h: h.__delitem__("embedding")),
        "no 'embedding' dataset",
    ),
    "missing-image": (lambda p: _edit(p, lambda h: h.__delitem__("image")), "no 'image'"),
    "rows-differ": (
        lambda p: _edit(p, lambda h: _replace("ok", np.ones(len(h["ok"]) - 1, bool))(h)),
        "disagree on the number of rows",
    ),
    "embedding-1d": (
        lambda p: _edit(p, lambda h: _replace("embedding", np.zeros(len(h["ok"]), "f4"))(h)),
        "'embedding' is float32",
    ),
    "declared-35.8GiB": (lambda p: _edit(p, _huge_embedding), "declares 35.8 GiB"),
    "bad-json-attr": (
        lambda p: _edit(p, lambda h: h.attrs.__setitem__("logit_names", "[not json")),
        "unreadable attributes",
    ),
    "groups-out-of-range": (
        lambda p: _edit(p, lambda h: h.attrs.__setitem__("groups", '{"a": [0, 99999]}')),
        "groups attr",
    ),
    "rows-not-manifest": (_fewer_rows, "do not match the manifest"),
}


@pytest.mark.parametrize("case", sorted(FEATURE_TAMPERS))
def test_tampered_feature_file_is_a_clear_error(cache: DatasetPaths, case: str) -> None:
    tamper, reason = FEATURE_TAMPERS[case]
    path = cache.features("mt-emotieffnet")
    tamper(path)
    with pytest.raises(InputError) as error:
        train(cache, run="t", tasks=["expr"], candidates=[CANDIDATE], progress=False)
    message = str(error.value)
    assert str(path) in message and FEATURE_REBUILD in message and reason in message
    assert not cache.run("t").joinpath("heads", "metrics.json").exists()


def _parquet_with_metadata(path: Path, raw: bytes) -> None:
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: raw}), path)


MANIFEST_TAMPERS: dict[str, Callable[[Path], None]] = {
    "not-parquet": lambda p: p.write_text("image,split\na.jpg,train\n"),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "missing-columns": lambda p: pq.write_table(pa.table({"image": ["a.jpg"]}), p),
    "bad-json-metadata": lambda p: _parquet_with_metadata(p, b'{"dataset": '),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_TAMPERS))
def test_tampered_manifest_is_a_clear_error(cache: DatasetPaths, case: str) -> None:
    MANIFEST_TAMPERS[case](cache.manifest)
    with pytest.raises(InputError) as error:
        read_manifest(cache.manifest)
        read_manifest_metadata(cache.manifest)
    message = str(error.value)
    assert str(cache.manifest) in message and MANIFEST_REBUILD in message


def test_corrupt_manifest_metadata_is_still_rebuilt_by_index(cache: DatasetPaths) -> None:
    """`index` treats an unreadable manifest as absent (it catches ValueError)."""
    _parquet_with_metadata(cache.manifest, b"{")
    with pytest.raises(ValueError):
        read_manifest_metadata(cache.manifest)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "case"),
    [("features", "truncated"), ("features", "declared-35.8GiB"), ("manifest", "not-parquet")],
)  # fmt: skip
def test_cli_heads_exits_2_on_tampered_cache(cache: DatasetPaths, target: str, case: str) -> None:
    if target == "features":
        path = cache.features("mt-emotieffnet")
        FEATURE_TAMPERS[case][0](path)
        rebuild = FEATURE_REBUILD
    else:
        path = cache.manifest
        MANIFEST_TAMPERS[case](path)
        rebuild = MANIFEST_REBUILD
    result = run_cli(
        "--cache-dir", cache.root.parent, "heads", "--dataset", "synth", "--task", "expr",
        "--candidate", CANDIDATE, "--no-progress",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr and rebuild in result.stderr
    assert "Traceback" not in result.stderr

"""Out-of-core heads: chunked reads and projection give what the whole in-memory arrays give."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.featuresets import (
    clear_cache,
    load_feature_set,
    manifest_rows_to_feature_rows,
    parse_feature_set,
)
from affectpipe.heads import fitting, training
from affectpipe.heads.preprocess import FeatureScaler
from affectpipe.heads.synthetic import Scale, write_synthetic_cache
from affectpipe.heads.training import scale_features, train
from affectpipe.manifest import read_manifest
from affectpipe.schema import PRED_COLUMNS

TINY = Scale(n_train=400, n_val=120, n_test=80, rows_per_video=40)
JOINED = "mt-emotieffnet:embedding+logits+ddamfn:embedding"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> DatasetPaths:
    paths = DatasetPaths(tmp_path_factory.mktemp("chunked") / "synth")
    write_synthetic_cache(paths, TINY, seed=5)
    return paths


def in_memory(paths: DatasetPaths, spec: str, manifest: pd.DataFrame) -> np.ndarray:
    """The feature set for every manifest row, from whole arrays (the pre-chunking path)."""
    blocks = []
    for backbone, part in parse_feature_set(spec).parts:
        with h5py.File(paths.features(backbone), "r") as handle:
            images = handle["image"].asstr()[...]
            # "au": an openface group, the first 100 embedding columns
            data = handle["embedding"][:, :100] if part == "au" else handle[part][...]
        rows = manifest_rows_to_feature_rows(images, manifest)
        blocks.append(data.astype(np.float32)[np.maximum(rows, 0)])
    return np.concatenate(blocks, axis=1)


def test_synthetic_cache_is_float16_and_says_so(cache: DatasetPaths) -> None:
    with h5py.File(cache.features("mt-emotieffnet"), "r") as handle:
        assert handle["embedding"].dtype == np.float16
        assert handle.attrs["synthetic_storage"] == "float16"


@pytest.mark.parametrize("spec", [JOINED, "openface:au", "ddamfn:logits"])
def test_chunked_take_equals_whole_arrays(cache: DatasetPaths, spec: str) -> None:
    manifest = read_manifest(cache.manifest)
    whole = in_memory(cache, spec, manifest)
    loaded = load_feature_set(cache, parse_feature_set(spec), manifest, chunk_rows=7)
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.permutation(len(manifest)), [3, 3, len(manifest) - 1]])
    taken = loaded.take(rows)
    assert taken.dtype == np.float32
    np.testing.assert_array_equal(taken, whole[rows])
    assert loaded.take(rows[:0]).shape == (0, whole.shape[1])


def test_chunked_projection_equals_in_memory(cache: DatasetPaths, tmp_path: Path) -> None:
    manifest = read_manifest(cache.manifest)
    loaded = load_feature_set(cache, parse_feature_set(JOINED), manifest, chunk_rows=11)
    fit_rows = np.flatnonzero(loaded.ok & (manifest["split"] == "train").to_numpy())
    scaler = scale_features(loaded, fit_rows, 16, tmp_path / "z.npy")
    Z = np.load(tmp_path / "z.npy")

    whole = in_memory(cache, JOINED, manifest)
    sample = fit_rows[:: max(1, len(fit_rows) // training.SCALER_SAMPLE_ROWS)]
    reference = FeatureScaler(n_components=16).fit(whole[sample])
    np.testing.assert_array_equal(scaler.projection_, reference.projection_)
    np.testing.assert_array_equal(scaler.offset_, reference.offset_)
    expected = np.zeros_like(Z)
    expected[loaded.ok] = reference.transform(whole[loaded.ok])
    # Same rows, same float32 map, one matmul per chunk instead of one for all: BLAS may
    # round a row differently by block size, by an ulp or so.
    np.testing.assert_allclose(Z, expected, rtol=1e-5, atol=1e-5)
    assert Z.shape == (len(manifest), 16) and not Z[~loaded.ok].any()


@pytest.mark.slow  # two small heads runs: ~10 s on an idle 2-core machine
def test_chunk_size_does_not_change_heads(cache: DatasetPaths) -> None:
    """Chunk size changes the projection by float32 rounding only (see above): a closed-form
    head (VA ridge) then agrees to ~1e-5; an iterative one (AU MLP) amplifies ulp-level input
    differences along its optimisation path, so it is held to the same score instead."""
    candidates = ["mt-emotieffnet:embedding+logits/linear", "openface:embedding/mlp"]
    results = {}
    for chunk_rows in (5, 1 << 20):
        run = f"chunks{chunk_rows}"
        result = train(
            cache,
            run=run,
            tasks=["va", "au"],
            candidates=candidates,
            chunk_rows=chunk_rows,
            progress=False,
        )
        ridge = pd.read_parquet(cache.preds(run, "va", "mt-emotieffnet.embedding+logits__linear"))
        scores = {(r.task, r.candidate): r.scores for r in result.results}
        results[chunk_rows] = ridge[list(PRED_COLUMNS["va"])].to_numpy(), scores
        assert not list((cache.run(run) / "heads").glob(".scaled-*"))  # scratch removed
    (ridge_small, scores_small), (ridge_large, scores_large) = results[5], results[1 << 20]
    np.testing.assert_allclose(ridge_small, ridge_large, rtol=0, atol=1e-5)
    assert scores_small.keys() == scores_large.keys()
    for key, small in scores_small.items():
        for metric, value in small.items():
            assert value == pytest.approx(scores_large[key][metric], abs=0.01), (key, metric)


def test_non_finite_ok_row_is_refused_in_any_chunk(tmp_path: Path) -> None:
    paths = DatasetPaths(tmp_path / "synth")
    write_synthetic_cache(paths, TINY, seed=6)
    path = paths.features("ddamfn")
    with h5py.File(path, "r+") as handle:
        ok = handle["ok"][...]
        bad = int(np.flatnonzero(ok)[-5])  # in the last chunk, not the first
        handle["embedding"][bad, 3] = np.inf
    clear_cache()
    manifest = read_manifest(paths.manifest)
    loaded = load_feature_set(paths, parse_feature_set("ddamfn:embedding"), manifest, chunk_rows=9)
    with pytest.raises(InputError, match="1 ok rows of embedding hold NaN or inf"):
        loaded.take(np.arange(len(manifest)))


def test_row_file_reads_the_rows_a_fit_asks_for(tmp_path: Path, monkeypatch) -> None:
    """A worker's row reads (blocks smaller than the file, sorted indices or a mask, rows in
    several blocks or none) return exactly what indexing the whole array gives; a file
    shorter than its header is refused, not read as garbage."""
    monkeypatch.setattr(fitting, "READ_BLOCK_ROWS", 7)
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((100, 5)).astype(np.float32)
    np.save(tmp_path / "z.npy", matrix)
    rows = fitting.RowFile(tmp_path / "z.npy")
    assert len(rows) == 100
    for index in (
        np.arange(100),
        np.array([3, 4, 50, 99]),
        np.array([], dtype=np.int64),
        rng.random(100) > 0.5,
        np.array([0, 7, 14, 21]),
    ):
        np.testing.assert_array_equal(rows[index], matrix[index])
    data = (tmp_path / "z.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(data[:-40])
    with pytest.raises(InputError, match="shorter"):
        fitting.RowFile(tmp_path / "short.npy")[np.array([99])]


SCRIPT_WITHOUT_MAIN_GUARD = """
import sys
from pathlib import Path

from affectpipe.config import DatasetPaths
from affectpipe.heads import fit_workers, training

with open(sys.argv[2], "a") as marker:  # one line per execution of this script
    marker.write("ran\\n")
fit_workers.PARALLEL_MIN_VALUES = 0  # tiny data, fitted in worker processes all the same
config = Path(sys.argv[3])
config.write_text("[heads]\\nworkers = 2\\ntemporal = false\\n")
result = training.train(
    DatasetPaths(Path(sys.argv[1])), run="workers", tasks=["va", "expr"],
    candidates=["openface:embedding/mlp", "mt-emotieffnet:logits/linear"],
    config_path=config, progress=False,
)
print({(r.task, r.candidate): r.scores for r in result.results})
"""


@pytest.mark.slow  # a subprocess whose fork server imports torch: ~20 s on 2 cores
def test_fit_workers_never_rerun_the_callers_script(cache: DatasetPaths, tmp_path: Path) -> None:
    """Fits in worker processes (forked from the fork server) give what fits in this process
    give, and a script calling `train` without an ``if __name__ == "__main__":`` guard runs
    once: the workers do not re-import it."""
    import subprocess
    import sys

    script = tmp_path / "no_guard.py"
    script.write_text(SCRIPT_WITHOUT_MAIN_GUARD)
    marker = tmp_path / "marker.txt"
    done = subprocess.run(
        [sys.executable, str(script), str(cache.root), str(marker), str(tmp_path / "w.toml")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert marker.read_text() == "ran\n"
    inline = train(
        cache,
        run="inline",
        tasks=["va", "expr"],
        candidates=["openface:embedding/mlp", "mt-emotieffnet:logits/linear"],
        progress=False,
    )  # tiny data: fitted in this process
    for r in inline.results:
        name = r.candidate
        in_workers = pd.read_parquet(cache.preds("workers", r.task, name))
        here = pd.read_parquet(cache.preds("inline", r.task, name))
        columns = list(PRED_COLUMNS[r.task])
        np.testing.assert_allclose(in_workers[columns], here[columns], rtol=1e-5, atol=1e-6)

"""The OpenFace-style descriptor's finalisation in bounded memory: the HOG PCA is fitted on a
seeded sample of train rows read back from disk in blocks, rows are projected block by block,
and an interrupted finalisation resumes from the saved fit (issue 12)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from affectpipe import extract
from affectpipe import features as features_module
from affectpipe.config import DatasetPaths
from affectpipe.extract.backbones import openface
from affectpipe.extract.backbones.openface import SHAPE_DIM, OpenFaceDescriptor
from affectpipe.extract.rawrows import ArrayRows, StoreRows, reblock
from affectpipe.extract.store import PartStore, parts_dir
from affectpipe.features import read_feature_file
from affectpipe.manifest import empty_manifest, write_manifest


@pytest.fixture(scope="module")
def crops(fixtures_dir: Path) -> list[Path]:
    return sorted((fixtures_dir / "images/bench112").glob("*.jpg"))[:24]


@pytest.fixture(scope="module")
def raw(crops: list[Path]) -> np.ndarray:
    """Raw descriptors of 24 real face crops."""
    descriptor = OpenFaceDescriptor()
    rows = [descriptor.describe(np.asarray(Image.open(p).convert("RGB"))) for p in crops]
    assert all(ok for _, ok in rows)
    return np.stack([r for r, _ in rows])


@pytest.fixture()
def streamed_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the covariance path (used beyond FULL_SVD_MAX_ROWS fit rows) on small data."""
    monkeypatch.setattr(openface, "FULL_SVD_MAX_ROWS", 0)


def staged(raw: np.ndarray, ok: np.ndarray, tmp_path: Path, chunk_rows: int) -> PartStore:
    """The rows committed to a part store, as an extraction leaves them."""
    store = PartStore(tmp_path / "openface.h5", {"test": 1}, len(raw), chunk_rows)
    store.open()
    for start in store.chunk_starts():
        stop = store.chunk_stop(start)
        store.commit(start, {"embedding": raw[start:stop], "ok": ok[start:stop]})
    return store


def test_reblock_cuts_pieces_at_fixed_row_multiples() -> None:
    rows = np.arange(23)[:, None]
    pieces = [(0, rows[:3]), (3, rows[3:4]), (4, rows[4:17]), (17, rows[17:])]
    blocks = list(reblock(pieces, 5))
    assert [start for start, _ in blocks] == [0, 5, 10, 15, 20]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), rows)


@pytest.mark.slow  # a 6084-wide covariance fit: seconds
def test_streamed_fit_equals_the_in_memory_pca_when_the_sample_covers_all_train_rows(
    raw: np.ndarray, tmp_path: Path, streamed_fit: None
) -> None:
    from sklearn.decomposition import PCA

    ok = np.ones(len(raw), dtype=bool)
    ok[5] = False
    train = np.arange(len(raw)) % 4 != 0
    descriptor = OpenFaceDescriptor(hog_components=6)
    embedding, groups, attrs = descriptor.finalize(raw, ok, train)
    hog_pca = attrs["openface_descriptor"]["hog_pca"]
    assert hog_pca["solver"].startswith("covariance") and hog_pca["fit_rows"] == 17

    reference = PCA(n_components=6, svd_solver="full").fit(raw[ok & train, SHAPE_DIM:])
    expected = (raw[:, SHAPE_DIM:] - reference.mean_) @ reference.components_.T
    got = embedding[:, groups["hog"][0] : groups["hog"][1]]
    np.testing.assert_allclose(got[ok], expected[ok], atol=2e-3 * np.abs(expected).max())
    assert not got[~ok].any()
    np.testing.assert_array_equal(embedding[ok, :SHAPE_DIM], raw[ok, :SHAPE_DIM])
    np.testing.assert_allclose(
        hog_pca["explained_variance"], reference.explained_variance_ratio_.sum(), rtol=1e-4
    )

    # Staged on disk in odd chunks and read back block by block: the very same features.
    store = staged(raw, ok, tmp_path, chunk_rows=5)
    done = descriptor.finalize_rows(StoreRows(store), train)
    from_disk = np.concatenate([chunk["embedding"] for _, chunk in done.chunks])
    np.testing.assert_array_equal(from_disk, embedding)
    assert done.attrs["hog_pca_components"].tobytes() == attrs["hog_pca_components"].tobytes()


@pytest.mark.slow  # a 6084-wide covariance fit: seconds
def test_a_sample_smaller_than_the_train_rows_is_seeded_and_reproducible(
    raw: np.ndarray, streamed_fit: None
) -> None:
    ok = np.ones(len(raw), dtype=bool)
    train = np.arange(len(raw)) < 20

    def fit(seed: int) -> dict:
        descriptor = OpenFaceDescriptor(hog_components=4, pca_max_rows=12, seed=seed)
        return descriptor.finalize(raw, ok, train)[2]

    first, again, other = fit(3), fit(3), fit(4)
    assert first["openface_descriptor"]["hog_pca"]["fit_rows"] == 12
    assert first["openface_descriptor"]["hog_pca"]["train_rows_ok"] == 20
    assert first["hog_pca_components"].tobytes() == again["hog_pca_components"].tobytes()
    assert first["hog_pca_mean"].tobytes() == again["hog_pca_mean"].tobytes()
    assert not np.allclose(first["hog_pca_mean"], other["hog_pca_mean"])  # another sample


def faces_dataset(crops: list[Path], root: Path) -> DatasetPaths:
    keys = [f"v{i % 3}/{p.name}" for i, p in enumerate(crops[:12])]
    for key, crop in zip(keys, crops, strict=False):
        (root / "images" / key).parent.mkdir(parents=True, exist_ok=True)
        (root / "images" / key).symlink_to(crop)
    frame = empty_manifest(len(keys))
    frame["image"] = keys
    frame["video"] = [k.split("/")[0] for k in keys]
    frame["split"] = ["train"] * 9 + ["val"] * 3
    frame["has_image"] = True
    paths = DatasetPaths.of(root / "cache", "faces")
    metadata = {"dataset": "faces", "image_roots": {"train": str(root / "images")}}
    metadata["image_roots"]["val"] = str(root / "images")
    write_manifest(frame, paths.manifest, metadata)
    return paths


@pytest.mark.slow  # a 6084-wide covariance fit: seconds
def test_an_interrupted_finalisation_resumes_from_its_saved_fit(
    crops: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streamed_fit: None
) -> None:
    paths = faces_dataset(crops, tmp_path)
    monkeypatch.setattr(openface, "APPLY_BLOCK_ROWS", 4)
    real_write = features_module.write_feature_file_streamed

    def killed_after_one_block(path, images, chunks, attrs, **dims):
        def blocks():
            for i, block in enumerate(chunks):
                if i == 1:
                    raise KeyboardInterrupt  # Ctrl-C while the rows are projected and written
                yield block

        real_write(path, images, blocks(), attrs, **dims)

    monkeypatch.setattr(features_module, "write_feature_file_streamed", killed_after_one_block)
    run = dict(workers=0, batch_size=4, chunk_rows=4, progress=False)
    with pytest.raises(KeyboardInterrupt):
        extract.run(paths, ["openface"], **run)
    final = paths.features("openface")
    assert not final.exists()
    saved = parts_dir(final) / "openface-hog-pca.npz"
    assert saved.exists()  # the fit is kept with the staged raw rows

    monkeypatch.setattr(features_module, "write_feature_file_streamed", real_write)

    def no_refit(*args, **kwargs):
        raise AssertionError("the saved fit should have been reused")

    monkeypatch.setattr(openface.HogPCA, "fit", no_refit)
    summary = extract.run(paths, ["openface"], **run)
    assert [r.action for r in summary.reports] == ["resumed"]
    assert not parts_dir(final).exists()  # leftovers removed once the file is in place
    resumed = read_feature_file(final)
    monkeypatch.undo()

    # The same file as an uninterrupted run (the covariance path again, refitted).
    monkeypatch.setattr(openface, "FULL_SVD_MAX_ROWS", 0)
    monkeypatch.setattr(openface, "APPLY_BLOCK_ROWS", 4)
    extract.run(paths, ["openface"], force=True, **run)
    fresh = read_feature_file(final)
    np.testing.assert_array_equal(resumed.load("embedding"), fresh.load("embedding"))
    assert resumed.attrs["openface_descriptor"] == fresh.attrs["openface_descriptor"]


def test_a_saved_fit_for_other_rows_is_not_reused(raw: np.ndarray, tmp_path: Path) -> None:
    ok = np.ones(len(raw), dtype=bool)
    train = np.arange(len(raw)) < 20
    descriptor = OpenFaceDescriptor(hog_components=4)
    first = descriptor.finalize_rows(ArrayRows(raw, ok), train, tmp_path).attrs
    assert (tmp_path / "openface-hog-pca.npz").exists()
    other_train = np.arange(len(raw)) >= 4
    second = descriptor.finalize_rows(ArrayRows(raw, ok), other_train, tmp_path).attrs
    assert not np.allclose(first["hog_pca_mean"], second["hog_pca_mean"])
    (tmp_path / "openface-hog-pca.npz").write_bytes(b"damaged")  # unreadable: refitted
    again = descriptor.finalize_rows(ArrayRows(raw, ok), other_train, tmp_path).attrs
    assert again["hog_pca_mean"].tobytes() == second["hog_pca_mean"].tobytes()

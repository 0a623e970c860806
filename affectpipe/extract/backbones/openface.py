"""Built-in OpenFace-style descriptor: dlib landmarks -> geometry, AU measurements, HOG-PCA.

For users who cannot run OpenFace itself. Per image (`describe`, in decode worker
processes): 68 landmarks (`landmarks`), similarity-aligned geometry and AU-related
measurements (`openface_geometry`), fit quality, and HOG of the aligned face
(`openface_hog`). Once per dataset (`finalize`): a PCA of the HOG fitted on the training
split only, so no validation or test image influences the features.

Embedding layout (float32 columns, in order; `groups` of the feature file):

| group | dims | content |
|---|---|---|
| `geometry` | 136 | aligned landmarks x0, y0, x1, y1, ... in the reference frame (inter-ocular 1) |
| `au` | 19 | `openface_geometry.AU_MEASUREMENTS` (documented there with their AUs) |
| `quality` | 7 | `QUALITY_COLUMNS` (below) |
| `hog` | <= 128 | HOG projected on the training PCA (fewer when fewer train images) |

Quality columns: `detected` (1 when dlib's face detector found the face, 0 when the
landmarks were fitted in the fixed crop box), `detector_score`, `plausible` (1 when eyes are
above the nose tip above the mouth, the right eye left of the left eye, and the inter-ocular
distance is 0.25-0.6 of the box width), `interocular_ratio`, `rigid_residual` (RMS distance
of the aligned rigid points to the reference, inter-ocular units: a bad fit is large),
`roll` (in-plane head rotation, radians), `face_size` (inter-ocular distance in pixels over
the image's shorter side). Rows whose image could not be processed (`ok` false) are zeros.

The raw per-image vector (`describe`) is the same first three groups followed by the
6084 raw HOG values; `raw_dim` (6246) gives its length: about 25 KB per image (5.4 GB for
s-Aff-Wild2, 70 GB for the full Aff-Wild2), so they stay staged on disk and `finalize_rows`
reads them in blocks, twice: the PCA is fitted on a seeded sample of at most `pca_max_rows`
ok train rows (held for an exact SVD up to FULL_SVD_MAX_ROWS rows; beyond, their covariance
is summed block by block, a fixed 6084 x 6084 matrix, and its leading eigenvectors found by
seeded subspace iteration), then every row is projected block by block. Memory is bounded
by the HOG width, not by the number of images. The fitted PCA is saved next to the staged
rows, so an interrupted finalisation resumes from it.

Known to be weaker than real OpenFace: dlib's landmarks come from a regression-tree model
without OpenFace's CE-CLM patch experts, 3D face model or temporal tracking, so there is no
3D head pose or gaze (only the in-plane roll); HOG is Dalal-Triggs, not FHOG; and there are
no trained AU regressors: the AU columns are geometric proxies that heads learn to map to
AU labels.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from affectpipe.errors import InputError
from affectpipe.extract.backbones import landmarks as lm
from affectpipe.extract.backbones import openface_geometry as geo
from affectpipe.extract.backbones import openface_hog as hog
from affectpipe.extract.rawrows import Finalized, RawRows, counted, reblock

QUALITY_COLUMNS: tuple[str, ...] = (
    "detected",
    "detector_score",
    "plausible",
    "interocular_ratio",
    "rigid_residual",
    "roll",
    "face_size",
)
GEOMETRY_DIM = 2 * lm.N_POINTS
SHAPE_DIM = GEOMETRY_DIM + len(geo.AU_MEASUREMENTS) + len(QUALITY_COLUMNS)
FULL_SVD_MAX_ROWS = 2000  # fit rows held in memory for an exact SVD (<= 49 MB of HOG)
FIT_BLOCK_ROWS = 1024  # sample rows per covariance update
APPLY_BLOCK_ROWS = 2048  # rows projected at once
SUBSPACE_ITERATIONS = 12


class OpenFaceDescriptor:
    """OpenFace-style features for the feature store (see the module docstring).

    Holds only its parameters, so it pickles cheaply; the dlib models are loaded lazily,
    once per process. `describe` is a pure function of the image; `finalize` is
    deterministic given `seed`.

    Parameters:
        hog_components: PCA components kept for the HOG (fewer when fewer train images).
        pca_max_rows: at most this many train rows (a seeded random subset) fit the PCA.
        seed: random state of the subset and of the randomised PCA solver.
    """

    name = "openface"
    raw_dim = SHAPE_DIM + hog.HOG_DIM
    fitted_arrays = ("hog_pca_mean", "hog_pca_components")

    def __init__(self, hog_components: int = 128, pca_max_rows: int = 20000, seed: int = 0):
        self.hog_components = hog_components
        self.pca_max_rows = pca_max_rows
        self.seed = seed

    def describe(self, rgb: np.ndarray) -> tuple[np.ndarray, bool]:
        """Raw descriptor of one RGB uint8 image [H, W, 3]: (vector [raw_dim] float32, ok)."""
        image = np.asarray(rgb)
        if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 2:
            return np.zeros(self.raw_dim, dtype=np.float32), False
        fit = lm.fit_landmarks(image)
        aligned, matrix = geo.align_to_reference(fit.points)
        rigid = list(geo.RIGID_POINTS)
        residual = np.sqrt(((aligned[rigid] - geo.REFERENCE_SHAPE[rigid]) ** 2).sum(1).mean())
        # matrix[:, :2] = s * R maps image -> reference, so the face is rotated by -angle(R).
        roll = -np.arctan2(matrix[1, 0], matrix[0, 0])
        scale = np.hypot(matrix[0, 0], matrix[1, 0])
        quality = (
            float(fit.detected),
            fit.detector_score,
            float(fit.plausible),
            fit.interocular_ratio,
            residual,
            roll,
            (1.0 / scale) / min(image.shape[:2]),
        )
        face = hog.aligned_face(image, fit.points)
        raw = np.concatenate(
            [
                aligned.reshape(-1).astype(np.float32),
                geo.au_measurements(aligned),
                np.asarray(quality, dtype=np.float32),
                hog.hog_descriptor(face),
            ]
        )
        return raw, True

    def finalize(
        self, raw: np.ndarray, ok: np.ndarray, train_mask: np.ndarray
    ) -> tuple[np.ndarray, dict[str, list[int]], dict[str, Any]]:
        """`finalize_rows` for rows already in memory: (embedding [N, D], groups, attrs)."""
        from affectpipe.extract.rawrows import ArrayRows

        done = self.finalize_rows(ArrayRows(raw, ok), train_mask)
        blocks = [chunk["embedding"] for _, chunk in done.chunks]
        embedding = np.concatenate(blocks) if blocks else np.zeros((0, done.embedding_dim))
        return embedding.astype(np.float32, copy=False), done.groups, done.attrs

    def finalize_rows(
        self, rows: RawRows, train_mask: np.ndarray, scratch: Path | None = None
    ) -> Finalized:
        """Fit the HOG PCA on a seeded sample of ok train rows, then project every row.

        Reads `rows` twice in bounded blocks (the sample, then every row), so memory does not
        grow with the dataset. The fitted PCA is saved in `scratch` (when given): a rerun
        after an interruption while the rows are projected and written reuses it.
        """
        ok = np.asarray(rows.ok, dtype=bool)
        train_mask = np.asarray(train_mask, dtype=bool)
        if not (len(ok) == len(train_mask) == rows.n_rows):
            raise ValueError("raw, ok and train_mask must have the same number of rows")
        fit_rows = np.flatnonzero(ok & train_mask)
        if len(fit_rows) < 2:
            raise InputError(
                "the openface HOG PCA is fitted on training images only, and fewer than 2 "
                "train images could be processed: index the dataset with its train split"
            )
        train_rows_ok = len(fit_rows)
        if len(fit_rows) > self.pca_max_rows:
            rng = np.random.default_rng(self.seed)
            fit_rows = np.sort(rng.choice(fit_rows, self.pca_max_rows, replace=False))
        components = min(self.hog_components, len(fit_rows), hog.HOG_DIM)
        params = json.dumps(vars(self), sort_keys=True)
        key = hashlib.sha256(
            f"{rows.key}\n{params}\n{components}\n".encode() + fit_rows.tobytes()
        ).hexdigest()
        saved = scratch / f"{self.name}-hog-pca.npz" if scratch is not None else None
        pca = HogPCA.load(saved, key) if saved is not None else None
        if pca is None:
            hog_rows = (self._checked(piece)[:, SHAPE_DIM:] for piece in rows.take(fit_rows))
            pca = HogPCA.fit(hog_rows, len(fit_rows), components, self.seed)
            if saved is not None:
                pca.save(saved, key)

        def chunks() -> Iterator[tuple[int, dict[str, np.ndarray]]]:
            for start, block in reblock(rows.blocks(), APPLY_BLOCK_ROWS):
                block_ok = ok[start : start + len(block)]
                embedding = embed(self._checked(block), pca.mean, pca.components)
                embedding[~block_ok] = 0.0
                yield start, {"embedding": embedding, "ok": block_ok}

        au_start = GEOMETRY_DIM
        quality_start = au_start + len(geo.AU_MEASUREMENTS)
        groups = {
            "geometry": [0, au_start],
            "au": [au_start, quality_start],
            "quality": [quality_start, SHAPE_DIM],
            "hog": [SHAPE_DIM, SHAPE_DIM + components],
        }
        # Keys distinct from the engine's identity attrs (`weights_sha256`, `preprocessing`,
        # `descriptor`), which decide whether a cached file is current. The details are one
        # JSON attribute; the fitted PCA itself (arrays) is stored under the file's `extra/`,
        # so the HOG columns of a new image are (hog - hog_pca_mean) @ hog_pca_components.T.
        hog_pca = {
            "n_components": components,
            "fit_rows": len(fit_rows),
            "train_rows_ok": train_rows_ok,
            "max_fit_rows": self.pca_max_rows,
            "seed": self.seed,
            "solver": pca.solver,
            "explained_variance": pca.explained,
            "components_sha256": hashlib.sha256(pca.components.tobytes()).hexdigest(),
        }
        attrs = {
            "landmark_model_sha256": _predictor_sha256(),
            "openface_descriptor": {
                "descriptor": "openface built-in (dlib 68 landmarks, geometry, HOG-PCA)",
                "landmarks": "dlib frontal detector (upsampled once below "
                f"{lm.UPSAMPLE_BELOW} px), else crop box {list(lm.CROP_BOX)}; "
                f"{lm.PREDICTOR_FILE}",
                "alignment": "similarity on rigid points to the reference shape",
                "au_measurements": list(geo.AU_MEASUREMENTS),
                "quality_columns": list(QUALITY_COLUMNS),
                "hog": hog.HOG_PARAMS,
                "hog_pca": hog_pca,
            },
            "hog_pca_mean": pca.mean,
            "hog_pca_components": pca.components,
        }
        return Finalized(SHAPE_DIM + components, groups, attrs, chunks())

    def apply_fitted(self, raw: np.ndarray, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """The rows of new images' raw descriptors with a file's fitted HOG PCA."""
        return embed(self._checked(raw), arrays["hog_pca_mean"], arrays["hog_pca_components"])

    def _checked(self, block: np.ndarray) -> np.ndarray:
        if block.ndim != 2 or block.shape[1] != self.raw_dim:
            raise ValueError(f"openface raw descriptors must be [N, {self.raw_dim}]")
        return block


@dataclass(frozen=True)
class HogPCA:
    """A PCA fitted on HOG rows: `mean` [D] and `components` [K, D] float32."""

    mean: np.ndarray
    components: np.ndarray
    explained: float  # fraction of the sample's variance the components keep
    solver: str

    @classmethod
    def fit(cls, pieces: Iterable[np.ndarray], n_rows: int, n_components: int, seed: int) -> HogPCA:
        """Fit on `n_rows` rows arriving as consecutive pieces, in memory bounded by the
        width: up to FULL_SVD_MAX_ROWS rows are held for an exact SVD; beyond, the
        covariance is summed over fixed blocks of rows and its leading eigenvectors are
        found by seeded subspace iteration."""
        if n_rows <= FULL_SVD_MAX_ROWS:
            from sklearn.decomposition import PCA

            held = np.concatenate(list(pieces))
            pca = PCA(n_components=n_components, svd_solver="full", random_state=seed).fit(held)
            return cls(
                pca.mean_.astype(np.float32),
                pca.components_.astype(np.float32),
                float(pca.explained_variance_ratio_.sum()),
                "full",
            )
        from scipy.linalg.blas import ssyrk

        shift = None
        total = count = 0
        scatter = product = None
        for _, block in reblock(counted(pieces), FIT_BLOCK_ROWS):
            if shift is None:  # centring on a first estimate keeps float32 products exact enough
                shift = block.mean(axis=0, dtype=np.float64).astype(np.float32)
                scatter = np.zeros((block.shape[1],) * 2, order="F")
                product = np.zeros((block.shape[1],) * 2, dtype=np.float32, order="F")
            centred = block - shift
            total = total + centred.sum(axis=0, dtype=np.float64)
            # Upper triangle of centred.T @ centred (half the work of a matmul), summed in f64.
            ssyrk(1.0, centred.T, beta=0.0, c=product, overwrite_c=True)
            scatter += product
            count += len(block)
        if count != n_rows or shift is None or scatter is None:
            raise ValueError(f"expected {n_rows} sample rows, read {count}")
        del product
        offset = total / count
        _to_covariance(scatter, offset, count)
        trace = float(np.trace(scatter))
        covariance = scatter.astype(np.float32)
        del scatter
        values, vectors = _leading_eigenvectors(covariance, n_components, seed)
        components = vectors.T
        # sklearn's sign convention: each component's largest entry is positive.
        signs = np.sign(components[np.arange(n_components), np.abs(components).argmax(axis=1)])
        components *= np.where(signs == 0, 1, signs)[:, None]
        return cls(
            (shift + offset).astype(np.float32),
            np.ascontiguousarray(components, dtype=np.float32),
            float(values.sum() / trace),
            f"covariance over blocks of {FIT_BLOCK_ROWS} rows, subspace iteration "
            f"({SUBSPACE_ITERATIONS} steps, {n_components}+{_oversample(n_components)} vectors)",
        )

    def save(self, path: Path, key: str) -> None:
        from affectpipe.fsutil import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(
                handle,
                key=np.array(key),
                mean=self.mean,
                components=self.components,
                explained=np.array(self.explained),
                solver=np.array(self.solver),
            )
            handle.flush()
            os.fsync(handle.fileno())

    @classmethod
    def load(cls, path: Path, key: str) -> HogPCA | None:
        """The PCA saved at `path` for `key`, or None (absent, unreadable, or another key)."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["key"]) != key:
                    return None
                return cls(
                    data["mean"],
                    data["components"],
                    float(data["explained"]),
                    str(data["solver"]),
                )
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None


def _to_covariance(scatter: np.ndarray, offset: np.ndarray, count: int, block: int = 512) -> None:
    """In place, by row blocks (no full-size temporary): the upper triangle of the scatter
    S of `count` rows whose mean is `offset` -> their unbiased covariance (S - n m m^T) / (n - 1),
    both triangles."""
    for start in range(0, len(scatter), block):
        stop = min(start + block, len(scatter))
        scatter[start:stop, :start] = scatter[:start, start:stop].T
        diagonal = scatter[start:stop, start:stop]
        diagonal[...] = np.triu(diagonal) + np.triu(diagonal, 1).T
        # Rows above are done: their columns here were copied in already finished.
        scatter[start:stop, start:] -= count * np.outer(offset[start:stop], offset[start:])
        scatter[start:stop, start:] /= count - 1


def _oversample(k: int) -> int:
    return k // 2 + 10


def _leading_eigenvectors(matrix: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` largest eigenvalues (descending) and eigenvectors [D, k] of a symmetric PSD
    matrix: seeded block subspace iteration, then Rayleigh-Ritz (a full `eigh` of a
    6084-wide matrix takes minutes; this takes seconds)."""
    width = min(len(matrix), k + _oversample(k))
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((len(matrix), width)).astype(matrix.dtype)
    for _ in range(SUBSPACE_ITERATIONS + 1):
        basis = _orthonormal(matrix @ basis)
    values, rotation = np.linalg.eigh((basis.T @ matrix @ basis).astype(np.float64))
    order = np.argsort(values)[::-1][:k]
    return values[order], basis.astype(np.float64) @ rotation[:, order]


def _orthonormal(columns: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the columns of a tall matrix: Cholesky QR, twice (all
    matrix products: LAPACK's QR of a 6084 x 200 matrix is ten times slower); a
    Householder QR when the columns are (nearly) dependent, e.g. fewer rows than vectors."""
    import scipy.linalg

    basis = columns
    try:
        for _ in range(2):
            wide = basis.astype(np.float64)
            factor = np.linalg.cholesky(wide.T @ wide)
            basis = scipy.linalg.solve_triangular(factor, wide.T, lower=True).T
        gram = basis.T @ basis
        if np.isfinite(gram).all() and np.abs(gram - np.eye(len(gram))).max() < 1e-6:
            return basis.astype(columns.dtype)
    except np.linalg.LinAlgError:
        pass
    return scipy.linalg.qr(columns, mode="economic")[0]


def embed(raw: np.ndarray, hog_mean: np.ndarray, hog_components: np.ndarray) -> np.ndarray:
    """Raw descriptors [N, raw_dim] -> embedding rows with the HOG projected on a fitted PCA.

    Used by `finalize` and by `pipeline predict` (with the PCA stored in the feature file),
    so new images get exactly the columns the heads were trained on.
    """
    raw = np.asarray(raw, dtype=np.float32)
    hog_part = (raw[:, SHAPE_DIM:] - hog_mean) @ hog_components.T
    return np.concatenate([raw[:, :SHAPE_DIM], hog_part.astype(np.float32)], axis=1)


@functools.cache
def _predictor_sha256() -> str:
    from affectpipe.fsutil import sha256_file

    return sha256_file(lm.predictor_path())

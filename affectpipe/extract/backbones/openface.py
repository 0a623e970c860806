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
6084 raw HOG values; `raw_dim` (6246) gives its length. `finalize` receives all of them at
once: about 25 KB per image, 5.4 GB for s-Aff-Wild2's 218k train, val and test images. The
PCA itself is fitted on at most `pca_max_rows` train rows.

Known to be weaker than real OpenFace: dlib's landmarks come from a regression-tree model
without OpenFace's CE-CLM patch experts, 3D face model or temporal tracking, so there is no
3D head pose or gaze (only the in-plane roll); HOG is Dalal-Triggs, not FHOG; and there are
no trained AU regressors: the AU columns are geometric proxies that heads learn to map to
AU labels.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import numpy as np

from affectpipe.errors import InputError
from affectpipe.extract.backbones import landmarks as lm
from affectpipe.extract.backbones import openface_geometry as geo
from affectpipe.extract.backbones import openface_hog as hog

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
# Rows per PCA transform call, to bound memory at s-Aff-Wild2 scale.
TRANSFORM_CHUNK = 8192
FULL_SVD_MAX_ROWS = 2000


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
        """Fit the HOG PCA on ok train rows and build the embedding [N, D] float32.

        Returns (embedding, groups {name: [start, stop]}, attrs for the feature file).
        """
        from sklearn.decomposition import PCA

        raw = np.asarray(raw, dtype=np.float32)
        ok = np.asarray(ok, dtype=bool)
        train_mask = np.asarray(train_mask, dtype=bool)
        if raw.ndim != 2 or raw.shape[1] != self.raw_dim:
            raise ValueError(f"openface raw descriptors must be [N, {self.raw_dim}]")
        if not (len(ok) == len(train_mask) == len(raw)):
            raise ValueError("raw, ok and train_mask must have the same number of rows")
        fit_rows = np.flatnonzero(ok & train_mask)
        if len(fit_rows) < 2:
            raise InputError(
                "the openface HOG PCA is fitted on training images only, and fewer than 2 "
                "train images could be processed: index the dataset with its train split"
            )
        if len(fit_rows) > self.pca_max_rows:
            rng = np.random.default_rng(self.seed)
            fit_rows = np.sort(rng.choice(fit_rows, self.pca_max_rows, replace=False))
        components = min(self.hog_components, len(fit_rows), hog.HOG_DIM)
        # An exact SVD is quicker for few rows; the seeded randomised one scales to many.
        solver = "full" if len(fit_rows) <= FULL_SVD_MAX_ROWS else "randomized"
        pca = PCA(n_components=components, svd_solver=solver, random_state=self.seed)
        pca.fit(raw[fit_rows, SHAPE_DIM:])

        mean = pca.mean_.astype(np.float32)
        basis = pca.components_.astype(np.float32)
        embedding = np.zeros((len(raw), SHAPE_DIM + components), dtype=np.float32)
        for start in range(0, len(raw), TRANSFORM_CHUNK):
            block = slice(start, start + TRANSFORM_CHUNK)
            embedding[block] = embed(raw[block], mean, basis)
        embedding[~ok] = 0.0

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
            "train_rows_ok": int((ok & train_mask).sum()),
            "max_fit_rows": self.pca_max_rows,
            "seed": self.seed,
            "svd_solver": solver,
            "explained_variance": float(pca.explained_variance_ratio_.sum()),
            "components_sha256": hashlib.sha256(
                basis.tobytes()
            ).hexdigest(),
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
            "hog_pca_mean": mean,
            "hog_pca_components": basis,
        }
        return embedding, groups, attrs


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

"""Input scaling shared by every head of a feature set: standardise, then (optionally) PCA-whiten.

Fitted on train rows only (a sample of them suffices for means, scales and the leading
principal components). Wide inputs (e.g. a 1290-dim embedding+logits) are projected on
their top principal components and whitened (a PCA: `_principal_components`): this makes the
iterative heads fast (they see ~100 well-conditioned columns instead of ~1,300 raw ones).
Narrow inputs are only standardised.

Small data: n train rows span at most n - 1 directions. The projection keeps no more
components than that, and drops components whose variance is negligible next to the
largest's: whitening such a component divides by ~0, which blew val/test features up by
~10^6 when they were kept (with the variance floored at 1e-6). Nor does it whiten unless
the train rows are many next to the width (`whiten_min_rows_per_column`): with few rows the
trailing sample eigenvalues are mostly noise and biased low, so whitening blows that noise
up to the size of the real signal. On 295 real faces, fer's embedding+logits (135 columns)
PCA-whitened to 128 took an MLP's held-out smile accuracy from 0.84 (the 128-column
embedding, only standardised) to 0.69; the same projection without whitening gives 0.84.
Unwhitened components share one scale, so their mean variance is 1.

Near-constant columns: a column whose train spread is negligible next to the typical
column's (`min_scale_ratio` of the median standard deviation) is only centred, not divided
by its spread. Standardising it would turn rounding jitter into a unit-variance train column
that the heads fit, and blow up val/test rows where it does vary: on 61 real photos one
OpenFace-style column with a train std of 7.5e-7 (0.11 on validation) reached 5 x 10^5
after standardising, and every validation probability was above 0.999.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits


class FeatureScaler(TransformerMixin, BaseEstimator):
    """Standardise columns; if the input is wider than `n_components` (or than the train rows
    support), project on the top principal components.

    n_components: PCs kept at most for wide inputs (0 or None: standardise only).
    whiten: scale each kept PC to unit variance, when there are at least
        `whiten_min_rows_per_column` train rows per input column (else one common scale).
    min_variance_ratio: drop PCs whose variance is below this share of the largest one's.
    min_scale_ratio: columns whose standard deviation is below this share of the median
        column's are centred only (near-constant in train: see the module docstring).
    """

    def __init__(
        self,
        n_components: int | None = 128,
        whiten: bool = True,
        min_variance_ratio: float = 1e-4,
        whiten_min_rows_per_column: float = 10.0,
        min_scale_ratio: float = 1e-3,
    ):
        self.n_components = n_components
        self.whiten = whiten
        self.min_variance_ratio = min_variance_ratio
        self.whiten_min_rows_per_column = whiten_min_rows_per_column
        self.min_scale_ratio = min_scale_ratio

    def fit(self, X: np.ndarray, y: object = None) -> FeatureScaler:
        """Fit on train rows X (a few ten thousand rows suffice: see `training`)."""
        X = np.asarray(X, dtype=np.float32)
        n_rows, width = X.shape
        if n_rows < 2:
            raise ValueError("FeatureScaler needs at least 2 training rows")
        mean = X.mean(axis=0, dtype=np.float64)
        scale = X.std(axis=0, dtype=np.float64)
        spread = scale[scale > 0]
        floor = self.min_scale_ratio * float(np.median(spread)) if len(spread) else 0.0
        # Constant and near-constant columns are only centred (see the module docstring).
        scale[scale < max(floor, 1e-8)] = 1.0
        self.mean_ = mean.astype(np.float32)
        self.scale_ = scale.astype(np.float32)
        self.projection_ = None
        self.offset_ = None
        self.note_ = ""
        self.n_features_in_ = width
        supported = n_rows - 1  # directions n centred rows can span
        if not self.n_components or width <= min(self.n_components, supported):
            return self
        self._fit_projection(X, mean, scale, min(self.n_components, supported))
        return self

    def _fit_projection(
        self, X: np.ndarray, mean: np.ndarray, scale: np.ndarray, n_keep: int
    ) -> None:
        standardised = (X - mean.astype(np.float32)) / scale.astype(np.float32)
        # One BLAS thread: the heads' fit workers use the other cores meanwhile.
        with threadpool_limits(1):
            centre, variance, components, total = _principal_components(standardised, n_keep)
        kept = int((variance > self.min_variance_ratio * variance[0]).sum())
        weights = components[:kept].T  # [width, kept], float64
        self.whitened_ = self.whiten and len(X) >= self.whiten_min_rows_per_column * X.shape[1]
        if self.whitened_:
            weights = weights / np.sqrt(variance[:kept])
        else:
            weights = weights / np.sqrt(variance[:kept].mean())
        # Fold standardisation and centring into one affine map: z = x @ W - b.
        self.projection_ = (weights / scale[:, None]).astype(np.float32)
        self.offset_ = ((mean / scale + centre) @ weights).astype(np.float32)
        self.explained_variance_ratio_ = float(variance[:kept].sum() / total)
        if kept < self.n_components:
            self.note_ = (
                f"kept {kept} of {self.n_components} principal components: {len(X)} train rows "
                f"of {X.shape[1]} columns support no more"
            )

    def transform(self, X: np.ndarray) -> np.ndarray:
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} columns, got {X.shape[1]}")
        X = np.asarray(X, dtype=np.float32)
        if self.projection_ is None:
            return (X - self.mean_) / self.scale_
        return X @ self.projection_ - self.offset_

    @property
    def n_features_out(self) -> int:
        return self.n_features_in_ if self.projection_ is None else self.projection_.shape[1]


def _principal_components(
    X: np.ndarray, n_keep: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The top `n_keep` principal components of X's rows: (column means [width]; variances
    [n_keep], descending; unit components [n_keep, width]; total variance), variances with
    n - 1 as divisor.

    Many rows: the covariance (one float32 product over the rows) and only its top
    eigenpairs (LAPACK's syevr), about twice as fast as scikit-learn's full decomposition
    of the covariance at 20,000 x 1,290. Few rows: scikit-learn's exact SVD. Each
    component's sign is fixed (largest entry positive), so a fit is reproducible.
    """
    n_rows, width = X.shape
    if n_rows < width:
        pca = PCA(n_components=n_keep, whiten=False, svd_solver="full").fit(X)
        mean = pca.mean_.astype(np.float64)
        variance = pca.explained_variance_.astype(np.float64)
        components = pca.components_.astype(np.float64)
        total = float(variance.sum() / pca.explained_variance_ratio_.sum())
    else:
        mean = X.mean(axis=0, dtype=np.float64)
        centred = X - mean.astype(np.float32)
        covariance = (centred.T @ centred).astype(np.float64) / (n_rows - 1)
        total = float(np.trace(covariance))
        variance, vectors = scipy.linalg.eigh(
            covariance, subset_by_index=[width - n_keep, width - 1], driver="evr"
        )
        variance, components = np.maximum(variance[::-1], 0.0), vectors[:, ::-1].T
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    return mean, variance, components * signs[:, None], total

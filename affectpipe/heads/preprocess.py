"""Input scaling shared by every head of a feature set: standardise, then (optionally) PCA-whiten.

Fitted on train rows only (a sample of them suffices for means, scales and the leading
principal components). Wide inputs (e.g. a 1290-dim embedding+logits) are projected on
their top principal components and whitened: this is what makes the iterative heads fast
(they see ~100 well-conditioned columns instead of ~1,300 raw ones). Narrow inputs are
only standardised.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from sklearn.base import BaseEstimator, TransformerMixin
from threadpoolctl import threadpool_limits


class FeatureScaler(TransformerMixin, BaseEstimator):
    """Standardise columns; if the input is wider than `n_components`, keep that many PCs.

    n_components: PCs kept for wide inputs (0 or None: standardise only).
    whiten: scale each kept PC to unit variance.
    """

    def __init__(self, n_components: int | None = 128, whiten: bool = True):
        self.n_components = n_components
        self.whiten = whiten

    def fit(self, X: np.ndarray, y: object = None) -> FeatureScaler:
        """Fit on train rows X (a few ten thousand rows suffice: see `training`)."""
        X = np.asarray(X, dtype=np.float32)
        if len(X) < 2:
            raise ValueError("FeatureScaler needs at least 2 training rows")
        mean = X.mean(axis=0, dtype=np.float64)
        centred = X - mean.astype(np.float32)
        width = X.shape[1]
        reduce = bool(self.n_components) and width > self.n_components
        if reduce:
            gram = (centred.T @ centred).astype(np.float64) / len(X)
            var = np.diag(gram).copy()
        else:
            var = np.einsum("ij,ij->j", centred, centred, dtype=np.float64) / len(X)
        scale = np.sqrt(var)
        scale[scale < 1e-8] = 1.0  # constant columns stay constant (zero after centring)
        self.mean_ = mean.astype(np.float32)
        self.scale_ = scale.astype(np.float32)
        self.projection_ = None
        self.offset_ = None
        if reduce:
            corr = gram / np.outer(scale, scale)
            # Only the top eigenpairs (cheaper than all), on one BLAS thread: the reduction to
            # tridiagonal form is memory-bound and threads only wait on each other.
            with threadpool_limits(1):
                eigval, eigvec = scipy.linalg.eigh(
                    corr, subset_by_index=[width - self.n_components, width - 1], driver="evr"
                )
            eigval, eigvec = eigval[::-1], eigvec[:, ::-1]
            # A sign convention makes the projection deterministic across BLAS builds.
            eigvec *= np.sign(eigvec[np.abs(eigvec).argmax(axis=0), range(eigvec.shape[1])])
            if self.whiten:
                eigvec = eigvec / np.sqrt(np.maximum(eigval, 1e-6))
            self.explained_variance_ratio_ = float(eigval.sum() / np.trace(corr))
            # Fold the standardisation into the projection: z = x @ W - b.
            weights = eigvec / scale[:, None]
            self.projection_ = weights.astype(np.float32)
            self.offset_ = (mean @ weights).astype(np.float32)
        self.n_features_in_ = width
        return self

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

"""A trained head as saved on disk: everything needed to predict, nothing from training.

``heads/<task>/<candidate>.joblib`` holds a `FittedHead`: the feature-set spec, the fitted
`FeatureScaler` (standardiser / PCA, fitted on train rows), the model (torch weights kept as
numpy arrays, rebuilt on CPU), the output column order and provenance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.fsutil import atomic_path
from affectpipe.heads.featuresets import load_feature_set, parse_feature_set
from affectpipe.heads.preprocess import FeatureScaler


@dataclass
class FittedHead:
    task: str
    candidate: str
    feature_set: str
    scaler: FeatureScaler
    model: Any
    output_columns: tuple[str, ...]
    provenance: dict[str, Any] = field(default_factory=dict)

    def predict_features(self, X: np.ndarray) -> np.ndarray:
        """Outputs ([N, len(output_columns)]) from raw feature-set columns X."""
        return self.model.predict_outputs(self.scaler.transform(X))

    def predict_manifest(self, paths: DatasetPaths, manifest: pd.DataFrame) -> pd.DataFrame:
        """Outputs for every manifest row from the cached features (NaN where not ok)."""
        loaded = load_feature_set(paths, parse_feature_set(self.feature_set), manifest)
        out = np.full((len(manifest), len(self.output_columns)), np.nan, dtype=np.float32)
        ok_rows = np.flatnonzero(loaded.ok)
        if getattr(self.model, "sequence_input", False):  # whole videos, in frame order
            from affectpipe.heads.temporal import sequence_groups

            Z = np.zeros((len(manifest), self.scaler.n_features_out), dtype=np.float32)
            Z[ok_rows] = self.scaler.transform(loaded.take(ok_rows))
            groups = sequence_groups(manifest["split"].to_numpy(), manifest["video"].to_numpy())
            frames = manifest["frame"].to_numpy(np.int64)
            out[:] = self.model.predict_outputs(Z, groups, frames, loaded.ok)
        else:
            out[ok_rows] = self.predict_features(loaded.take(ok_rows))
        return pd.DataFrame(out, columns=list(self.output_columns), index=manifest.index)

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            joblib.dump(self, tmp)


def load_head(path: str | Path) -> FittedHead:
    path = Path(path)
    if not path.exists():
        raise InputError(f"no trained head at {path}: run `pipeline heads` first")
    head = joblib.load(path)
    if not isinstance(head, FittedHead):
        raise InputError(f"{path} is not an affectpipe head")
    return head

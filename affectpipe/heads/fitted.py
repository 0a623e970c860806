"""A trained head as saved on disk: everything needed to predict, nothing from training.

A `FittedHead` (the feature-set spec, the fitted `FeatureScaler`, the model, the output
column order and provenance) is stored without pickle, so that loading a head (say, from a
run someone shared) cannot run code:

* ``heads/<task>/<candidate>.safetensors``: every array (scaler means and projection,
  linear coefficients, MLP weights), written first;
* ``heads/<task>/<candidate>.json``: the rest (`affectpipe.heads.storage` encoding: class
  names from a fixed registry, parameters, scalars, LightGBM text models) plus the sha256
  of the arrays file, written last, so a head is complete exactly when its JSON exists and
  its arrays match.

Heads from older versions (``.joblib``, a pickle) are refused, never unpickled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.featuresets import load_feature_set, parse_feature_set
from affectpipe.fsutil import atomic_path, sha256_file, sha256_regular, write_text_atomic
from affectpipe.heads.checks import HEAD_SCHEMA, HeadCheckError, check_head
from affectpipe.heads.preprocess import FeatureScaler
from affectpipe.heads.storage import Decoder, Encoder
from affectpipe.untrusted import check_schema, limits, read_json


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
        # Raw features are read and projected a chunk at a time; the model then sees every
        # ok row at once. Training predicts val/test rows in chunks of other bounds, so
        # outputs agree with the run's to float32 rounding (matmuls round by batch size).
        Z = np.zeros((len(manifest), self.scaler.n_features_out), dtype=np.float32)
        for start, block in loaded.scaled_blocks(self.scaler):
            Z[start : start + len(block)] = block
        if getattr(self.model, "sequence_input", False):  # whole videos, in frame order
            from affectpipe.heads.temporal import sequence_groups

            groups = sequence_groups(manifest["split"].to_numpy(), manifest["video"].to_numpy())
            frames = manifest["frame"].to_numpy(np.int64)
            out[:] = self.model.predict_outputs(Z, groups, frames, loaded.ok)
        else:
            out[ok_rows] = self.model.predict_outputs(Z[ok_rows])
        return pd.DataFrame(out, columns=list(self.output_columns), index=manifest.index)

    def save(self, path: Path) -> None:
        """Write ``path`` (the JSON, see the module docstring) and its arrays file."""
        from safetensors.numpy import save_file

        encoder = Encoder()
        document = {
            "format": FORMAT,
            "task": self.task,
            "candidate": self.candidate,
            "feature_set": self.feature_set,
            "output_columns": list(self.output_columns),
            "provenance": self.provenance,
            "scaler": encoder.encode(self.scaler),
            "model": encoder.encode(self.model),
        }
        arrays = arrays_path(path)
        with atomic_path(arrays) as tmp:
            save_file(encoder.tensors, str(tmp))
        document["arrays"] = {"file": arrays.name, "sha256": sha256_file(arrays)}
        write_text_atomic(path, json.dumps(document, indent=1, allow_nan=True) + "\n")


FORMAT = "affectpipe-head/1"
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")


def refuse_pickles(folder: str | Path) -> None:
    """InputError when a run (or exported run) folder holds a pickle file anywhere.

    Nothing here ever unpickles, but a pickle in a run someone shared is either an old run
    or a planted payload: either way the run is refused as a whole rather than half used.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if found:
        raise InputError(
            f"{found[0]} is a pickle file ({len(found)} in {folder}): loading pickles could run "
            f"code, so this run is refused; {_retrain_hint(found[0])} or delete the file"
        )


def arrays_path(path: Path) -> Path:
    """The safetensors file beside a head's JSON file."""
    return Path(path).with_suffix(".safetensors")


def _retrain_hint(path: Path) -> str:
    parents = Path(path).absolute().parents
    if len(parents) > 4 and parents[3].name == "runs":  # <dataset>/runs/<run>/heads/<task>/
        dataset, run = parents[4].name, parents[2].name
        return f"retrain it with `pipeline heads --dataset {dataset} --run {run}`"
    return "retrain it with `pipeline heads`"


def load_head(path: str | Path) -> FittedHead:
    """Load a head saved by `FittedHead.save`; never unpickles (old joblib heads are refused)."""
    from safetensors.numpy import load_file

    path = Path(path)
    pickled = [path] if path.suffix in PICKLE_SUFFIXES else []
    pickled += [path.with_suffix(s) for s in PICKLE_SUFFIXES if path.with_suffix(s).exists()]
    if pickled and (path.suffix in PICKLE_SUFFIXES or not path.exists()):
        raise InputError(
            f"{pickled[0]} is a pickled head (joblib, from an older affectpipe): loading it "
            f"could run code, so it is refused; {_retrain_hint(pickled[0])}"
        )
    if not path.exists():
        raise InputError(f"no trained head at {path}: run `pipeline heads` first")

    def bad(why: str) -> InputError:
        return InputError(f"{path}: not a valid affectpipe head ({why}); {_retrain_hint(path)}")

    caps = limits()
    try:
        document = read_json(path, caps.head_bytes)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise bad(f"format is not {FORMAT}")
        check_schema(document, HEAD_SCHEMA, path)
    except InputError as exc:
        raise bad(str(exc)) from None
    arrays = arrays_path(path)
    try:
        digest = sha256_regular(arrays, caps.run_bytes)
    except InputError:
        digest = None
    if digest != document["arrays"]["sha256"]:
        raise bad(f"{arrays.name} is missing or does not match the sha256 the head records")
    try:
        tensors = load_file(str(arrays))
        decoder = Decoder(tensors, str(path))
        head = FittedHead(
            task=str(document["task"]),
            candidate=str(document["candidate"]),
            feature_set=str(document["feature_set"]),
            scaler=decoder.decode(document["scaler"]),
            model=decoder.decode(document["model"]),
            output_columns=tuple(str(c) for c in document["output_columns"]),
            provenance=dict(document.get("provenance") or {}),
        )
        check_head(head)
    except InputError:
        raise
    except HeadCheckError as exc:
        raise bad(str(exc)) from None
    except Exception as exc:  # a malformed file fails in open-ended ways: all mean "invalid"
        raise bad(f"{type(exc).__name__}: {exc}") from exc
    return head

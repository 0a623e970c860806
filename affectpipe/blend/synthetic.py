"""Synthetic validation-scale predictions with known structure, for the bench and tests.

Labels vary smoothly within a video; each candidate sees them through its own bias, scale
and per-frame noise, so mixing candidates and smoothing along a video both pay off.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from affectpipe import predictions
from affectpipe.blend.smoothing import VideoOrder
from affectpipe.config import DEFAULT_RUN, DatasetPaths
from affectpipe.manifest import empty_manifest, write_manifest
from affectpipe.metrics import N_AU, N_EXPR
from affectpipe.schema import AU_COLUMNS, MTL_SUBMISSION_HEADER


@dataclass(frozen=True)
class SyntheticTask:
    candidates: np.ndarray  # [M, N, K]
    labels: np.ndarray
    groups: np.ndarray  # video code per row
    frames: np.ndarray

    @property
    def order(self) -> VideoOrder:
        return VideoOrder.of(self.groups, self.frames)


def _videos(rng: np.random.Generator, n_rows: int, n_videos: int) -> tuple[np.ndarray, ...]:
    sizes = rng.multinomial(n_rows - n_videos, np.full(n_videos, 1 / n_videos)) + 1
    groups = np.repeat(np.arange(n_videos), sizes)
    gaps = rng.integers(1, 8, size=n_rows)
    frames = np.concatenate([np.cumsum(gaps[groups == v]) for v in range(n_videos)])
    return groups, frames


def _smooth_signal(rng: np.random.Generator, groups: np.ndarray, n_dims: int) -> np.ndarray:
    """Per-video sums of slow sines: values in about [-1, 1], smooth along the rows."""
    out = np.empty((len(groups), n_dims), dtype=np.float64)
    for v in np.unique(groups):
        rows = np.flatnonzero(groups == v)
        t = np.arange(len(rows))[:, None]
        periods = rng.uniform(80, 600, size=(3, n_dims))
        phases = rng.uniform(0, 2 * np.pi, size=(3, n_dims))
        waves = np.sin(2 * np.pi * t[..., None] / periods.T[None] + phases.T[None])
        out[rows] = waves.mean(axis=2) * 1.4 + rng.normal(0, 0.2, size=n_dims)
    return np.clip(out, -1, 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def synthetic_task(
    task: str, *, n_rows: int = 26876, n_videos: int = 70, n_candidates: int = 7, seed: int = 0
) -> SyntheticTask:
    """Candidates and labels for `task` ('va', 'expr' or 'au') at the given scale."""
    # The same seed gives the same videos for every task, so tasks can share one manifest.
    groups, frames = _videos(np.random.default_rng(seed), n_rows, n_videos)
    rng = np.random.default_rng([seed, ("va", "expr", "au").index(task)])
    quality = np.linspace(1.0, 0.5, n_candidates)
    if task == "va":
        labels = _smooth_signal(rng, groups, 2).astype(np.float32)
        shared = rng.normal(0, 0.5, size=labels.shape)  # errors the candidates share
        cands = [
            q * labels
            + rng.normal(0, 0.15, size=2)
            + 0.6 * shared
            + rng.normal(0, 0.7, size=labels.shape)
            + 0.4 * _smooth_signal(rng, groups, 2)
            for q in quality
        ]
    elif task == "expr":
        latent = _smooth_signal(rng, groups, N_EXPR) + rng.normal(0, 0.3, size=N_EXPR)
        labels = latent.argmax(axis=1)
        labels[_smooth_signal(rng, groups, 1)[:, 0] > 0.3] = -1  # unlabelled stretches
        onehot = np.eye(N_EXPR)[latent.argmax(axis=1)]
        shared = rng.normal(0, 1.0, size=onehot.shape)
        cands = [
            _softmax(1.2 * q * onehot + shared + rng.normal(0, 1.2, size=onehot.shape))
            for q in quality
        ]
    elif task == "au":
        latent = _smooth_signal(rng, groups, N_AU) - rng.uniform(0.0, 0.6, size=N_AU)
        labels = (latent > 0).astype(np.int64)
        shared = rng.normal(0, 1.0, size=latent.shape)
        cands = [
            _sigmoid(
                2 * q * latent
                + shared
                + rng.normal(0, 1.5, size=latent.shape)
                - rng.normal(0.5, 0.5)
            )
            for q in quality
        ]
    else:
        raise ValueError(f"unknown task {task!r}")
    candidates = np.stack(cands).astype(np.float32)
    return SyntheticTask(candidates, labels, groups, frames.astype(np.int64))


def write_synthetic_run(
    paths: DatasetPaths,
    *,
    run: str = DEFAULT_RUN,
    n_rows: int = 1500,
    n_videos: int = 10,
    n_candidates: int = 3,
    seed: int = 4,
    nan_every: int = 37,
) -> DatasetPaths:
    """A manifest, prediction files for all three tasks and the run record (as `pipeline heads`
    writes them, through `affectpipe.predictions`), without images or feature files.

    The first fifth of the videos are train, the last fifth test (an MTL test list), the rest
    validation; every `nan_every`-th val/test row has NaN predictions (features not ok).
    """
    data = {
        task: synthetic_task(
            task, n_rows=n_rows, n_videos=n_videos, n_candidates=n_candidates, seed=seed
        )
        for task in ("va", "expr", "au")
    }
    groups, frames = data["va"].groups, data["va"].frames
    n_edge = max(1, n_videos // 5)
    split = np.where(groups < n_edge, "train", np.where(groups < n_videos - n_edge, "val", "test"))
    frame = empty_manifest(len(groups))
    frame["video"] = [f"video{g}" for g in groups]
    frame["frame"] = frames
    frame["split"] = split
    frame["image"] = [f"video{g}/{f:05d}.jpg" for g, f in zip(groups, frames, strict=True)]
    frame["has_image"] = True
    labelled = split != "test"
    va = np.where(labelled[:, None], data["va"].labels, np.nan)
    frame["valence"], frame["arousal"] = va[:, 0], va[:, 1]
    frame["expression"] = np.where(labelled, data["expr"].labels, -1)
    for a, column in enumerate(AU_COLUMNS):
        frame[column] = np.where(labelled, data["au"].labels[:, a], -1)
    test_list = {
        "path": "MTL.txt",
        "sha256": "",
        "style": "mtl",
        "header": MTL_SUBMISSION_HEADER,
        "trailing_comma": False,
    }
    metadata = {
        "dataset": paths.root.name,
        "format": "abaw-mtl",
        "image_roots": {},
        "sources": [],
        "options": {"synthetic_seed": seed},
        "package_version": "synthetic",
        "test_list": test_list,
    }
    # What went into the manifest, as `pipeline index` records it: predictions check it.
    identity = [n_rows, n_videos, n_candidates, seed, nan_every]
    metadata["fingerprint"] = hashlib.sha256(json.dumps(identity).encode()).hexdigest()
    write_manifest(frame, paths.manifest, metadata)
    rows = np.flatnonzero(split != "train")
    base = pd.DataFrame(
        {"row": rows, "image": frame["image"].to_numpy()[rows], "split": split[rows]}
    )
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for task, task_data in data.items():
        for m in range(n_candidates):
            values = task_data.candidates[m][rows].copy()
            values[::nan_every] = np.nan
            outputs.setdefault(task, {})[f"cand{m}"] = values
    predictions.write_prediction_run(paths, run, base, outputs, synthetic_seed=seed)
    return paths

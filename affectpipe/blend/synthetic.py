"""Synthetic validation-scale predictions with known structure, for the bench and tests.

Labels vary smoothly within a video; each candidate sees them through its own bias, scale
and per-frame noise, so mixing candidates and smoothing along a video both pay off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from affectpipe import predictions
from affectpipe.blend.smoothing import VideoOrder
from affectpipe.config import DEFAULT_RUN, DatasetPaths
from affectpipe.fsutil import json_sha256
from affectpipe.manifest import empty_manifest, write_manifest
from affectpipe.metrics import N_AU, N_EXPR
from affectpipe.schema import AU_COLUMNS, MTL_SUBMISSION_HEADER, TASK_HEADERS
from affectpipe.submission import TASK_FILE_NAMES
from affectpipe.tasks import get_task


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
    return groups, _cumsum_within(gaps, sizes)


def _cumsum_within(steps: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Cumulative sums restarting at every block of `sizes` consecutive entries."""
    total = np.cumsum(steps)
    starts = np.cumsum(sizes) - sizes
    return total - np.repeat(total[starts] - steps[starts], sizes)


def _smooth_signal(rng: np.random.Generator, groups: np.ndarray, n_dims: int) -> np.ndarray:
    """Per-video sums of slow sines: values in about [-1, 1], smooth along the rows."""
    videos, index = np.unique(groups, return_inverse=True)
    # Each video draws its periods, phases and offset in turn (the same stream whatever the
    # number of rows), then every row is computed at once from its position in its video.
    periods = np.empty((len(videos), 3, n_dims))
    phases = np.empty((len(videos), 3, n_dims))
    offsets = np.empty((len(videos), n_dims))
    for v in range(len(videos)):
        periods[v] = rng.uniform(80, 600, size=(3, n_dims))
        phases[v] = rng.uniform(0, 2 * np.pi, size=(3, n_dims))
        offsets[v] = rng.normal(0, 0.2, size=n_dims)
    order = np.argsort(index, kind="stable")
    sizes = np.bincount(index, minlength=len(videos))
    position = np.empty(len(groups), dtype=np.int64)
    position[order] = np.arange(len(groups)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    angle = 2 * np.pi * position[:, None]
    waves = np.zeros((len(groups), n_dims))
    for j in range(3):
        waves += np.sin(angle / periods[index, j] + phases[index, j])
    return np.clip(waves / 3 * 1.4 + offsets[index], -1, 1)


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
    candidates, labels = _task_values(task, rng, groups, n_candidates)
    return SyntheticTask(candidates, labels, groups, frames.astype(np.int64))


def _va_values(rng: np.random.Generator, groups: np.ndarray, quality: np.ndarray):
    labels = _smooth_signal(rng, groups, 2).astype(np.float32)
    shared = rng.normal(0, 0.5, size=labels.shape)  # errors the candidates share
    cands = (
        q * labels
        + rng.normal(0, 0.15, size=2)
        + 0.6 * shared
        + rng.normal(0, 0.7, size=labels.shape)
        + 0.4 * _smooth_signal(rng, groups, 2)
        for q in quality
    )
    return labels, cands


def _expr_values(rng: np.random.Generator, groups: np.ndarray, quality: np.ndarray):
    latent = _smooth_signal(rng, groups, N_EXPR) + rng.normal(0, 0.3, size=N_EXPR)
    labels = latent.argmax(axis=1)
    labels[_smooth_signal(rng, groups, 1)[:, 0] > 0.3] = -1  # unlabelled stretches
    onehot = np.eye(N_EXPR)[latent.argmax(axis=1)]
    shared = rng.normal(0, 1.0, size=onehot.shape)
    cands = (
        _softmax(1.2 * q * onehot + shared + rng.normal(0, 1.2, size=onehot.shape)) for q in quality
    )
    return labels, cands


def _au_values(rng: np.random.Generator, groups: np.ndarray, quality: np.ndarray):
    latent = _smooth_signal(rng, groups, N_AU) - rng.uniform(0.0, 0.6, size=N_AU)
    labels = (latent > 0).astype(np.int64)
    shared = rng.normal(0, 1.0, size=latent.shape)
    cands = (
        _sigmoid(
            2 * q * latent + shared + rng.normal(0, 1.5, size=latent.shape) - rng.normal(0.5, 0.5)
        )
        for q in quality
    )
    return labels, cands


# Labels and a lazy sequence of candidate outputs per task (drawn in this order).
_GENERATORS = {"va": _va_values, "expr": _expr_values, "au": _au_values}
# Videos labelled per task (all unless listed): a seventh of the videos lack VA labels, as the
# VA set annotates fewer videos.
_COVERAGE = {"va": lambda segment: segment % 7 != 3}


def _task_values(
    task: str, rng: np.random.Generator, groups: np.ndarray, n_candidates: int
) -> tuple[np.ndarray, np.ndarray]:
    """(candidates [M, N, K] float32, labels) for rows whose video is `groups`."""
    quality = np.linspace(1.0, 0.5, n_candidates)
    labels, cands = _GENERATORS[task](rng, groups, quality)
    # Candidates are generated one at a time (in draw order) straight into float32.
    width = get_task(task).n_outputs
    candidates = np.empty((n_candidates, len(groups), width), dtype=np.float32)
    for m, values in enumerate(cands):
        candidates[m] = values
    return candidates, labels


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
    metadata["fingerprint"] = json_sha256(identity)
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


# Rows of the ABAW5 per-task test lists (abaw-formats.md §3.4): their proportions.
ABAW5_TEST_ROWS = {"va": 927_210, "expr": 1_022_655, "au": 729_736}
VIDEO_FRAMES = (1000, 3000)  # frames per synthetic video: Aff-Wild2-like lengths


def _video_lengths(rng: np.random.Generator, n_rows: int) -> np.ndarray:
    """Video lengths within VIDEO_FRAMES summing to `n_rows` (the last one cut short)."""
    lengths = rng.integers(VIDEO_FRAMES[0], VIDEO_FRAMES[1] + 1, size=n_rows // 1000 + 1)
    ends = np.cumsum(lengths)
    count = int(np.searchsorted(ends, n_rows)) + 1
    lengths = lengths[:count].copy()
    lengths[-1] -= ends[count - 1] - n_rows
    return lengths


def write_scaled_run(
    paths: DatasetPaths,
    *,
    n_val: int,
    n_test: int,
    layout: str = "tasks",
    run: str = DEFAULT_RUN,
    n_candidates: int = 7,
    seed: int = 0,
    nan_every: int = 37,
    imageless: float = 0.02,
) -> DatasetPaths:
    """A full-size dataset for `pipeline bench blend`: manifest, prediction files of every
    task (as `pipeline heads` writes them) and the run record, without images or features.

    Videos of 1-3k frames; validation frames mostly consecutive; a few train videos (a tenth
    of the validation rows) give the label prior. `layout` "tasks": per-task test lists as
    `--format abaw-tasks` indexes them, `n_test` rows shared out in the ABAW5 lists'
    proportions, one line per frame of each listed video, a fraction `imageless` of them
    without an image (no prediction: interpolated); "mtl": one MTL list of `n_test` rows.
    Every `nan_every`-th val/test row has no prediction either.
    """
    if layout not in ("tasks", "mtl"):
        raise ValueError(f"unknown layout {layout!r}")
    rng = np.random.default_rng(seed)
    segments: list[tuple[str, np.ndarray, np.ndarray]] = []  # (split, lengths, video numbers)
    for split, n in (("train", max(n_val // 10, 1)), ("val", n_val)):
        lengths = _video_lengths(rng, n)
        segments.append((split, lengths, np.arange(len(lengths))))
    pool = _video_lengths(rng, n_test)  # test videos; the task lists share a prefix of them
    blocks: dict[str, int] = {}
    if layout == "tasks":
        share = np.array(list(ABAW5_TEST_ROWS.values()), dtype=np.float64)
        bounds = np.round(np.cumsum(share) / share.sum() * n_test).astype(np.int64)
        for task, quota in zip(ABAW5_TEST_ROWS, np.diff(bounds, prepend=0).tolist(), strict=True):
            ends = np.cumsum(pool)
            count = int(np.searchsorted(ends, quota)) + 1
            lengths = pool[:count].copy()
            lengths[-1] -= ends[count - 1] - quota
            segments.append(("test", lengths, np.arange(count)))
            blocks[task] = quota
    else:
        segments.append(("test", pool, np.arange(len(pool))))
    sizes = np.concatenate([lengths for _, lengths, _ in segments])
    n_rows = int(sizes.sum())
    segment = np.repeat(np.arange(len(sizes)), sizes)  # one code per listed video block
    split = np.repeat(np.concatenate([[s] * len(lengths) for s, lengths, _ in segments]), sizes)
    names = np.concatenate([[f"{s}{v}" for v in numbers] for s, _, numbers in segments])
    # Validation and train frames skip a frame now and then (no face); test lists every frame.
    steps = np.where((split != "test") & (rng.random(n_rows) < 0.02), 2, 1)
    frames = _cumsum_within(steps, sizes)
    has_image = (split != "test") | (rng.random(n_rows) >= imageless)
    video = np.repeat(names, sizes)
    frame = empty_manifest(n_rows)
    frame["video"] = video
    frame["frame"] = frames
    frame["split"] = split
    keys = zip(video.tolist(), frames.tolist(), strict=True)
    frame["image"] = [f"{v}/{f:05d}.jpg" for v, f in keys]
    frame["has_image"] = has_image
    labelled = split != "test"
    rows = np.flatnonzero(split != "train")
    missing = ~has_image[rows]
    missing[::nan_every] = True
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for task in ("va", "expr", "au"):
        task_rng = np.random.default_rng([seed, ("va", "expr", "au").index(task)])
        candidates, labels = _task_values(task, task_rng, segment, n_candidates)
        spec = get_task(task)
        keep = labelled & _COVERAGE.get(task, lambda seg: True)(segment)
        columns = np.asarray(labels).reshape(n_rows, -1)
        missing_label = np.nan if spec.is_regression else -1
        for j, column in enumerate(spec.label_columns):
            frame[column] = np.where(keep, columns[:, j], missing_label)
        outputs[task] = {}
        for m in range(n_candidates):
            values = candidates[m][rows]
            values[missing] = np.nan
            outputs[task][f"cand{m}"] = values
        del candidates
    metadata: dict = {
        "dataset": paths.root.name,
        "format": "abaw-tasks" if layout == "tasks" else "abaw-mtl",
        "image_roots": {},
        "sources": [],
        "options": {"synthetic_seed": seed},
        "package_version": "synthetic",
    }
    first_test = int(np.flatnonzero(~labelled)[0]) if (~labelled).any() else n_rows
    if layout == "tasks":
        metadata["test_list"] = None
        metadata["test_lists"] = {}
        start = first_test
        for task, quota in blocks.items():
            metadata["test_lists"][task] = {
                "path": f"{TASK_FILE_NAMES[task]}_test_set_example.txt",
                "sha256": "",
                "style": "frame-lines",
                "header": f"image_location,{TASK_HEADERS[task]}",
                "trailing_comma": True,
                "rows": [start, start + quota],
            }
            start += quota
    else:
        metadata["test_list"] = {
            "path": "MTL.txt",
            "sha256": "",
            "style": "mtl",
            "header": MTL_SUBMISSION_HEADER,
            "trailing_comma": False,
        }
    identity = ["scaled", n_val, n_test, layout, n_candidates, seed, nan_every, imageless]
    metadata["fingerprint"] = json_sha256(identity)
    write_manifest(frame, paths.manifest, metadata)
    base = pd.DataFrame(
        {"row": rows, "image": frame["image"].to_numpy()[rows], "split": split[rows]}
    )
    predictions.write_prediction_run(paths, run, base, outputs, synthetic_seed=seed)
    return paths

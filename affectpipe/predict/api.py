"""`Predictor`: a trained run applied to new face crops, folders and videos.

    from affectpipe import Predictor
    predictor = Predictor.load("cache", "faces")          # or Predictor.from_export("run.tar.gz")
    table = predictor.predict(["photos/", "clip.mp4"])     # pandas DataFrame, one row per frame

Each image goes through the run's backbones exactly as `pipeline extract` ran them (same
weights, checked by sha256; same decoding and preprocessing; the OpenFace-style descriptor
with its stored HOG PCA, never refitted), then the heads the run's blend weights, then the
tuned blend through `affectpipe.blend.tuning.apply_tuned` (the function `pipeline blend` uses
for its submission): weights, smoothing along the kept frames of each video, calibration /
offsets / thresholds. Every image or frame is first checked for a face
(`affectpipe.predict.face_check`: the fast crop check, else detection and alignment; `detect=True`
always detects, `assume_aligned=True` skips the check); the `face_check` column says which
check decided. Detection (`detector`, default MTCNN) gives one row per face, with its box,
5 landmarks and score; in videos faces are tracked (`face_id`, `affectpipe.faces.tracking`)
and smoothing runs along each track. Image files are decoded (and checked) in `workers`
DataLoader processes, with the extract stage's decoding (`DecodeDataset.sample`); video
frames are decoded in this process and detected in batches on `device`.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affectpipe.config import DEFAULT_RUN, DatasetPaths
from affectpipe.errors import InputError
from affectpipe.extract import ComputedFeatures, FeatureComputer, collate, die_with_parent, load_rgb
from affectpipe.faces.detection import POINT_NAMES, Detection
from affectpipe.faces.tracking import Tracker, VideoFaces
from affectpipe.machine import default_workers
from affectpipe.predict.face_check import DetectorChoice, FaceResult, face_mode, find_faces
from affectpipe.predict.inputs import expand, is_video, video_frames
from affectpipe.predict.options import PredictOptions
from affectpipe.predict.runfiles import (
    BackboneRecord,
    RunBundle,
    TaskPlan,
    load_export,
    load_from_cache,
)
from affectpipe.schema import PRED_COLUMNS


class Predictor:
    """Predictions of a trained run for new images and videos (see the module docstring).

    Parameters: `device` ("cpu", "cuda", "cuda:1"), `batch_size`, `detect` (find and align
    every face of each frame first), `detector` (a registered face detector:
    `affectpipe.faces.registry.names()`), `assume_aligned` (take every image as an aligned
    face crop: no face check), `every` (keep every N-th video frame), `redetect` (in videos,
    a full detection every N-th kept frame, in between a search around the previous faces:
    `affectpipe.faces.tracking.VideoFaces`), `weights`
    (backbone, detector net or weights name -> local weights file), `workers` (processes
    decoding image files while the models run; 0: in this process; None:
    `machine.default_workers(device)`, as the CLI), `progress` (a frames/s bar), `runtime`
    (the CNNs' runtime: ``torch``, ``onnx`` or ``auto``, as for `pipeline extract
    --runtime`; `runtimes` says which each backbone got). The defaults are
    `PredictOptions`'.
    """

    def __init__(
        self,
        bundle: RunBundle,
        *,
        device: str = "cpu",
        batch_size: int = PredictOptions.batch_size,
        detect: bool = PredictOptions.detect,
        detector: str = PredictOptions.detector,
        assume_aligned: bool = PredictOptions.assume_aligned,
        every: int = PredictOptions.every,
        redetect: int = PredictOptions.redetect,
        weights: Mapping[str, Path] | None = None,
        workers: int | None = PredictOptions.workers,
        progress: bool = False,
        runtime: str = PredictOptions.runtime,
    ) -> None:
        workers = default_workers(device) if workers is None else workers
        if every < 1 or batch_size < 1 or redetect < 1 or workers < 0:
            raise InputError(
                "every, redetect and batch_size must be at least 1, workers at least 0"
            )
        for task, plan in bundle.tasks.items():
            for head in plan.heads:
                if getattr(head.model, "sequence_input", False):
                    raise InputError(
                        f"{bundle.source}: {task} head {head.candidate} is a temporal (sequence) "
                        "head, which predict does not apply yet: blend without it"
                    )
        self.bundle = bundle
        self.device = device
        self.batch_size = batch_size
        self.face_mode = face_mode(detect, assume_aligned)
        self.detector = DetectorChoice.of(detector, device, weights)
        self.every = every
        self.redetect = redetect
        self.weights = dict(weights or {})
        self.workers = workers
        self.progress = progress
        self.runtime = runtime
        self._engine: FeatureComputer | None = None
        # The first face crop of each video track of the last `predict` ((source, face_id) ->
        # aligned crop): the thumbnails of `--plot`.
        self.thumbnails: dict[tuple[str, int], Any] = {}

    @classmethod
    def load(
        cls, cache_dir: str | Path, dataset: str, run: str = DEFAULT_RUN, **options: Any
    ) -> Predictor:
        """The run `run` of dataset `dataset` in `cache_dir` (after `pipeline blend`)."""
        paths = DatasetPaths.of(cache_dir, dataset)
        if not paths.manifest.exists():
            raise InputError(f"no dataset {dataset!r} in {cache_dir}: run `pipeline index`")
        return cls(load_from_cache(paths, run), **options)

    @classmethod
    def from_export(cls, path: str | Path, **options: Any) -> Predictor:
        """A run written by `pipeline export-run` (folder or .tar.gz)."""
        return cls(load_export(Path(path)), **options)

    @property
    def tasks(self) -> list[str]:
        return list(self.bundle.tasks)

    @property
    def runtimes(self) -> dict[str, str]:
        """The runtime (torch or onnx) of each CNN backbone; builds the models if needed."""
        return {name: job.runtime for name, job in self._get_engine().models.items()}

    def predict(self, inputs: str | Path | Sequence[str | Path]) -> pd.DataFrame:
        """One row per face of each image / kept video frame (one row without a face where
        none was found): `source`, `frame` (1-based) and `timestamp` (seconds) when videos
        are given, `face_id` (the face's track in its video, its rank by size in an image;
        -1 without a face), `face_ok`, `face_check` (which check decided it), `reason` (why a
        row has no usable face; empty where it has one), the detection (`DETECTION_COLUMNS`:
        box, 5 landmarks, score; empty where no detector ran), then the run's task columns."""
        if isinstance(inputs, str | Path):
            inputs = [inputs]
        files = expand(inputs)
        engine = self._get_engine()
        self.thumbnails = {}
        from tqdm.auto import tqdm

        bar = tqdm(desc="predict", unit="frame", disable=not self.progress)  # frames/s
        rows, blocks = _Rows([], [], [], [], [], []), []
        with bar:
            for video, group in itertools.groupby(files, key=is_video):
                for batch, features in self._batches(engine, video, group):
                    rows.extend(batch)
                    blocks.append(features)
                    bar.update(len(batch.sources))
        sources = rows.sources
        features = ComputedFeatures(
            {
                b: {
                    k: np.concatenate([x.arrays[b][k] for x in blocks]) for k in blocks[0].arrays[b]
                }
                for b in blocks[0].arrays
            },
            np.concatenate([x.ok for x in blocks]),
            [r for x in blocks for r in x.reasons],
        )
        table = pd.DataFrame({"source": sources})
        frame_numbers = np.asarray(rows.frames, dtype=np.int64)
        face_ids = np.asarray(rows.face_ids, dtype=np.int64)
        if any(is_video(f) for f in files):
            table["frame"] = frame_numbers
            table["timestamp"] = np.asarray(rows.times, dtype=np.float64)
        table["face_id"] = face_ids
        table["face_ok"] = features.ok
        table["face_check"] = rows.checks
        table["reason"] = pd.array(features.reasons, dtype="string")
        for name, values in detection_columns(rows.detections).items():
            table[name] = values
        for plan in self.bundle.tasks.values():
            columns = _task_columns(
                plan, features, self.bundle.backbones, sources, frame_numbers, face_ids
            )
            for name, values in columns.items():
                table[name] = values
        return table

    def _batches(
        self, engine: FeatureComputer, video: bool, files: Iterable[Path]
    ) -> Iterator[tuple[_Rows, ComputedFeatures]]:
        """(rows, features) per batch of consecutive image files or videos."""
        if video:
            for batch in _batches(self._video_faces(files), self.batch_size):
                samples = [
                    engine.dataset.sample(i, face.image, face.reason)
                    for i, (_, _, face) in enumerate(batch)
                ]
                rows = _Rows(
                    [f.source for f, _, _ in batch],
                    [f.frame for f, _, _ in batch],
                    [f.time for f, _, _ in batch],
                    [c.check for _, _, c in batch],
                    [i for _, i, _ in batch],
                    [c.detection for _, _, c in batch],
                )
                yield rows, engine.features(collate(samples))
            return
        import torch

        images = _ImageSamples(
            [str(p) for p in files],
            engine.dataset,
            self.face_mode,
            replace(self.detector, device="cpu"),
        )
        loader = torch.utils.data.DataLoader(
            images,
            batch_size=self.batch_size,
            num_workers=self.workers,
            collate_fn=_collate_checked,
            prefetch_factor=4 if self.workers else None,
            worker_init_fn=functools.partial(die_with_parent, os.getpid()),
        )
        for batch, faces in loader:
            n = len(batch.indices)
            rows = _Rows(
                [images.paths[i] for i in batch.indices],
                [-1] * n,
                [np.nan] * n,
                [f.check for f, _ in faces],
                [i for _, i in faces],
                [f.detection for f, _ in faces],
            )
            yield rows, engine.features(batch)

    def _video_faces(self, files: Iterable[Path]) -> Iterator[tuple[Any, int, FaceResult]]:
        """(frame, face_id, face) for every face of every kept frame of each video; frames
        are detected in groups (one batch on `device`) and each video's faces tracked."""
        for path in files:
            tracker = Tracker()
            detector = VideoFaces(self.detector.load, self.redetect, self.detector.face_score)
            for frames in _pixel_batches(video_frames(path, self.every), self.batch_size):
                found = find_faces(
                    [f.image for f in frames],
                    [f.reason for f in frames],
                    self.face_mode,
                    detector,
                    self.detector.face_score,
                )
                for frame, faces in zip(frames, found, strict=True):
                    tracked = [f for f in faces if f.detection is not None]
                    ids = iter(tracker.update([f.detection for f in tracked]))
                    for face in faces:
                        face_id = (
                            next(ids)
                            if face.detection is not None
                            else (0 if face.image is not None else -1)
                        )
                        if face.image is not None:
                            self.thumbnails.setdefault((str(path), face_id), face.image)
                        yield frame, face_id, face

    def _get_engine(self) -> FeatureComputer:
        if self._engine is None:
            from affectpipe.featuresets import parse_feature_set

            spatial = {
                b
                for plan in self.bundle.tasks.values()
                for head in plan.heads
                for b, part in parse_feature_set(head.feature_set).parts
                if part == "spatial"
            }
            self._engine = FeatureComputer(
                self.bundle.backbones, self.device, self.weights, spatial, self.runtime
            )
        return self._engine


@dataclass
class _Rows:
    """The output's leading columns for one batch (frame -1 and time NaN for image files)."""

    sources: list[str]
    frames: list[int]
    times: list[float]
    checks: list[str]
    face_ids: list[int]
    detections: list[Detection | None]

    def extend(self, other: _Rows) -> None:
        for name, values in vars(other).items():
            getattr(self, name).extend(values)


DETECTION_COLUMNS = (
    "box_x1",
    "box_y1",
    "box_x2",
    "box_y2",
    *(f"{point}_{axis}" for point in POINT_NAMES for axis in "xy"),
    "det_score",
)


def detection_columns(detections: Sequence[Detection | None]) -> dict[str, np.ndarray]:
    """`DETECTION_COLUMNS` of each row (NaN where no detector ran)."""
    values = np.full((len(detections), len(DETECTION_COLUMNS)), np.nan)
    for i, d in enumerate(detections):
        if d is not None:
            values[i] = [*d.box, *np.asarray(d.points).reshape(-1), d.score]
    return {name: values[:, k] for k, name in enumerate(DETECTION_COLUMNS)}


@dataclass
class _ImageSamples:
    """Image files decoded as extraction decodes them (`load_rgb`), checked for a face
    (`find_faces` under `face_mode`), then prepared by `DecodeDataset.sample`; a DataLoader
    dataset, so this runs in its workers. An item is one (sample, (face, face_id)) per face
    found (face_id: its rank by size), or one without a face."""

    paths: list[str]
    decode: Any  # DecodeDataset
    face_mode: str
    detector: DetectorChoice

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> list[tuple[Any, tuple[FaceResult, int]]]:
        image, reason = load_rgb(self.paths[index], self.decode.draft_side)
        faces = find_faces(
            [image], [reason], self.face_mode, self.detector, self.detector.face_score
        )[0]
        return [
            (self.decode.sample(index, f.image, f.reason), (f, rank if f.image is not None else -1))
            for rank, f in enumerate(faces)
        ]


def _collate_checked(
    items: Sequence[list[tuple[Any, tuple[FaceResult, int]]]],
) -> tuple[Any, list[tuple[FaceResult, int]]]:
    """`collate` for `_ImageSamples` items (module-level so worker processes can pickle it)."""
    flat = [pair for item in items for pair in item]
    return collate([sample for sample, _ in flat]), [face for _, face in flat]


def _batches(stream: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(stream)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


DETECT_PIXELS = 1 << 25  # decoded pixels held at once for one detection batch (~100 MB RGB)


def _pixel_batches(frames: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Up to `size` consecutive frames, fewer where they would hold over DETECT_PIXELS."""
    batch: list[Any] = []
    pixels = 0
    for frame in frames:
        area = frame.image.width * frame.image.height if frame.image is not None else 0
        if batch and (len(batch) == size or pixels + area > DETECT_PIXELS):
            yield batch
            batch, pixels = [], 0
        batch.append(frame)
        pixels += area
    if batch:
        yield batch


def _part(record: BackboneRecord, arrays: dict[str, np.ndarray], part: str) -> np.ndarray:
    if part in arrays:
        return arrays[part]
    if part in record.groups:
        start, stop = record.groups[part]
        return arrays["embedding"][:, start:stop]
    raise InputError(f"{record.name}: no feature part {part!r}")


def _stage_inputs(
    plan: TaskPlan, features: ComputedFeatures, records: dict[str, BackboneRecord], rows: np.ndarray
) -> dict[str, Any]:
    """What each blend stage in force reads on `rows` (e.g. the gating backbone's own
    expression probabilities)."""
    from affectpipe.blend.stage_registry import PredictInputs, get_blend_stage

    on_rows = PredictInputs(features, records, rows)
    return {
        name: get_blend_stage(name).predict_inputs(params, on_rows)
        for name, params in plan.blend.in_force.items()
    }


def _task_columns(
    plan: TaskPlan,
    features: ComputedFeatures,
    records: dict[str, BackboneRecord],
    sources: list[str],
    frame_numbers: np.ndarray,
    face_ids: np.ndarray,
) -> dict[str, np.ndarray]:
    from affectpipe.blend.smoothing import VideoOrder, group_codes
    from affectpipe.blend.tuning import apply_tuned, take_inputs
    from affectpipe.featuresets import parse_feature_set

    ok = features.ok
    rows = np.flatnonzero(ok)
    width = len(PRED_COLUMNS[plan.rules.name])
    candidates = np.zeros((len(plan.heads), len(rows), width), dtype=np.float32)
    for m, head in enumerate(plan.heads):
        blocks = [
            _part(records[b], features.arrays[b], p)[rows]
            for b, p in parse_feature_set(head.feature_set).parts
        ]
        X = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=1)
        if X.shape[1] != head.scaler.n_features_in_:
            raise InputError(
                f"head {head.candidate}: its scaler takes "
                f"{head.scaler.n_features_in_} columns, {head.feature_set} has "
                f"{X.shape[1]}"
            )
        if len(rows):
            candidates[m] = head.predict_features(X)
    if not np.isfinite(candidates).all():  # finite features in: a broken head
        raise InputError(f"the run's {plan.rules.name} heads give non-finite outputs")
    inputs = _stage_inputs(plan, features, records, rows)
    continuous = np.full((len(ok), width), np.nan, dtype=np.float32)
    decided: np.ndarray | None = None
    frame_rows = frame_numbers[rows] >= 0  # video frames are smoothed per face track
    for subset, ordered in ((~frame_rows, False), (frame_rows, True)):
        if ordered and not subset.any():
            continue
        order = None
        if ordered:
            chosen = rows[subset]
            tracks = group_codes(np.asarray(sources)[chosen], face_ids[chosen])
            order = VideoOrder.of(tracks, frame_numbers[chosen])
        values, outputs = apply_tuned(
            plan.rules,
            plan.blend,
            candidates[:, subset],
            order,
            take_inputs(inputs, subset),
        )
        if decided is None:  # rows without a face: NaN values, code -1
            missing = np.nan if outputs.dtype.kind == "f" else -1
            decided = np.full((len(ok),) + outputs.shape[1:], missing, dtype=outputs.dtype)
        continuous[rows[subset]] = values
        decided[rows[subset]] = outputs
    return plan.rules.table(continuous, decided)

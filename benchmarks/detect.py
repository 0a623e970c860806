"""Face detection benchmark for docs/benchmarks.md: recall, false positives, landmark error and
frames/s of the registered detectors (`affectpipe.faces.registry`) on generated frames.

Frames (seeded): 640x480, a smooth random colour background, 1 to 3 real faces (the photos
under FACES, e.g. shared/data/realfaces-smile/images) pasted without overlap at a side drawn
from SIDES, anywhere in the frame, rotated by up to +-MAX_ANGLE degrees. A face counts as
found when a detection overlaps its pasted square with IoU > 0.3 (the photo square is larger
than a detector's face box); every other detection is a false positive.

Landmark error: the reference points of each photo are MTCNN's on the photo itself, upscaled
to 336 px and centred on a grey 480x480 canvas, mapped through the known paste transform
(scale, rotation, offset). It is the mean point distance over the inter-ocular distance
(NME); it is biased towards MTCNN's definition of the points (dlib's eye centres are the
mean of 6 eye-contour points, not a pupil). Frames/s: a 40-frame clip of one 120 px face
drifting 2 px a frame, one frame at a time (`--redetect` as predict runs it).

    python benchmarks/detect.py ../shared/data/realfaces-smile/images [--frames 120] [--seed 0] \\
        [--device cuda]

MTCNN runs with `affectpipe.faces.mtcnn.CPU_THREADS` intra-op threads on CPU.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from affectpipe.faces import registry
from affectpipe.faces.detection import box_iou
from affectpipe.faces.mtcnn import MTCNN
from affectpipe.faces.tracking import VideoFaces

SIZE = (640, 480)
SIDES = (48, 64, 96, 128, 200)
MAX_ANGLE = 15.0
REFERENCE_SIDE = 336


def _background(rng: np.random.Generator) -> Image.Image:
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return (
        Image.fromarray(small)
        .resize(SIZE, Image.Resampling.BICUBIC)
        .filter(ImageFilter.GaussianBlur(8))
    )


def _paste(
    frame: Image.Image, photo: Image.Image, side: int, angle: float, corner: tuple[int, int]
) -> np.ndarray:
    """Paste photo at `side` px rotated by `angle` (degrees, counter-clockwise) with its rotated
    square's top-left at `corner`; returns the [2, 3] photo -> frame point transform."""
    scaled = photo.resize((side, side), Image.Resampling.BICUBIC).convert("RGBA")
    rotated = scaled.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    frame.paste(rotated, corner, rotated)
    theta = np.deg2rad(angle)
    rotation = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
    scale = side / photo.width
    centre_in = np.array([side / 2, side / 2])
    centre_out = np.array(corner) + np.array(rotated.size) / 2
    linear = rotation * scale
    return np.hstack([linear, (centre_out - rotation @ centre_in)[:, None]])


def _reference_points(mtcnn: MTCNN, photo: Image.Image) -> np.ndarray | None:
    canvas = Image.new("RGB", (480, 480), (128, 128, 128))
    offset = (480 - REFERENCE_SIDE) // 2
    canvas.paste(
        photo.resize((REFERENCE_SIDE, REFERENCE_SIDE), Image.Resampling.BICUBIC), (offset, offset)
    )
    faces = mtcnn.detect([np.asarray(canvas)])[0]
    if not faces:
        return None
    return (faces[0].points - offset) * photo.width / REFERENCE_SIDE


def make_frames(
    photos: list[Image.Image], points: list[np.ndarray], n: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """n frames: (pixels, pasted squares [k, 4], reference points [k, 5, 2], sides [k])."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        frame = _background(rng)
        squares, marks, sides = [], [], []
        for _ in range(int(rng.integers(1, 4))):
            side = int(rng.choice(SIDES))
            angle = float(rng.uniform(-MAX_ANGLE, MAX_ANGLE))
            extent = int(
                np.ceil(side * (abs(np.cos(np.deg2rad(angle))) + abs(np.sin(np.deg2rad(angle)))))
            )
            for _ in range(50):  # a free place, else fewer faces
                x = int(rng.integers(0, SIZE[0] - extent))
                y = int(rng.integers(0, SIZE[1] - extent))
                square = np.array([x, y, x + extent, y + extent], float)
                if not squares or box_iou(square, np.array(squares)).max() == 0:
                    break
            else:
                continue
            k = int(rng.integers(len(photos)))
            matrix = _paste(frame, photos[k], side, angle, (x, y))
            squares.append(square)
            marks.append(points[k] @ matrix[:, :2].T + matrix[:, 2])
            sides.append(side)
        frames.append((np.asarray(frame), np.array(squares), np.array(marks), np.array(sides)))
    return frames


def score(detector, frames) -> dict:
    found = [
        faces
        for i in range(0, len(frames), 16)
        for faces in detector.detect([f[0] for f in frames[i : i + 16]])
    ]
    hits, false_positives, errors = {s: [0, 0] for s in SIDES}, 0, []
    for (_, squares, marks, sides), faces in zip(frames, found, strict=True):
        boxes = np.array([f.box for f in faces]).reshape(-1, 4)
        iou = box_iou(squares, boxes) if len(boxes) else np.zeros((len(squares), 0))
        used = set()
        for t in np.argsort(-iou.max(axis=1) if iou.size else np.zeros(len(squares))):
            best = [d for d in np.argsort(-iou[t]) if iou[t, d] > 0.3 and d not in used]
            hits[int(sides[t])][1] += 1
            if best:
                used.add(best[0])
                hits[int(sides[t])][0] += 1
                interocular = np.linalg.norm(marks[t][0] - marks[t][1])
                errors.append(
                    np.linalg.norm(faces[best[0]].points - marks[t], axis=1).mean() / interocular
                )
        false_positives += len(faces) - len(used)
    total = sum(h for h, _ in hits.values()), sum(n for _, n in hits.values())
    return {
        "recall": {s: h / n if n else float("nan") for s, (h, n) in hits.items()},
        "recall_all": total[0] / total[1],
        "fp_per_frame": false_positives / len(frames),
        "nme_median": float(np.median(errors)),
        "nme_mean": float(np.mean(errors)),
    }


def frames_per_second(detector, frames: list[np.ndarray], redetect: int = 1) -> float:
    """Frames/s over a clip, one frame at a time, as predict runs a video (`VideoFaces`)."""
    video = VideoFaces(lambda: detector, redetect)
    video.detect(frames[:1])
    start = time.perf_counter()
    for frame in frames:
        video.detect([frame])
    return len(frames) / (time.perf_counter() - start)


def one_face_clip(photo: Image.Image, seed: int, n: int = 40) -> list[np.ndarray]:
    """n frames of one 120 px face drifting 2 px a frame over a fixed background."""
    background = _background(np.random.default_rng(seed))
    clip = []
    for k in range(n):
        canvas = background.copy()
        _paste(canvas, photo, 120, 0.0, (220 + 2 * k, 180))
        clip.append(np.asarray(canvas))
    return clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("faces", type=Path)
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch

    paths = sorted(args.faces.glob("*.jpg"))
    photos = [Image.open(p).convert("RGB") for p in paths]
    mtcnn = registry.get("mtcnn").build(args.device)
    points = [_reference_points(mtcnn, p) for p in photos]
    keep = [i for i, p in enumerate(points) if p is not None]
    print(
        f"{len(keep)} of {len(photos)} photos have reference points; torch threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} cores"
    )
    photos, points = [photos[i] for i in keep], [points[i] for i in keep]
    frames = make_frames(photos, points, args.frames, args.seed)
    weights = {net: e.name for net, e in registry.get("mtcnn").weights.items()}
    from affectpipe.extract.weights import resolve_weights

    files = {net: resolve_weights(name).path for net, name in weights.items()}
    detectors = {
        "mtcnn": mtcnn,
        "mtcnn min_face=40": MTCNN(files, args.device, min_face=40),
        "dlib-hog": registry.get("dlib-hog").build(),
    }
    clip = one_face_clip(photos[0], args.seed)
    runs = [("mtcnn", 1), ("mtcnn min_face=40", 1), ("mtcnn", 10), ("dlib-hog", 1)]
    for name, redetect in runs:
        detector = detectors[name]
        load = os.getloadavg()[0]
        fps = frames_per_second(detector, clip, redetect)
        if redetect > 1:
            print(
                f"{name} --redetect {redetect}: {fps:.1f} frames/s at 640x480 (one face); "
                f"load {load:.1f} -> {os.getloadavg()[0]:.1f}"
            )
            continue
        result = score(detector, frames)
        recall = ", ".join(f"{s}px {r:.3f}" for s, r in result["recall"].items())
        print(
            f"{name}: recall {result['recall_all']:.3f} ({recall}); FP/frame "
            f"{result['fp_per_frame']:.3f}; NME median {result['nme_median']:.3f} mean "
            f"{result['nme_mean']:.3f}; {fps:.1f} frames/s at 640x480 (one face); load "
            f"{load:.1f} -> {os.getloadavg()[0]:.1f}"
        )


if __name__ == "__main__":
    main()

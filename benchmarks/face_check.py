"""Pass rate and speed of predict's face check (`predict.face_check`), for docs/benchmarks.md.

FACES: folders of face crops (every image should pass). Negatives, none of which should pass:
blank images (5 grey levels), uniform noise (20), blurred noise (20, radius 1-8), and with
`--non-faces DIR` square patches (5 per image, seeded) of the images under DIR (screenshots,
diagrams, backgrounds: anything without a face). Prints, per set, the pass rate of
`find_faces(..., "check", detector)` split by which check decided, and ms per image. Usage:

    python benchmarks/face_check.py ../shared/data/realfaces-smile/images \
        ../shared/fixtures/images/bench112 [--non-faces DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from affectpipe.extract import cnn_detector
from affectpipe.predict import face_check as faces
from affectpipe.predict.inputs import IMAGE_SUFFIXES


def _images(folder: Path) -> list[Image.Image]:
    return [
        Image.open(p).convert("RGB")
        for p in sorted(folder.rglob("*"))
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]


def _synthetic(rng: np.random.Generator) -> list[Image.Image]:
    blank = [Image.new("RGB", (112, 112), (v, v, v)) for v in (0, 64, 128, 200, 255)]
    noise = [
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)) for _ in range(20)
    ]
    blurred = [
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).filter(
            ImageFilter.GaussianBlur(radius)
        )
        for radius in (1, 2, 4, 8)
        for _ in range(5)
    ]
    return blank + noise + blurred


def _patches(folder: Path, rng: np.random.Generator) -> list[Image.Image]:
    patches = []
    for image in _images(folder):
        side = min(image.size)
        for _ in range(5):
            s = int(rng.integers(side // 4 + 1, side + 1))
            x = int(rng.integers(0, image.width - s + 1))
            y = int(rng.integers(0, image.height - s + 1))
            patches.append(image.crop((x, y, x + s, y + s)))
    return patches


DETECTOR = faces.DetectorChoice()  # MTCNN, as predict's default


def _measure(name: str, images: list[Image.Image]) -> None:
    start = time.perf_counter()
    results = [
        faces.find_faces([image], [None], "check", DETECTOR, DETECTOR.face_score)[0][0]
        for image in images
    ]
    ms = (time.perf_counter() - start) / len(images) * 1000
    passed = Counter(r.check for r in results if r.image is not None)
    rate = sum(passed.values()) / len(images)
    print(
        f"{name}: {len(images)} images, face found {rate:.4f} "
        f"({dict(passed)}), {ms:.1f} ms/image, load {os.getloadavg()[0]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("faces", type=Path, nargs="+")
    parser.add_argument("--non-faces", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    faces.crop_has_face(Image.new("RGB", (112, 112)))  # load the detectors
    cnn_detector()
    DETECTOR.load()
    for folder in args.faces:
        _measure(str(folder), _images(folder))
    _measure("blank + noise", _synthetic(rng))
    if args.non_faces:
        _measure(f"patches of {args.non_faces}", _patches(args.non_faces, rng))


if __name__ == "__main__":
    main()

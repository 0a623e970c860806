"""Is there a face? The check every prediction makes, and `--detect`'s find-and-align.

Three ways to treat an input image (`FACE_MODES`), each recorded in the output's
`face_check` column:

* `check` (default): a crop-shaped image (sides within `CROP_ASPECT`) gets the fast crop
  check (`crop_has_face`) and, when it passes, goes to the backbones as it is
  (`face_check = crop-check`). Anything else - a wide frame, or a crop the check rejects -
  goes to detection (`face_check = detection`), which finds, aligns or rejects it.
* `detect`: always detection (`--detect`): the chosen face detector (`--detector`, default
  MTCNN; `affectpipe.faces.registry`) finds every face with its 5 landmarks, and each face is
  aligned to ABAW's 112 x 112 five-point template (`affectpipe.faces.align`): one result per
  face, largest first. A frame without a detection has no face (no fallback box).
* `assume-aligned` (`--assume-aligned`): no check, the image is taken as an aligned face
  (`face_check = assumed`), as ABAW's own `cropped_aligned` frames are by `pipeline extract`.

The crop check: dlib's HOG detector misses tight crops (the face fills the frame and its
80 px window wants context), so the crop is scaled to `CHECK_SIDE`, padded by repeating its
edges, and scored by the detector on it and its mirror image (averaged: a face scores on
both, a pattern that happens to look like one rarely does). Clear scores decide at once;
the uncertain band between `REJECT_BELOW` and `ACCEPT_FROM` asks dlib's CNN face detector
(MMOD, about 20x slower). Either detector's face must fill `MIN_FACE_FRACTION` of the crop.
Measured on the 400 real photos of realfaces-smile (all pass) and blank, noise and non-face
images (none pass): docs/benchmarks.md, "Face check".
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from affectpipe.errors import InputError
from affectpipe.extract import cnn_detector, frontal_detector
from affectpipe.faces.align import align_face
from affectpipe.faces.detection import Detection, FaceDetector

FACE_MODES = ("check", "detect", "assume-aligned")
CROP_CHECK, DETECTION, ASSUMED, NOT_RUN = "crop-check", "detection", "assumed", "none"

CROP_ASPECT = 0.8  # shorter / longer side of an image treated as a face crop
CHECK_SIDE = 112  # the crop's longer side for the check (ABAW's crops are 112 x 112)
CHECK_PAD = 0.2  # edge padding on each side, as a fraction of CHECK_SIDE
# Mean HOG detector score (crop and mirror): at or above ACCEPT_FROM a face, below
# REJECT_BELOW none, in between the CNN detector decides. Real faces scored -0.64 at least,
# the 700 non-face images at most -0.39 (docs/benchmarks.md, "Face check").
ACCEPT_FROM = 0.0
REJECT_BELOW = -1.5
MIN_FACE_FRACTION = 0.5  # a detected face's box side / the crop's longer side


@dataclass(frozen=True)
class FaceResult:
    """What the backbones get for one face, which check ran, why there is no face, and the
    detection (box, 5 landmarks, score) where a detector found it."""

    image: Image.Image | None  # the crop to use; None: no face
    check: str  # CROP_CHECK, DETECTION, ASSUMED, or NOT_RUN (no decoded image)
    reason: str | None  # why `image` is None
    detection: Detection | None = None


def face_mode(detect: bool, assume_aligned: bool) -> str:
    """The mode of `--detect` / `--assume-aligned` (they exclude each other)."""
    if detect and assume_aligned:
        raise InputError("--detect and --assume-aligned exclude each other: give one")
    return "detect" if detect else "assume-aligned" if assume_aligned else "check"


def find_faces(
    images: Sequence[Image.Image | None],
    reasons: Sequence[str | None],
    mode: str,
    detector: FaceDetector,
    min_score: float = float("-inf"),
) -> list[list[FaceResult]]:
    """The faces of each decoded image (None: not decoded, for its reason) under `mode`: one
    result per face found with a score of at least `min_score` (largest first), or one
    result without a face. The images that need detection are detected together (one batch
    per image size)."""
    results: list[list[FaceResult]] = [[] for _ in images]
    pending: list[tuple[int, Image.Image]] = []
    for i, (image, reason) in enumerate(zip(images, reasons, strict=True)):
        if image is None:
            results[i] = [FaceResult(None, NOT_RUN, reason)]
        elif mode == "assume-aligned":
            results[i] = [FaceResult(image, ASSUMED, None)]
        else:
            # A phone photo is stored sideways with an EXIF orientation: upright before looking.
            image = ImageOps.exif_transpose(image)
            if mode == "check" and is_crop_shaped(image) and crop_has_face(image):
                results[i] = [FaceResult(image, CROP_CHECK, None)]
            else:
                pending.append((i, image.convert("RGB")))
    if pending:
        found = detector.detect([np.asarray(image) for _, image in pending])
        for (i, image), faces in zip(pending, found, strict=True):
            kept = [d for d in faces if d.score >= min_score]
            why = (
                f"no face detected (best score {max(d.score for d in faces):.3f}, under "
                f"{min_score})"
                if faces
                else "no face detected"
            )
            results[i] = [
                FaceResult(align_face(image, d.points), DETECTION, None, d) for d in kept
            ] or [FaceResult(None, DETECTION, why)]
    return results


@dataclass(frozen=True)
class DetectorChoice:
    """Which registered detector runs, where, with which weight files (overrides by weights
    or net name); picklable, so DataLoader workers build their own (once per process)."""

    name: str = "mtcnn"
    device: str = "cpu"
    weights: tuple[tuple[str, Path], ...] = ()

    @classmethod
    def of(
        cls, name: str, device: str = "cpu", weights: Mapping[str, Path] | None = None
    ) -> DetectorChoice:
        from affectpipe.faces import registry

        registry.get(name)  # an unknown name fails now, naming the known ones
        return cls(name, device, tuple(sorted((weights or {}).items())))

    def load(self) -> FaceDetector:
        return _load(self)

    @property
    def face_score(self) -> float:
        """The score a detection needs to count as a face (the registration's)."""
        from affectpipe.faces import registry

        return registry.get(self.name).face_score

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """The loaded detector's `detect` (so a choice is a FaceDetector, loaded on use)."""
        return self.load().detect(images)


@functools.cache
def _load(choice: DetectorChoice) -> FaceDetector:
    from affectpipe.faces import registry

    return registry.get(choice.name).build(choice.device, dict(choice.weights))


def is_crop_shaped(image: Image.Image) -> bool:
    return min(image.size) >= CROP_ASPECT * max(image.size)


def crop_has_face(image: Image.Image) -> bool:
    """The fast check on a face crop (see the module docstring)."""
    padded = _check_canvas(image)
    min_side = MIN_FACE_FRACTION * CHECK_SIDE
    scores = [
        _best_hog_score(np.ascontiguousarray(pixels), min_side)
        for pixels in (padded, padded[:, ::-1])
    ]
    score = float(np.mean(scores))
    if score >= ACCEPT_FROM:
        return True
    if score < REJECT_BELOW:
        return False
    return any(min(d.rect.width(), d.rect.height()) >= min_side for d in cnn_detector()(padded, 0))


def _check_canvas(image: Image.Image) -> np.ndarray:
    scale = CHECK_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    pixels = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR))
    pad = round(CHECK_PAD * CHECK_SIDE)
    return np.ascontiguousarray(np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))


def _best_hog_score(pixels: np.ndarray, min_side: float) -> float:
    boxes, scores, _ = frontal_detector().run(pixels, 0, REJECT_BELOW - 1.0)
    big = [s for b, s in zip(boxes, scores, strict=True) if min(b.width(), b.height()) >= min_side]
    return max(big, default=-np.inf)

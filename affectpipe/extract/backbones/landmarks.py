"""68-point facial landmarks from dlib's pretrained shape predictor, robust to tight face crops.

The point numbering is the iBUG 300-W convention dlib's model was trained on (0-based):
jaw 0-16, brows 17-21 (subject's right, image left) and 22-26, nose bridge 27-30, lower
nose 31-35, eyes 36-41 (right) and 42-47 (left), outer lips 48-59, inner lips 60-67.

ABAW's `cropped_aligned` frames are already face crops, often too tight for the frontal
face detector. We try the detector first (upsampled once for small crops, where faces are
below its 80 px minimum) and otherwise fit the landmarks inside a fixed box covering the
crop, so every decodable image gets landmarks plus a fit-quality record instead of an error.

The dlib models are loaded lazily, once per process, so objects that use this
module stay cheap to pickle into worker processes.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from affectpipe.errors import InputError

N_POINTS = 68
PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
CNN_DETECTOR_FILE = "mmod_human_face_detector.dat"  # dlib's CNN face detector, same package

# Landmark index of the mirror-image point (left <-> right of the face), for horizontal flips.
MIRROR_68: tuple[int, ...] = (
    *range(16, -1, -1),  # jaw
    *range(26, 16, -1),  # brows
    27, 28, 29, 30,  # nose bridge (on the midline)
    35, 34, 33, 32, 31,  # lower nose
    45, 44, 43, 42, 47, 46,  # right eye -> left eye
    39, 38, 37, 36, 41, 40,  # left eye -> right eye
    54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55,  # outer lips
    64, 63, 62, 61, 60, 67, 66, 65,  # inner lips
)  # fmt: skip

RIGHT_EYE = slice(36, 42)
LEFT_EYE = slice(42, 48)
MOUTH = slice(48, 68)
NOSE_TIP = 30

# Fallback box as fractions of the crop (left, top, right, bottom): the mean detector box on
# 197 of the 256 112x112 crops of shared/fixtures/images/bench112 where a face was found.
CROP_BOX = (0.064, 0.136, 0.907, 0.964)
# Crops with a shorter side below this are upsampled once before detection.
UPSAMPLE_BELOW = 200
# Plausible inter-ocular distance (eye centres) as a fraction of the face box width.
INTEROCULAR_RANGE = (0.25, 0.6)


@dataclass(frozen=True)
class LandmarkFit:
    """Landmarks of one face and how much to trust them."""

    points: np.ndarray  # [68, 2] float32, image pixels (x, y)
    detected: bool  # the face detector found the face (else the crop box was used)
    detector_score: float  # detector confidence, 0 when not detected
    box: tuple[float, float, float, float]  # the box the shape predictor started from
    plausible: bool  # eyes above nose above mouth and a sane inter-ocular distance
    interocular_ratio: float  # eye-centre distance / box width


def predictor_path() -> Path:
    """The 68-point model file shipped by `face-recognition-models`."""
    return model_file(PREDICTOR_FILE)


def model_file(name: str) -> Path:
    """A dlib model file shipped by `face-recognition-models`.

    Found without importing that package: its ``__init__`` needs ``pkg_resources``, which
    recent setuptools no longer provides.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "the face check and the built-in openface descriptor need dlib's models: "
            "pip install face-recognition-models"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.exists():
        raise InputError(f"dlib model missing at {path}: reinstall face-recognition-models")
    return path


@functools.cache
def frontal_detector() -> Any:
    """dlib's HOG frontal face detector, built once per process."""
    import dlib

    return dlib.get_frontal_face_detector()


@functools.cache
def cnn_detector() -> Any:
    """dlib's CNN face detector (MMOD, `CNN_DETECTOR_FILE`), built once per process."""
    import dlib

    return dlib.cnn_face_detection_model_v1(str(model_file(CNN_DETECTOR_FILE)))


@functools.cache
def shape_predictor() -> Any:
    import dlib

    return dlib.shape_predictor(str(predictor_path()))


def _plausibility(points: np.ndarray, box_width: float) -> tuple[bool, float]:
    right_eye = points[RIGHT_EYE].mean(axis=0)
    left_eye = points[LEFT_EYE].mean(axis=0)
    eyes_y = (right_eye[1] + left_eye[1]) / 2
    mouth_y = points[MOUTH, 1].mean()
    ratio = float(np.linalg.norm(left_eye - right_eye) / max(box_width, 1.0))
    ordered = eyes_y < points[NOSE_TIP, 1] < mouth_y
    in_range = INTEROCULAR_RANGE[0] <= ratio <= INTEROCULAR_RANGE[1]
    # The subject's right eye appears on the image left for an upright, unmirrored fit.
    return bool(ordered and in_range and right_eye[0] < left_eye[0]), ratio


def fit_landmarks(rgb: np.ndarray) -> LandmarkFit:
    """Fit 68 landmarks on an RGB uint8 image [H, W, 3] holding one (main) face."""
    import dlib

    detector, predictor = frontal_detector(), shape_predictor()
    image = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width = image.shape[:2]
    upsample = 1 if min(height, width) < UPSAMPLE_BELOW else 0
    boxes, scores, _ = detector.run(image, upsample, 0.0)
    if len(boxes):
        best = max(range(len(boxes)), key=lambda i: boxes[i].area())
        rect, score, detected = boxes[best], float(scores[best]), True
    else:
        left, top, right, bottom = CROP_BOX
        rect = dlib.rectangle(
            round(left * width), round(top * height), round(right * width), round(bottom * height)
        )
        score, detected = 0.0, False
    shape = predictor(image, rect)
    points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
    box = (float(rect.left()), float(rect.top()), float(rect.right()), float(rect.bottom()))
    plausible, ratio = _plausibility(points, box[2] - box[0])
    return LandmarkFit(points, detected, score, box, plausible, ratio)

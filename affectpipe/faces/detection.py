"""What every face detector returns, and the box geometry tracking and benchmarks share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

# The 5 landmarks, in order (as seen in the image: the "left eye" is on the image's left).
POINT_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True)
class Detection:
    """One face: box (x1, y1, x2, y2) and 5 landmarks [5, 2] (x, y) in image pixels, score."""

    box: np.ndarray
    points: np.ndarray
    score: float


class FaceDetector(Protocol):
    """A registered detector's implementation (see `affectpipe.faces.registry`)."""

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """The faces of each RGB uint8 image [H, W, 3], largest first."""
        ...


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes a [N, 4] and b [M, 4] (x1, y1, x2, y2) -> [N, M]."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(high - low, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)

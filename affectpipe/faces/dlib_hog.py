"""dlib's HOG frontal face detector with its 68-point shape predictor, as a 5-point detector.

The 5 points are the eye centres (mean of each eye's 6 points), the nose tip (30) and the
mouth corners (48, 54), in the order of `affectpipe.faces.detection.POINT_NAMES`. The score
is the HOG detector's SVM margin (not a probability). dlib finds faces from about 80 px; it
runs on the image as given (no upsampling), on CPU only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from affectpipe.extract.backbones import landmarks
from affectpipe.faces.detection import Detection


class DlibHog:
    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """The faces of each RGB uint8 image, largest first."""
        return [self._detect_one(np.ascontiguousarray(image, dtype=np.uint8)) for image in images]

    @staticmethod
    def _detect_one(image: np.ndarray) -> list[Detection]:
        rects, scores, _ = landmarks.frontal_detector().run(image, 0, 0.0)
        found = []
        for rect, score in zip(rects, scores, strict=True):
            shape = landmarks.shape_predictor()(image, rect)
            dense = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
            eyes = [dense[landmarks.RIGHT_EYE].mean(0), dense[landmarks.LEFT_EYE].mean(0)]
            points = np.stack([*eyes, dense[landmarks.NOSE_TIP], dense[48], dense[54]])
            box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], np.float32)
            found.append(Detection(box, points, float(score)))
        return sorted(found, key=lambda d: -float(np.prod(d.box[2:] - d.box[:2])))


def build(weights: Mapping[str, Path], device: str = "cpu") -> DlibHog:
    """The registry's factory; dlib needs no weights beyond its own package's."""
    return DlibHog()

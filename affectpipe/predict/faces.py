"""`--detect`: find the largest face of a frame and align it like ABAW's `cropped_aligned`.

dlib's frontal face detector (the one the OpenFace-style descriptor uses) finds faces; the
largest box wins; its 68 landmarks are fitted and a similarity transform (rotation, uniform
scale, translation; least squares on the rigid landmarks: eye corners, nose, ...) maps them
onto the descriptor's reference face laid out in a 112 x 112 frame, the face's landmark
extent filling `FACE_FRACTION` of it. The crop is resampled bilinearly in RGB.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from affectpipe.extract.backbones import landmarks
from affectpipe.extract.backbones.openface_geometry import RIGID_POINTS, similarity_transform
from affectpipe.extract.backbones.openface_hog import ALIGNED_SIZE, reference_to_pixels

_REFERENCE = reference_to_pixels()


def align(rgb: np.ndarray, points: np.ndarray) -> Image.Image:
    """The face with landmarks `points` [68, 2] warped to the 112 x 112 reference frame (RGB)."""
    rigid = list(RIGID_POINTS)
    # PIL's affine transform maps output pixels to input pixels: fit that direction.
    _, inverse = similarity_transform(_REFERENCE[rigid], np.asarray(points)[rigid])
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    return image.transform(
        (ALIGNED_SIZE, ALIGNED_SIZE),
        Image.Transform.AFFINE,
        data=tuple(inverse.reshape(-1)),
        resample=Image.Resampling.BILINEAR,
    )


def detect_and_align(image: Image.Image) -> tuple[Image.Image | None, str | None]:
    """(aligned 112 x 112 RGB crop of the largest face, None), or (None, why not)."""
    fit = landmarks.fit_landmarks(np.asarray(image.convert("RGB")))
    if not fit.detected:
        return None, "no face detected"
    return align(np.asarray(image.convert("RGB")), fit.points), None

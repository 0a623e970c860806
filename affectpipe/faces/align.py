"""The ABAW alignment: a 5-point similarity transform onto a 112 x 112 template.

ABAW's `cropped_aligned` frames are 112 x 112 faces aligned on 5 landmarks (eyes, nose tip,
mouth corners). The template is the widely used 112 x 112 five-point reference of the
InsightFace/ArcFace tools (`TEMPLATE`, in output pixels, x then y, in the order of
`affectpipe.faces.detection.POINT_NAMES`). The transform is the least-squares similarity
(rotation, uniform scale, translation; Umeyama, no reflection) from the detected points to the
template; the crop is resampled bilinearly in RGB. How the template was checked is in
docs/design-notes.md ("Face detection and alignment").
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from affectpipe.extract.backbones.openface_geometry import apply_transform, similarity_transform

ALIGNED_SIDE = 112
TEMPLATE = np.array(
    [
        [38.2946, 51.6963],  # left eye (image left)
        [73.5318, 51.5014],  # right eye
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ]
)


def alignment_matrix(points: np.ndarray) -> np.ndarray:
    """The [2, 3] similarity mapping image points [5, 2] onto `TEMPLATE`."""
    return similarity_transform(np.asarray(points, dtype=np.float64), TEMPLATE)[1]


def align_face(image: Image.Image, points: np.ndarray) -> Image.Image:
    """The 112 x 112 RGB crop of the face whose 5 landmarks are `points` (image pixels)."""
    # PIL's affine transform maps output pixels to input pixels: fit that direction.
    _, inverse = similarity_transform(TEMPLATE, np.asarray(points, dtype=np.float64))
    return image.convert("RGB").transform(
        (ALIGNED_SIDE, ALIGNED_SIDE),
        Image.Transform.AFFINE,
        data=tuple(inverse.reshape(-1)),
        resample=Image.Resampling.BILINEAR,
    )


def template_error(points: np.ndarray) -> float:
    """Mean distance (output pixels) between points [5, 2] aligned and the template: how well
    a similarity explains them (0 for a face shaped like the template)."""
    aligned = apply_transform(alignment_matrix(points), np.asarray(points, dtype=np.float64))
    return float(np.linalg.norm(aligned - TEMPLATE, axis=1).mean())

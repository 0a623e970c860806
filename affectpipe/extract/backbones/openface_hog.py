"""Appearance: HOG of the similarity-aligned face, as OpenFace does before its AU models.

The crop is warped (grayscale, bilinear) so that its rigid landmarks land on the reference
shape drawn at `ALIGNED_SIZE` x `ALIGNED_SIZE` pixels (`reference_to_pixels`), the way
OpenFace makes its 112x112 aligned faces. HOG then uses 8x8-pixel cells.

Variant: `skimage.feature.hog` only offers Dalal-Triggs HOG, so we use 9 unsigned
orientation bins per cell with 2x2-cell blocks, L2-Hys normalised (13 x 13 blocks x 36 =
6084 values). OpenFace uses Felzenszwalb's FHOG (31 values per cell: 18 signed + 9 unsigned
orientations normalised by the 4 neighbouring blocks, plus 4 gradient energies, on the
12 x 12 inner cells = 4464 values). Both normalise each cell against its 4 overlapping
2x2 neighbourhoods; Dalal-Triggs keeps the 4 normalised copies side by side where FHOG sums
them analytically, and drops the signed-orientation channels. We keep it because it is the
maintained, tested implementation at hand, and the PCA fitted afterwards removes most of the
redundancy of the extra copies.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from affectpipe.extract.backbones.openface_geometry import (
    REFERENCE_SHAPE,
    RIGID_POINTS,
    similarity_transform,
)

ALIGNED_SIZE = 112
CELL = 8
ORIENTATIONS = 9
BLOCK = 2
# The reference shape's larger extent spans this fraction of the aligned image.
FACE_FRACTION = 0.8

_BLOCKS = ALIGNED_SIZE // CELL - BLOCK + 1
HOG_DIM = _BLOCKS * _BLOCKS * BLOCK * BLOCK * ORIENTATIONS

HOG_PARAMS = {
    "implementation": "skimage.feature.hog (Dalal-Triggs)",
    "aligned_size": ALIGNED_SIZE,
    "face_fraction": FACE_FRACTION,
    "pixels_per_cell": CELL,
    "cells_per_block": BLOCK,
    "orientations": ORIENTATIONS,
    "block_norm": "L2-Hys",
    "channel": "grayscale (PIL L)",
}


def reference_to_pixels() -> np.ndarray:
    """The reference shape in aligned-image pixel coordinates [68, 2], centred."""
    low, high = REFERENCE_SHAPE.min(axis=0), REFERENCE_SHAPE.max(axis=0)
    scale = FACE_FRACTION * ALIGNED_SIZE / float((high - low).max())
    return (REFERENCE_SHAPE - (low + high) / 2) * scale + ALIGNED_SIZE / 2


_REFERENCE_PIXELS = reference_to_pixels()


def aligned_face(rgb: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Warp the crop so its rigid landmarks match the reference: [112, 112] uint8 grayscale."""
    rigid = list(RIGID_POINTS)
    # PIL's affine transform wants the output -> input mapping: fit it in that direction.
    _, inverse = similarity_transform(_REFERENCE_PIXELS[rigid], points[rigid])
    gray = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).convert("L")
    warped = gray.transform(
        (ALIGNED_SIZE, ALIGNED_SIZE),
        Image.Transform.AFFINE,
        data=tuple(inverse.reshape(-1)),
        resample=Image.Resampling.BILINEAR,
    )
    return np.asarray(warped)


def hog_descriptor(aligned: np.ndarray) -> np.ndarray:
    """HOG of an aligned grayscale face [112, 112] -> [HOG_DIM] float32."""
    from skimage.feature import hog

    values = hog(
        aligned.astype(np.float32) / 255.0,
        orientations=ORIENTATIONS,
        pixels_per_cell=(CELL, CELL),
        cells_per_block=(BLOCK, BLOCK),
        block_norm="L2-Hys",
        feature_vector=True,
    )
    return values.astype(np.float32)

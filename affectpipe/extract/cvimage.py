"""OpenCV's uint8 image arithmetic in NumPy, bit-exact, without depending on OpenCV.

Backbones whose official code prepares images with OpenCV need its exact integer results:
`gray` is ``cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)`` (14-bit fixed point) and `resize_linear`
is ``cv2.resize(img, (w, h))`` with the default INTER_LINEAR on uint8: half-pixel centres, no
antialiasing, 11-bit fixed-point weights and the rounding of OpenCV's vectorised vertical
pass. PIL's bilinear resize is a different filter (it antialiases when shrinking).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

# cv2's BGR2GRAY weights for R, G, B in 14-bit fixed point (0.299, 0.587, 0.114; sum 2**14).
# Every product and sum stays below 2**24, so float32 arithmetic on them is exact (and faster
# in NumPy than int32, via one matrix-vector product).
_GRAY_WEIGHTS = np.array([4899, 9617, 1868], dtype=np.float32)
_GRAY_HALF = 1 << 13
_GRAY_SCALE = 1.0 / (1 << 14)
_COEF_BITS = 11  # cv2 INTER_RESIZE_COEF_BITS
_COEF_ONE = 1 << _COEF_BITS


def gray(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` -> uint8 grey ``[H, W]``, as cv2's BGR2GRAY on the BGR image."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {rgb.dtype} {rgb.shape}")
    total = np.dot(rgb.reshape(-1, 3), _GRAY_WEIGHTS)
    # Non-negative, so truncating to uint8 is the floor of the 14-bit shift.
    return ((total + _GRAY_HALF) * _GRAY_SCALE).astype(np.uint8).reshape(rgb.shape[:2])


def _axis_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source taps (i0, i1) and fixed-point weights (w0, w1) for one axis of the resize.

    cv2 computes the source coordinate in double, rounds it to float, splits it into
    integer and fraction in float, clamps at the borders (weight 1 on the edge pixel) and
    rounds each weight times 2**11 to the nearest integer (ties to even).
    """
    scale = 1.0 / (dst / src)  # cv2 keeps the inverse of dst/src, not src/dst
    coord = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(coord).astype(np.int64)
    frac = coord - first.astype(np.float32)
    frac[(first < 0) | (first >= src - 1)] = 0.0
    first = np.clip(first, 0, src - 1)
    w0 = np.rint((np.float32(1.0) - frac) * np.float32(_COEF_ONE)).astype(np.int32)
    w1 = np.rint(frac * np.float32(_COEF_ONE)).astype(np.int32)
    return first, np.minimum(first + 1, src - 1), w0, w1


Box = tuple[int, int, int, int]


@lru_cache(maxsize=256)
def _resize_plan(shape: tuple[int, int], box: Box, size: tuple[int, int]) -> tuple:
    """Flat source indices of the 4 taps of every output pixel, and the weights.

    Taps outside the image point at index H*W: the fill value appended after the pixels.
    """
    rows, cols = shape
    x1, y1, x2, y2 = box
    width, height = size
    x0, x1_, a0, a1 = _axis_taps(x2 - x1, width)
    y0, y1_, b0, b1 = _axis_taps(y2 - y1, height)

    def flat(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        ys, xs = ys[:, None] + y1, xs[None, :] + x1
        inside = (ys >= 0) & (ys < rows) & (xs >= 0) & (xs < cols)
        return np.where(inside, ys * cols + xs, rows * cols).astype(np.intp)

    plan = (
        flat(y0, x0), flat(y0, x1_), flat(y1_, x0), flat(y1_, x1_),
        a0[None, :], a1[None, :], b0[:, None], b1[:, None],
    )  # fmt: skip
    for array in plan:
        array.flags.writeable = False  # cached and shared between calls
    return plan


def resize_linear(
    image: np.ndarray, width: int, height: int, *, box: Box | None = None, fill: int = 0
) -> np.ndarray:
    """uint8 ``[H, W]`` -> uint8 ``[height, width]``, equal to ``cv2.resize`` INTER_LINEAR.

    With `box` = (x1, y1, x2, y2) it resizes that region of the image as if the image were
    surrounded by the constant `fill` (a box may extend past the image), i.e. the result of
    cropping a ``cv2.copyMakeBorder`` constant-padded image, without building the crop.
    """
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W] image, got {image.dtype} {image.shape}")
    box = (0, 0, image.shape[1], image.shape[0]) if box is None else tuple(box)
    if box[2] <= box[0] or box[3] <= box[1] or width < 1 or height < 1:
        raise ValueError(f"cannot resize the region {box} to {width}x{height}")
    i00, i01, i10, i11, a0, a1, b0, b1 = _resize_plan(image.shape, box, (width, height))
    pixels = np.append(image.ravel(), np.uint8(fill))
    # Horizontal pass: exact integers scaled by 2**11 (at most 255 * 2048).
    top = pixels[i00] * a0 + pixels[i01] * a1
    bottom = pixels[i10] * a0 + pixels[i11] * a1
    # Vertical pass as cv2's SIMD kernel (and its scalar tail) computes it: drop 4 bits,
    # keep the high 16 bits of each product, then round away the last 2 bits. The result
    # is at most 255, so no clipping is needed.
    top >>= 4
    top *= b0
    top >>= 16
    bottom >>= 4
    bottom *= b1
    bottom >>= 16
    top += bottom
    top += 2
    top >>= 2
    return top.astype(np.uint8)

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
_GRAY_WEIGHTS = (4899, 9617, 1868)
_GRAY_SHIFT = 14
_COEF_BITS = 11  # cv2 INTER_RESIZE_COEF_BITS
_COEF_ONE = 1 << _COEF_BITS


def gray(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` -> uint8 grey ``[H, W]``, as cv2's BGR2GRAY on the BGR image."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {rgb.dtype} {rgb.shape}")
    wr, wg, wb = _GRAY_WEIGHTS
    channels = rgb.astype(np.int32)
    total = channels[..., 0] * wr + channels[..., 1] * wg + channels[..., 2] * wb
    return ((total + (1 << (_GRAY_SHIFT - 1))) >> _GRAY_SHIFT).astype(np.uint8)


@lru_cache(maxsize=256)
def _axis_table(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source taps (i0, i1) and fixed-point weights (w0, w1) for one axis of the resize.

    cv2 computes the source coordinate in double, rounds it to float, splits it into
    integer and fraction in float, clamps at the borders (weight 1 on the edge pixel) and
    rounds each weight times 2**11 to the nearest integer (ties to even).
    """
    scale = 1.0 / (dst / src)  # cv2 keeps the inverse of dst/src, not src/dst
    coord = ((np.arange(dst) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(coord).astype(np.int64)
    frac = coord - first.astype(np.float32)
    edge = (first < 0) | (first >= src - 1)
    frac[edge] = 0.0
    first = np.clip(first, 0, src - 1)
    w0 = np.rint((np.float32(1.0) - frac) * np.float32(_COEF_ONE)).astype(np.int32)
    w1 = np.rint(frac * np.float32(_COEF_ONE)).astype(np.int32)
    second = np.minimum(first + 1, src - 1)
    for array in (first, second, w0, w1):
        array.flags.writeable = False  # cached and shared between calls
    return first, second, w0, w1


def resize_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 ``[H, W]`` -> uint8 ``[height, width]``, equal to ``cv2.resize`` INTER_LINEAR."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W] image, got {image.dtype} {image.shape}")
    rows, cols = image.shape
    if rows < 1 or cols < 1 or width < 1 or height < 1:
        raise ValueError(f"cannot resize a {cols}x{rows} image to {width}x{height}")
    x0, x1, a0, a1 = _axis_table(cols, width)
    y0, y1, b0, b1 = _axis_table(rows, height)
    # Horizontal pass: exact integers scaled by 2**11 (at most 255 * 2048).
    source = image.astype(np.int32)
    horizontal = source[:, x0] * a0 + source[:, x1] * a1
    # Vertical pass as cv2's SIMD kernel (and its scalar tail) computes it: drop 4 bits,
    # keep the high 16 bits of each product, then round away the last 2 bits.
    top = (horizontal[y0] >> 4) * b0[:, None] >> 16
    bottom = (horizontal[y1] >> 4) * b1[:, None] >> 16
    return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)

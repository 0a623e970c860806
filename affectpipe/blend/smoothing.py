"""Temporal smoothing of per-frame predictions, one video (and split) at a time.

s-Aff-Wild2 frames are sparse, so a window counts listed neighbours in frame order, not
frame numbers. Segments never mix: every video gets its own normalised convolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import fft as sp_fft
from scipy.ndimage import correlate1d

from affectpipe.blend.options import KERNELS

DIRECT_MAX_WIDTH = 65  # wider kernels convolve faster through the FFT


@dataclass(frozen=True)
class VideoOrder:
    """Rows sorted by (group, frame), with the sorted position where each group starts.

    `group` codes identify one video within one split; build it with `group_codes`.
    """

    order: np.ndarray  # sorted position -> row
    group_index: np.ndarray  # sorted position -> 0-based index of its group
    start: np.ndarray  # sorted position -> first sorted position of its group
    stop: np.ndarray  # sorted position -> one past the last sorted position of its group

    @classmethod
    def of(cls, groups: np.ndarray, frames: np.ndarray) -> VideoOrder:
        order = np.lexsort((np.arange(len(frames)), frames, groups))
        sorted_groups = np.asarray(groups)[order]
        new_group = np.ones(len(order), dtype=bool)
        new_group[1:] = sorted_groups[1:] != sorted_groups[:-1]
        group_index = np.cumsum(new_group) - 1
        starts = np.flatnonzero(new_group)
        stops = np.append(starts[1:], len(order))
        return cls(order, group_index, starts[group_index], stops[group_index])

    @property
    def n_groups(self) -> int:
        return int(self.group_index[-1]) + 1 if len(self.group_index) else 0


def group_codes(*keys: np.ndarray | pd.Series) -> np.ndarray:
    """One integer per distinct combination of the key arrays (e.g. split and video), numbered
    in the lexicographic order of the combinations' text (string Series are used as they
    are, without a copy into Python strings)."""
    codes = np.zeros(len(keys[0]) if keys else 0, dtype=np.int64)
    for key in keys:
        if not isinstance(key, pd.Series) or key.dtype.kind in "iufb":
            key = np.asarray(key)
            if key.dtype.kind not in "UO":
                key = key.astype(str)  # numbers order as text, like the labels they stand for
        # factorize hashes (no string sort over the rows); sort=True numbers in text order.
        inverse, uniques = pd.factorize(key, sort=True)
        codes = codes * len(uniques) + inverse
    return np.unique(codes, return_inverse=True)[1].ravel()


def kernel_weights(kernel: str, half_width: int) -> np.ndarray:
    """Weights over offsets -half_width..half_width (not normalised)."""
    offsets = np.arange(-half_width, half_width + 1, dtype=np.float64)
    if kernel == "box":
        return np.ones_like(offsets)
    if kernel == "gaussian":
        sigma = max(half_width / 2.0, 0.5)  # the window spans about two sigmas each side
        return np.exp(-0.5 * (offsets / sigma) ** 2)
    raise ValueError(f"unknown smoothing kernel {kernel!r} (choose from {KERNELS})")


def smooth(values: np.ndarray, order: VideoOrder, kernel: str, half_width: int) -> np.ndarray:
    """Smooth `values` [N, K] (rows as in `order`) over `half_width` neighbours on each side.

    Near a video's ends the kernel is renormalised over the neighbours that exist.
    """
    return Smoother(values, order)(kernel, half_width)


class Smoother:
    """`smooth` of one array at many windows (the window search): the rows are put in video
    order once, and the box kernel's prefix sums are computed once."""

    def __init__(self, values: np.ndarray, order: VideoOrder):
        self.values = np.asarray(values, dtype=np.float32)
        self.order = order
        self._sorted: np.ndarray | None = None
        self._sums: np.ndarray | None = None
        self._position: np.ndarray | None = None  # row -> sorted position (`at`)

    @property
    def sorted(self) -> np.ndarray:
        """The rows [N, K] in video order (made on first use: window 0 needs none)."""
        if self._sorted is None:
            data = self.values[:, None] if self.values.ndim == 1 else self.values
            self._sorted = data[self.order.order]
        return self._sorted

    def __call__(self, kernel: str, half_width: int) -> np.ndarray:
        if half_width <= 0 or len(self.values) == 0:
            return self.values.copy()
        if kernel == "box":
            result = self._box(half_width, np.arange(len(self.values)))
        else:
            result = _convolve_sorted(self.sorted, self.order, kernel, half_width)
        out = np.empty_like(result)
        out[self.order.order] = result
        return out[:, 0] if self.values.ndim == 1 else out

    def at(self, kernel: str, half_width: int, rows: np.ndarray) -> np.ndarray:
        """`self(kernel, half_width)[rows]`, the same values; the box kernel computes only
        those rows (a window search that scores a sample of the rows)."""
        if half_width <= 0 or kernel != "box" or len(self.values) == 0:
            return self(kernel, half_width)[rows]
        if self._position is None:
            self._position = np.empty(len(self.values), dtype=np.int64)
            self._position[self.order.order] = np.arange(len(self.values))
        result = self._box(half_width, self._position[rows])
        return result[:, 0] if self.values.ndim == 1 else result

    def _box(self, half_width: int, position: np.ndarray) -> np.ndarray:
        """Box means at these sorted positions from prefix sums, each window cut at its
        video's ends."""
        if self._sums is None:
            self._sums = np.zeros((len(self.sorted) + 1, self.sorted.shape[1]), dtype=np.float64)
            np.cumsum(self.sorted, axis=0, out=self._sums[1:])
        lo = np.maximum(self.order.start[position], position - half_width)
        hi = np.minimum(self.order.stop[position], position + half_width + 1)
        return ((self._sums[hi] - self._sums[lo]) / (hi - lo)[:, None]).astype(np.float32)


def _convolve_sorted(
    data: np.ndarray, order: VideoOrder, kernel: str, half_width: int
) -> np.ndarray:
    """Kernel-weighted means by one convolution, renormalised over existing neighbours."""
    # Lay the sorted rows out with `half_width` empty slots before each video and at the end,
    # so one convolution over the whole array never reaches across a video boundary.
    slots = np.arange(len(order.order)) + (order.group_index + 1) * half_width
    length = len(order.order) + (order.n_groups + 1) * half_width
    padded = np.zeros((length, data.shape[1]), dtype=np.float32)
    present = np.zeros((length, 1), dtype=np.float32)
    padded[slots] = data
    present[slots] = 1.0
    weights = kernel_weights(kernel, half_width)
    total = _convolve_rows(padded, weights)[slots]
    norm = _convolve_rows(present, weights)[slots]
    return (total / np.maximum(norm, 1e-12)).astype(np.float32)


def _convolve_rows(data: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Convolve each column of `data` with the symmetric `weights`, zeros outside."""
    if len(weights) <= DIRECT_MAX_WIDTH:
        return correlate1d(data, weights, axis=0, mode="constant", cval=0.0)
    # float64 keeps the FFT's round-off (which spreads over the whole array) near 1e-12.
    # The steps of scipy.signal.fftconvolve(mode="same", axes=0), same results, without
    # importing scipy.signal (about a second, in every worker process too).
    n, taps = len(data), len(weights)
    size = sp_fft.next_fast_len(n + taps - 1, True)
    spectrum = sp_fft.rfftn(data.astype(np.float64), [size], axes=[0])
    spectrum *= sp_fft.rfftn(weights[:, None], [size], axes=[0])
    start = (taps - 1) // 2
    return sp_fft.irfftn(spectrum, [size], axes=[0])[start : start + n]

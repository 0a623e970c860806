"""Image decoding for extraction: any file a user may have -> RGB, or a reason why not.

Decoding runs in `torch.utils.data.DataLoader` worker processes. One decode feeds every
backbone of a run: the dataset returns one resized uint8 ``[S, S, 3]`` tensor per CNN backbone
(the backbone's official resize; normalisation happens batched on the model's device, which
is bit-identical and moves 4x fewer bytes) and one raw descriptor row per descriptor backbone
(descriptors see the RGB uint8 array).
A file that cannot be decoded (missing, unreadable, zero bytes, truncated, not an image, not
a regular file, too large) never stops the run: its rows come back zero-filled with
``ok = False`` and the reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from PIL import Image

from affectpipe.fsutil import file_kind

if TYPE_CHECKING:
    from affectpipe.extract.rawrows import Finalized, RawRows

Resize = Callable[[Image.Image], np.ndarray]  # RGB image -> uint8 [S, S, 3]

# 16-bit and 32-bit integer / float modes that `Image.convert("RGB")` would clip instead of scale.
_WIDE_MODES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}
# Decoded pixels allowed per image (after any JPEG draft reduction): 8192 x 8192, 200 MB RGB.
MAX_DECODE_PIXELS = 8192 * 8192
# JPEG draft decoding keeps at least this many pixels on the shorter side, and at least
# DRAFT_FACTOR times the largest model input, so normal face crops decode exactly as before.
DRAFT_MIN_SIDE = 1024
DRAFT_FACTOR = 4
_PR_SET_PDEATHSIG = 1


class Descriptor(Protocol):
    """A non-torch backbone run per image in the decode workers (e.g. OpenFace-style).

    `describe` gives an image's raw row; once all rows are staged, `finalize_rows` turns
    them into the feature file's rows (e.g. projections fitted on the train rows), reading
    them in blocks (see `affectpipe.extract.rawrows`) and keeping any fitted state in
    `scratch` so that an interrupted finalisation resumes.
    """

    name: str
    raw_dim: int
    # The fitted arrays `finalize_rows` puts in its attrs (the file keeps them under
    # ``extra/``), with which `apply_fitted` computes the rows of new images.
    fitted_arrays: tuple[str, ...]

    def describe(self, rgb: np.ndarray) -> tuple[np.ndarray, bool]: ...

    def apply_fitted(self, raw: np.ndarray, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """Rows [N, D] of raw rows [N, raw_dim] with a file's fitted arrays (ValueError when
        they do not fit)."""
        ...

    def finalize_rows(
        self, rows: RawRows, train_mask: np.ndarray, scratch: Path | None = None
    ) -> Finalized: ...


def _scale_wide(image: Image.Image) -> Image.Image:
    """16/32-bit grey -> 8-bit grey, scaling the value range rather than clipping it."""
    values = np.asarray(image, dtype=np.float64)
    full_scale = _WIDE_MODES.get(image.mode)
    if full_scale is None:  # "I" or "F": scale by the data's own range when it exceeds 8 bits
        full_scale = 255.0 if values.max(initial=0.0) <= 255.0 else float(values.max())
    scaled = np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB (alpha dropped, palette expanded, CMYK and wide grey converted)."""
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_MODES or image.mode in ("I", "F"):
        image = _scale_wide(image)
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns converting a transparent palette straight to RGB
    return image.convert("RGB")


def die_with_parent(parent_pid: int, worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: the worker is killed as soon as its parent dies.

    Without it a worker of a killed run finishes its queued batches (minutes with a slow
    descriptor) before noticing. Linux only (prctl); elsewhere torch's own check remains.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _unreadable(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "missing file"
    if isinstance(exc, PermissionError):
        return "unreadable: permission denied"
    return f"unreadable: {exc.strerror or exc}"


def _not_regular(info: os.stat_result) -> str | None:
    kind = file_kind(info.st_mode)
    return None if kind is None else f"not a regular file ({kind})"


def load_rgb(
    path: str | Path | None, draft_side: int | None = None
) -> tuple[Image.Image | None, str | None]:
    """Decode one image file fully; returns (RGB image, None) or (None, reason).

    Only regular files are opened (a FIFO or device would block or never end), and without
    blocking. A JPEG at least twice `draft_side` on its shorter side is decoded at a reduced
    scale (1/2, 1/4 or 1/8, never below `draft_side`): the models need far fewer pixels.
    Images above MAX_DECODE_PIXELS after that are refused (decompression bombs).
    """
    if path is None:
        return None, "no image file (has_image is false)"
    try:
        why = _not_regular(os.stat(path))
        if why:
            return None, why
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return None, _unreadable(exc)
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        why = _not_regular(info)  # the path may have been swapped since the stat
        if why:
            return None, why
        if info.st_size == 0:
            return None, "empty file"
        try:
            return _decode(file, draft_side)
        except PermissionError as exc:
            return None, _unreadable(exc)
        except Exception as exc:  # any decoder error means this image is unusable, not the run
            return None, f"undecodable: {type(exc).__name__}: {exc}"


def _decode(file: Any, draft_side: int | None) -> tuple[Image.Image | None, str | None]:
    with warnings.catch_warnings():
        # Our own limit below applies after the draft reduction.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            handle = Image.open(file)  # sniffs the content: PNG bytes named .jpg are fine
        except Image.DecompressionBombError as exc:
            return None, f"too large to decode (decompression bomb): {exc}"
    with handle:
        if draft_side and handle.format == "JPEG" and min(handle.size) >= 2 * draft_side:
            handle.draft(handle.mode, (draft_side, draft_side))
        width, height = handle.size
        if width * height > MAX_DECODE_PIXELS:
            return None, (
                f"too large to decode: {width}x{height} pixels "
                f"(limit {MAX_DECODE_PIXELS}; decompression bomb?)"
            )
        handle.load()  # force the full decode so truncated files fail here
        return to_rgb(handle), None


@dataclass(frozen=True)
class Sample:
    """What a worker returns for one image."""

    index: int
    reason: str | None  # why the image or one of its backbones failed, else None
    inputs: tuple[torch.Tensor, ...]  # one uint8 [S, S, 3] tensor per CNN backbone
    raws: tuple[np.ndarray, ...]  # one raw descriptor row per descriptor backbone
    ok: tuple[bool, ...]  # per backbone: CNN backbones first, then descriptors


@dataclass(frozen=True)
class Batch:
    indices: np.ndarray  # int64 [B]
    reasons: list[str | None]
    inputs: tuple[torch.Tensor, ...]  # uint8 [B, S, S, 3] per CNN backbone
    raws: tuple[np.ndarray, ...]  # [B, raw_dim] per descriptor
    ok: np.ndarray  # bool [B, n_backbones]

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pinning thread when ``pin_memory=True`` (CUDA)."""
        return Batch(
            self.indices,
            self.reasons,
            tuple(t.pin_memory() for t in self.inputs),
            self.raws,
            self.ok,
        )


class DecodeDataset(torch.utils.data.Dataset):
    """Distinct images of a manifest, decoded once and prepared for every backbone of a run."""

    def __init__(
        self,
        paths: Sequence[str | None],
        resizes: Sequence[Resize],
        input_sizes: Sequence[int],
        descriptors: Sequence[Descriptor] = (),
    ):
        if len(resizes) != len(input_sizes):
            raise ValueError("one input size per resize")
        self.paths = list(paths)
        self.resizes = list(resizes)
        self.input_sizes = list(input_sizes)
        self.descriptors = list(descriptors)
        self.draft_side = max(DRAFT_MIN_SIDE, DRAFT_FACTOR * max(self.input_sizes, default=0))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Sample:
        image, reason = load_rgb(self.paths[index], self.draft_side)
        return self.sample(index, image, reason)

    def sample(self, index: int, image: Image.Image | None, reason: str | None) -> Sample:
        """Prepare one decoded RGB image (None: not decoded, for `reason`) for every backbone;
        also used for in-memory images (video frames, detected faces) by `pipeline predict`."""
        inputs: list[torch.Tensor] = []
        raws: list[np.ndarray] = []
        ok: list[bool] = []
        for resize, size in zip(self.resizes, self.input_sizes, strict=True):
            pixels, why = self._prepare(resize, image) if image is not None else (None, None)
            reason = reason or why
            ok.append(pixels is not None)
            if pixels is None:
                pixels = np.zeros((size, size, 3), np.uint8)
            inputs.append(torch.from_numpy(np.ascontiguousarray(pixels)))
        rgb = np.asarray(image) if image is not None and self.descriptors else None
        for descriptor in self.descriptors:
            raw, why = self._describe(descriptor, rgb) if rgb is not None else (None, None)
            reason = reason or why
            ok.append(raw is not None)
            raws.append(raw if raw is not None else np.zeros(descriptor.raw_dim, np.float32))
        return Sample(index, reason, tuple(inputs), tuple(raws), tuple(ok))

    @staticmethod
    def _prepare(resize: Resize, image: Image.Image) -> tuple[np.ndarray | None, str | None]:
        try:
            return resize(image), None
        except Exception as exc:  # a failing resize marks the image, the run goes on
            return None, f"preprocessing failed: {type(exc).__name__}: {exc}"

    @staticmethod
    def _describe(descriptor: Descriptor, rgb: np.ndarray) -> tuple[np.ndarray | None, str | None]:
        try:
            raw, ok = descriptor.describe(rgb)
        except Exception as exc:  # same policy as resizes
            return None, f"{descriptor.name} failed: {type(exc).__name__}: {exc}"
        if not ok:
            return None, f"{descriptor.name}: not processed"
        return np.asarray(raw, dtype=np.float32), None


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack worker samples into one batch (module-level so worker processes can pickle it)."""
    first: Any = samples[0]
    return Batch(
        indices=np.array([s.index for s in samples], dtype=np.int64),
        reasons=[s.reason for s in samples],
        inputs=tuple(torch.stack([s.inputs[k] for s in samples]) for k in range(len(first.inputs))),
        raws=tuple(np.stack([s.raws[k] for s in samples]) for k in range(len(first.raws))),
        ok=np.array([s.ok for s in samples], dtype=bool).reshape(len(samples), -1),
    )

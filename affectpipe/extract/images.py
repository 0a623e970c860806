"""Image decoding for extraction: any file a user may have -> RGB, or a reason why not.

Decoding runs in `torch.utils.data.DataLoader` worker processes. One decode feeds every
backbone of a run: the dataset returns one resized uint8 ``[S, S, 3]`` tensor per CNN backbone
(the backbone's official resize; normalisation happens batched on the model's device, which
is bit-identical and moves 4x fewer bytes) and one raw descriptor row per descriptor backbone
(descriptors see the RGB uint8 array).
A file that cannot be decoded (missing, zero bytes, truncated, not an image) never stops
the run: its rows come back zero-filled with ``ok = False`` and the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

Resize = Callable[[Image.Image], np.ndarray]  # RGB image -> uint8 [S, S, 3]

# 16-bit and 32-bit integer / float modes that `Image.convert("RGB")` would clip instead of scale.
_WIDE_MODES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}


class Descriptor(Protocol):
    """A non-torch backbone run per image in the decode workers (e.g. OpenFace-style)."""

    name: str
    raw_dim: int

    def describe(self, rgb: np.ndarray) -> tuple[np.ndarray, bool]: ...


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


def load_rgb(path: str | Path | None) -> tuple[Image.Image | None, str | None]:
    """Decode one image file fully; returns (RGB image, None) or (None, reason)."""
    if path is None:
        return None, "no image file (has_image is false)"
    try:
        with Image.open(path) as handle:  # sniffs the content: PNG bytes named .jpg are fine
            handle.load()  # force the full decode so truncated files fail here
            return to_rgb(handle), None
    except FileNotFoundError:
        return None, "missing file"
    except Exception as exc:  # any decoder error means this image is unusable, not the run
        if Path(path).is_file() and Path(path).stat().st_size == 0:
            return None, "empty file"
        return None, f"undecodable: {type(exc).__name__}: {exc}"


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

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Sample:
        image, reason = load_rgb(self.paths[index])
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

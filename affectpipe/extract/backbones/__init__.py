"""Backbone registry: one `BackboneSpec` per frozen network, looked up by name.

A spec is uniform data (input size, normalisation, output layout, class order, weights
name) plus three functions: `build` (random init), `load` (an official weight file) and
`preprocess` (the official test-time transform). Every model a spec returns is frozen
(eval mode, parameters without gradients) and maps the batch its spec's `normalize` makes
(float ``[N, 3, S, S]``; ``[N, 1, S, S]`` for grey networks) to
``(embedding [N, D], logits [N, K])``.

The built-in specs live in one module per family (`emotieffnet`, `ddamfn`, `dan`,
`fer_minixception`) and register themselves on import; they are imported on the first
lookup so that importing this package stays cheap. A new backbone is one
`register(BackboneSpec(...))` call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from affectpipe.errors import InputError

if TYPE_CHECKING:
    import torch
    from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Modules whose import registers the built-in backbones.
BUILTIN_MODULES = (
    "affectpipe.extract.backbones.emotieffnet",
    "affectpipe.extract.backbones.ddamfn",
    "affectpipe.extract.backbones.dan",
    "affectpipe.extract.backbones.fer_minixception",
)


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to run one frozen backbone exactly as its authors do.

    Preprocessing takes a PIL image in mode ``RGB``: callers convert grayscale, CMYK,
    palette or RGBA images with ``img.convert("RGB")`` first (what the official loaders
    do), and `preprocess` refuses any other mode rather than guess.

    `abaw_expr_index` lists, for ABAW expression codes 0..7, the logit column holding
    that class, so ``logits[:, abaw_expr_index]`` is in ABAW order; an entry is None for a
    class the backbone does not predict (FER2013 has no Other), and the whole field is None
    when the logits have no expression classes.
    """

    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embedding_dim: int
    logit_names: tuple[str, ...]
    abaw_expr_index: tuple[int | None, ...] | None
    weights: str
    builder: Callable[[], torch.nn.Module]
    loader: Callable[[Path], torch.nn.Module]
    description: str = ""

    def build(self) -> torch.nn.Module:
        """The network with random weights, frozen (eval mode, no gradients)."""
        return self.builder().eval().requires_grad_(False)

    def load(self, path: str | Path) -> torch.nn.Module:
        """The network with the weights of an official file (or a plain state_dict), frozen."""
        return self.loader(Path(path)).eval().requires_grad_(False)

    def resize(self, img: Image.Image) -> np.ndarray:
        """Official resize: PIL bilinear to (S, S), aspect ratio ignored; uint8 ``[S, S, 3]``."""
        from PIL import Image

        if img.mode != "RGB":
            raise ValueError(f"{self.name} preprocessing needs an RGB image, got mode {img.mode!r}")
        size = (self.input_size, self.input_size)
        return np.array(img.resize(size, Image.Resampling.BILINEAR), dtype=np.uint8)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, S, S, 3]`` (any device) -> normalised float32 ``[N, 3, S, S]``.

        Same arithmetic, in the same order, as torchvision's ToTensor then Normalize, so
        the result is bit-identical to the official per-image transform.
        """
        import torch

        scaled = batch.permute(0, 3, 1, 2).to(torch.float32).div(255)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=batch.device)
        std = torch.tensor(self.std, dtype=torch.float32, device=batch.device)
        return scaled.sub(mean[:, None, None]).div(std[:, None, None])

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """Official test-time transform of one RGB image -> float32 ``[3, S, S]``."""
        import torch

        return self.normalize(torch.from_numpy(self.resize(img))[None])[0]

    def preprocessing_attrs(self) -> dict[str, Any]:
        """A description of `preprocess` for the provenance of feature files."""
        return {
            "color": "RGB",
            "resize": [self.input_size, self.input_size],
            "interpolation": "PIL bilinear (antialiased when downscaling), uint8",
            "scale": "1/255",
            "mean": list(self.mean),
            "std": list(self.std),
        }


_REGISTRY: dict[str, BackboneSpec] = {}
_builtins_loaded = False


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone; a name can be registered only once."""
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    index = spec.abaw_expr_index
    picked = [i for i in index or () if i is not None]
    if index is not None and (
        len(index) != 8
        or len(set(picked)) != len(picked)
        or not set(picked) <= set(range(len(spec.logit_names)))
    ):
        raise ValueError(
            f"backbone {spec.name!r}: abaw_expr_index must pick 8 distinct logits (or None)"
        )
    _REGISTRY[spec.name] = spec
    return spec


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
        _builtins_loaded = True


def backbone_names() -> list[str]:
    """Names of all registered backbones, in registration order."""
    _load_builtins()
    return list(_REGISTRY)


def get_backbone(name: str) -> BackboneSpec:
    """The spec registered under `name`; InputError listing the known names otherwise."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise InputError(f"unknown backbone {name!r}; known backbones: {known}") from None

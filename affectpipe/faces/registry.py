"""The registry of face detectors, like the backbones' (`affectpipe.extract.registry`).

A registration is plain data: the detector's name, its implementation (``"module:attribute"``,
a factory ``(weights: {net: Path}, device: str) -> FaceDetector``, imported on first use), its
weight files (added to the weights manager, so `pipeline weights list|fetch|verify` and
``--weights NAME=PATH`` serve them as they serve the backbones'), and how its parity with the
original implementation is checked. To add a detector: write its module (it returns
`affectpipe.faces.detection.Detection`s with the 5 landmarks) and `register` it below.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affectpipe.errors import InputError
from affectpipe.extract.registry import PackageSource, WeightsEntry, register_weights
from affectpipe.faces.detection import FaceDetector


@dataclass(frozen=True)
class Detector:
    name: str
    impl: str  # "module:factory"
    weights: Mapping[str, WeightsEntry]  # the factory's weight names -> files
    parity: str  # where its outputs are checked against the original implementation
    # The score a detection needs for predict to count it as a face seen (`face_ok`).
    face_score: float = float("-inf")

    def build(self, device: str = "cpu", weights: Mapping[str, Path] | None = None) -> FaceDetector:
        """The detector with verified weight files (given by weights or net name, cached or
        fetched by the weights manager)."""
        from affectpipe.extract.weights import resolve_weights

        given = dict(weights or {})
        files = {
            net: resolve_weights(entry.name, given.get(entry.name) or given.get(net)).path
            for net, entry in self.weights.items()
        }
        module, _, attribute = self.impl.partition(":")
        factory: Any = getattr(importlib.import_module(module), attribute)
        return factory(files, device)


_DETECTORS: dict[str, Detector] = {}


def register(detector: Detector) -> Detector:
    if detector.name in _DETECTORS:
        raise ValueError(f"detector {detector.name!r} is already registered")
    entries = {net: register_weights(e, detector.name) for net, e in detector.weights.items()}
    detector = Detector(detector.name, detector.impl, entries, detector.parity, detector.face_score)
    _DETECTORS[detector.name] = detector
    return detector


def get(name: str) -> Detector:
    if name not in _DETECTORS:
        raise InputError(f"unknown face detector {name!r}; known: {', '.join(names())}")
    return _DETECTORS[name]


def names() -> list[str]:
    return list(_DETECTORS)


DEFAULT = "mtcnn"

# facenet-pytorch 2.6.0 (MIT) ships MTCNN's Caffe-trained weights converted to torch
# state_dicts; the wheel and each file are pinned.
_FACENET = (
    "facenet-pytorch==2.6.0",
    "facenet_pytorch-2.6.0-py3-none-any.whl",
    "ecb82b27beb226d106f2219efe8f829b01b87a8595badd01545679bdb9f19cca",
)
_MTCNN_SHA256 = {
    "pnet": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "rnet": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "onet": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}
register(
    Detector(
        "mtcnn",
        "affectpipe.faces.mtcnn:build",
        {
            net: WeightsEntry(
                f"mtcnn_{net}",
                f"mtcnn_{net}.pt",
                sha256=sha,
                package=PackageSource(*_FACENET, f"facenet_pytorch/data/{net}.pt"),
            )
            for net, sha in _MTCNN_SHA256.items()
        },
        "facenet-pytorch 2.6.0 MTCNN(keep_all=True).detect on shared/fixtures/mtcnn",
        # MTCNN keeps O-Net scores above 0.7. Non-face patches of screenshots and photos
        # (benchmarks/face_check.py, seeds 0-2, 345 patches) scored 0.702, 0.722 and 0.747;
        # real faces 0.867 at least in benchmarks/detect.py's frames (232) and 0.798 once in
        # a 64-frame raw video (docs/benchmarks.md, "Face detection").
        face_score=0.78,
    )
)
# dlib's HOG frontal detector + 68-point shape predictor (face-recognition-models), reduced
# to the 5 points: what `--detect` used before MTCNN, kept as the benchmark's baseline.
register(
    Detector(
        "dlib-hog",
        "affectpipe.faces.dlib_hog:build",
        {},
        "the dlib library itself (no re-implementation)",
    )
)

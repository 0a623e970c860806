"""int8 graphs of the CNN backbones (`pipeline extract --precision int8`): opt-in only.

An int8 graph is derived from the backbone's cached fp32 ONNX graph (`onnx_runtime`) by
ONNX Runtime's static quantization (QDQ: uint8 activations, int8 per-channel weights, MinMax
ranges), calibrated on real face crops: the first images of the dataset being extracted, its
train images first, in manifest order, each prepared exactly as extraction prepares it (so the
calibration is deterministic for a manifest). The last Conv/Gemm/MatMul of the graph (the
classifier) stays fp32: on fer-minixception's real weights that cuts the logits' difference
from 0.34 to 0.08 (relative) at the same speed (docs/benchmarks.md, "Reduced precision").

The graph is cached beside the fp32 one under a key made of the fp32 graph's key, the
quantization settings and the calibration pixels' sha256, with a record of its sha256 (a
graph whose bytes do not match is quantized again, never used) and of its MEASURED parity:
the largest relative difference (as `onnx_runtime.parity_difference`) of its embedding and of
its logits from the fp32 torch module's, on held-apart images of the same dataset (every third
candidate image; the other two thirds calibrate). No tolerance is imposed: int8 moves the
features, so the numbers go into the graph's record and every feature file it computes.

Static rather than dynamic quantization: `quantize_dynamic` quantizes the convolutions'
inputs on every call (ConvInteger), which on fer-minixception ran at about half the fp32
graph's speed; the static QDQ graph runs them as int8 (VNNI): about fp32's speed on fer (too
small to gain), 1.3-2.6x the fp32 graph's forward on the larger CNNs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from affectpipe.errors import AffectpipeError, InputError
from affectpipe.extract import onnx_runtime as ort_runtime
from affectpipe.fsutil import atomic_path, write_text_atomic

if TYPE_CHECKING:
    import torch

    from affectpipe.extract.backbones import BackboneSpec

logger = logging.getLogger("affectpipe.extract")

QUANTIZATION = {
    "method": "onnxruntime.quantization.quantize_static",
    "format": "QDQ",
    "activations": "QUInt8",
    "weights": "QInt8 per channel",
    "calibration": "MinMax",
    "pre_process": "quant_pre_process(skip_symbolic_shape=True)",
    "float_nodes": "the last Conv/Gemm/MatMul (the classifier)",
}
CANDIDATE_IMAGES = 96  # decodable images looked at: two thirds calibrate, one third checks
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


class QuantizationError(AffectpipeError):
    """The int8 graph could not be made."""


@dataclass(frozen=True)
class Calibration:
    """Face crops prepared for one backbone: `pixels` calibrate, `check` measures parity."""

    pixels: np.ndarray  # uint8 [N, S, S, 3]
    check: np.ndarray  # uint8 [M, S, S, 3]
    sha256: str  # of both arrays and their shapes

    @classmethod
    def of(cls, crops: np.ndarray) -> Calibration:
        """Every third crop checks, the others calibrate (all do both when fewer than 3)."""
        crops = np.ascontiguousarray(crops, dtype=np.uint8)
        if len(crops) == 0:
            raise InputError("int8 calibration needs at least one readable image")
        third = np.arange(len(crops)) % 3 == 2
        if len(crops) < 3:
            pixels, check = crops, crops
        else:
            pixels, check = crops[~third], crops[third]
        digest = hashlib.sha256()
        for array in (pixels, check):
            digest.update(json.dumps(array.shape).encode())
            digest.update(array.tobytes())
        return cls(pixels, check, digest.hexdigest())


def calibration_set(
    spec: BackboneSpec, paths: Sequence[str | None], train_mask: np.ndarray | None = None
) -> Calibration:
    """The first CANDIDATE_IMAGES decodable images of `paths` (train ones first, in order),
    prepared as extraction prepares them for `spec`."""
    from affectpipe.extract.decode import DecodeDataset

    order = np.arange(len(paths))
    if train_mask is not None:
        order = np.concatenate([order[train_mask], order[~train_mask]])
    dataset = DecodeDataset(list(paths), [spec.resize], [spec.input_size])
    crops = []
    for index in order:
        if paths[index] is None:
            continue
        sample = dataset[int(index)]
        if sample.ok[0] and sample.reason is None:
            crops.append(sample.inputs[0].numpy())
            if len(crops) == CANDIDATE_IMAGES:
                break
    if not crops:
        raise InputError(f"{spec.name}: --precision int8 found no readable image to calibrate on")
    return Calibration.of(np.stack(crops))


def quantized_key(fp32_key: str, calibration_sha256: str) -> str:
    """sha256 of what an int8 graph depends on: its fp32 graph's key (weights, export
    settings, onnxruntime version), the quantization settings and the calibration pixels."""
    payload = {
        "fp32_key": fp32_key,
        "quantization": QUANTIZATION,
        "calibration_sha256": calibration_sha256,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def int8_model(
    spec: BackboneSpec,
    weights_sha256: str,
    build: Callable[[], torch.nn.Module],
    calibration: Calibration,
) -> ort_runtime.OnnxModel:
    """The int8 graph of backbone `spec` (weights of sha256 `weights_sha256`) calibrated on
    `calibration`, as an ONNX Runtime session: from the cache, else quantized from the fp32
    graph (itself cached or exported from `build()`), measured against the torch module and
    cached. InputError when the `onnx` extra is missing; QuantizationError when quantizing
    fails."""
    missing = ort_runtime.missing_modules()
    if missing:
        raise InputError(f"--precision int8 needs {', '.join(missing)}: {ort_runtime.INSTALL_HINT}")
    fp32_key = ort_runtime.cache_key(spec.name, weights_sha256)
    key = quantized_key(fp32_key, calibration.sha256)
    graph = ort_runtime.cached_graph(spec.name, key, variant="int8")
    if graph is None:
        module = None

        def built() -> torch.nn.Module:
            nonlocal module
            module = build().eval().cpu() if module is None else module
            return module

        fp32 = ort_runtime.cached_graph(spec.name, fp32_key)
        if fp32 is None:
            fp32 = ort_runtime.export_and_check(spec, built(), fp32_key)
        graph = _quantize_and_measure(spec, built(), fp32, key, calibration)
    return ort_runtime.OnnxModel(graph, ort_runtime.session_threads(spec))


def quantize_graph(fp32_graph: bytes, calibration: np.ndarray, batch: int = 16) -> bytes:
    """The static QDQ int8 graph of the serialised fp32 graph, its activation ranges taken
    from the uint8 pixel batch `calibration` (QUANTIZATION says how)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                {"input": calibration[i : i + batch]} for i in range(0, len(calibration), batch)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quant_logger = logging.getLogger("onnxruntime.quantization")
    level = quant_logger.level
    quant_logger.setLevel(logging.ERROR)  # its advice on pre-processing (done) and its progress
    try:
        with tempfile.TemporaryDirectory(prefix="affectpipe-int8-") as scratch:
            folder = Path(scratch)
            (folder / "fp32.onnx").write_bytes(fp32_graph)
            quant_pre_process(folder / "fp32.onnx", folder / "pre.onnx", skip_symbolic_shape=True)
            nodes = onnx.load(str(folder / "pre.onnx")).graph.node
            weighted = [n.name for n in nodes if n.op_type in WEIGHTED_OPS]
            quantize_static(
                folder / "pre.onnx",
                folder / "int8.onnx",
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=weighted[-1:],
            )
            return (folder / "int8.onnx").read_bytes()
    finally:
        quant_logger.setLevel(level)


def measure(expected: tuple[np.ndarray, ...], got: tuple[np.ndarray, ...]) -> tuple[float, float]:
    """(embedding, logits) largest relative differences (`onnx_runtime.parity_difference`)."""
    return (
        ort_runtime.parity_difference(expected[:1], got[:1]),
        ort_runtime.parity_difference(expected[1:], got[1:]),
    )


def _quantize_and_measure(
    spec: BackboneSpec,
    module: torch.nn.Module,
    fp32: ort_runtime.Graph,
    key: str,
    calibration: Calibration,
) -> ort_runtime.Graph:
    import torch

    from affectpipe.extract.engine import FromPixels

    logger.warning(
        "%s: quantizing the ONNX graph to int8 on %d face crops (once per weights, versions "
        "and calibration images)",
        spec.name,
        len(calibration.pixels),
    )
    try:
        data = quantize_graph(fp32.data, calibration.pixels)
    except Exception as exc:  # the quantizer fails in open-ended ways; all mean "no graph"
        raise QuantizationError(
            f"{spec.name}: int8 quantization failed: {type(exc).__name__}: {exc}"
        ) from exc
    sha = hashlib.sha256(data).hexdigest()
    with torch.inference_mode():
        check = torch.from_numpy(calibration.check)
        expected = tuple(t.numpy() for t in FromPixels(spec, module)(check))
    graph = ort_runtime.Graph(data, sha, float("nan"))
    got = ort_runtime.OnnxModel(graph, ort_runtime.session_threads(spec))(calibration.check)
    embedding, logits = measure(expected, got)
    record = {
        "key": key,
        "sha256": sha,
        "parity": max(embedding, logits),
        "parity_embedding": embedding,
        "parity_logits": logits,
        "parity_images": len(calibration.check),
        "calibration_images": len(calibration.pixels),
        "calibration_sha256": calibration.sha256,
        "fp32_graph_sha256": fp32.sha256,
        "quantization": QUANTIZATION,
        "backbone": spec.name,
        "export": ort_runtime.export_settings(),
    }
    logger.warning(
        "%s: int8 graph differs from fp32 torch by %.3g (embedding) and %.3g (logits), "
        "relative, on %d held-apart crops",
        spec.name,
        embedding,
        logits,
        len(calibration.check),
    )
    path, record_path = ort_runtime.graph_paths(spec.name, key, variant="int8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    write_text_atomic(record_path, json.dumps(record, indent=1) + "\n")
    return ort_runtime.Graph(data, sha, record["parity"], record)


def int8_attrs(graph: ort_runtime.Graph) -> dict[str, Any]:
    """What a feature file computed by an int8 graph records of it (provenance)."""
    record = graph.record
    return {
        "int8_quantization": json.dumps(record.get("quantization"), sort_keys=True),
        "int8_calibration_sha256": record.get("calibration_sha256"),
        "int8_calibration_images": record.get("calibration_images"),
        "int8_parity_embedding": record.get("parity_embedding"),
        "int8_parity_logits": record.get("parity_logits"),
        "int8_parity_images": record.get("parity_images"),
        "fp32_onnx_graph_sha256": record.get("fp32_graph_sha256"),
    }

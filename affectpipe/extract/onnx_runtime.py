"""The CNN backbones as ONNX graphs run by ONNX Runtime (`--runtime onnx|auto`).

There is no second model definition: the graph is exported (`torch.onnx.export`, the dynamo
exporter) from the very torch module `pipeline extract` would run, with its weights loaded,
behind the backbone's own normalisation (`engine.FromPixels`): the graph takes the decoded
uint8 pixels ``[N, S, S, 3]``, and normalising runs in ONNX Runtime's threads.
It is cached in the weights cache (``<weights_dir>/onnx/``) under a key made of the weights'
sha256, the export settings (exporter and opset, torch / onnxscript / affectpipe versions)
and the onnxruntime version, beside a record of the graph's own sha256: a cached graph whose
bytes do not hash to the recorded value is rebuilt, never used. On export the graph is run
against the torch module on a probe batch; a graph that differs by more than
PARITY_TOLERANCE (relative to each row's size) is refused.

Graphs are data (protobuf), and are handed to ONNX Runtime as the bytes that were hashed.
ONNX Runtime runs them on the CPU with as many intra-op threads as the torch path uses.

`--precision int8` runs int8 graphs derived from these (`affectpipe.extract.quantize`): only
when asked for; `auto` never picks them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from affectpipe import __version__
from affectpipe.config import weights_dir
from affectpipe.errors import AffectpipeError, InputError
from affectpipe.fsutil import atomic_path, write_text_atomic

if TYPE_CHECKING:
    import torch

    from affectpipe.extract.backbones import BackboneSpec

logger = logging.getLogger("affectpipe.extract")

RUNTIMES = ("auto", "torch", "onnx")
INSTALL_HINT = "pip install 'affectpipe[onnx]'"
# onnxruntime runs the graphs; onnx and onnxscript are what torch's exporter needs.
MODULES = ("onnxruntime", "onnx", "onnxscript")
OPSET = 18
PARITY_TOLERANCE = 1e-4  # |onnx - torch| per row, times max(1, max |torch row|)
PARITY_BATCH = 4


class ParityError(AffectpipeError):
    """The exported graph does not reproduce the torch module."""


def missing_modules() -> list[str]:
    """The modules of the `onnx` extra that cannot be imported here."""
    return [name for name in MODULES if importlib.util.find_spec(name) is None]


def resolve_runtime(runtime: str, device_type: str, precision: str = "fp32") -> str:
    """`torch` or `onnx`: what `runtime` (auto, torch, onnx) means on `device_type` for
    features at `precision` (fp32, bf16, fp16: torch autocast; int8: ONNX Runtime only).

    auto is ONNX Runtime on the CPU when the `onnx` extra is installed (fp32 graphs: auto
    never chooses a precision), torch otherwise; an explicit onnx that cannot run here is an
    InputError saying why. int8 is an explicit choice, so it never falls back to torch: it is
    onnx, or an InputError saying why not."""
    if runtime not in RUNTIMES:
        raise InputError(f"bad runtime {runtime!r}: use {', '.join(RUNTIMES)}")
    if precision == "int8":
        if runtime == "torch":
            raise InputError("--precision int8 runs on ONNX Runtime: use --runtime onnx or auto")
        runtime = "onnx"
    elif runtime == "torch":
        return "torch"
    missing = missing_modules()
    if missing:
        why = f"needs {', '.join(missing)}, which are not installed: {INSTALL_HINT}"
    elif device_type != "cpu":
        why = "runs on the CPU: use --runtime torch (or auto) on a GPU"
    elif precision not in ("fp32", "int8"):
        why = f"runs in fp32 or int8: drop --precision {precision}, or use --runtime torch"
    else:
        return "onnx"
    if precision == "int8":
        if device_type != "cpu" and not missing:
            why = "runs on the CPU: drop --precision int8 on a GPU"
        raise InputError(f"--precision int8 (ONNX Runtime) {why}")
    if runtime == "auto":
        return "torch"
    raise InputError(f"--runtime onnx {why}")


def runtime_attrs(
    runtime: str, graph_sha256: str | None = None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a feature file records about the runtime that computed its rows (provenance only:
    never part of a file's identity, so switching runtime does not make a file stale; the
    precision is, see `staleness`). `extra`: more of the graph's record (an int8 graph's
    calibration and measured parity, `quantize.int8_attrs`)."""
    if runtime == "onnx":
        import onnxruntime

        return {
            "runtime": "onnx",
            "runtime_version": f"onnxruntime {onnxruntime.__version__}",
            "onnx_graph_sha256": graph_sha256,
            **(extra or {}),
        }
    import torch

    return {"runtime": "torch", "runtime_version": f"torch {torch.__version__}"}


def export_settings() -> dict[str, Any]:
    """What decides the exported graph besides the weights (part of the cache key)."""
    from importlib.metadata import version  # importing onnxscript itself takes a second

    import torch

    return {
        "exporter": "torch.onnx.export(dynamo=True)",
        "opset": OPSET,
        "dynamic_batch": True,
        "input": "uint8 pixels [N, S, S, 3], normalised in the graph",
        "torch": torch.__version__,
        "onnxscript": version("onnxscript"),
        "affectpipe": __version__,
    }


def cache_key(backbone: str, weights_sha256: str) -> str:
    """sha256 of everything a cached graph depends on: weights, export settings, runtime."""
    import onnxruntime

    payload = {
        "backbone": backbone,
        "weights_sha256": weights_sha256,
        "export": export_settings(),
        "onnxruntime": onnxruntime.__version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def graph_paths(backbone: str, key: str, variant: str = "") -> tuple[Path, Path]:
    """(graph, record) of the cached export (or its `variant`, e.g. int8) under `key`."""
    stem = weights_dir() / "onnx" / f"{backbone}-{variant + '-' if variant else ''}{key[:16]}"
    return stem.with_suffix(".onnx"), stem.with_suffix(".json")


@dataclass(frozen=True)
class Graph:
    """A checked graph: its bytes, their sha256, its largest relative parity difference and
    the record cached beside it."""

    data: bytes
    sha256: str
    parity: float
    record: dict[str, Any] = field(default_factory=dict)


def cached_graph(backbone: str, key: str, variant: str = "") -> Graph | None:
    """The cached graph (or its `variant`) under `key` when its bytes hash to the recorded
    sha256; None (with a warning when a file was there) otherwise."""
    path, record_path = graph_paths(backbone, key, variant)
    if not path.exists():
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        data = path.read_bytes()
        expected, parity = str(record["sha256"]), float(record["parity"])
        ok = record.get("key") == key
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.warning("%s: no readable record (%s): making the graph again", path, exc)
        return None
    actual = hashlib.sha256(data).hexdigest()
    if not ok or actual != expected:
        logger.warning(
            "%s: sha256 %s does not match the recorded %s (corrupt or replaced): "
            "making the graph again",
            path,
            actual,
            expected,
        )
        return None
    return Graph(data, actual, parity, record)


def export_graph(model: torch.nn.Module, probe: torch.Tensor) -> bytes:
    """The serialised ONNX graph of `model` on inputs like `probe` (one input; outputs
    embedding, logits; dynamic batch)."""
    import warnings

    import torch

    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        program = torch.onnx.export(
            model,
            (probe,),
            input_names=["input"],
            output_names=["embedding", "logits"],
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    return program.model_proto.SerializeToString()


def parity_difference(expected: tuple[np.ndarray, ...], got: tuple[np.ndarray, ...]) -> float:
    """Largest |got - expected| over all outputs, each row's difference divided by
    max(1, max |expected row|) (outputs such as DAN's embedding reach 1e4)."""
    worst = 0.0
    for e, g in zip(expected, got, strict=True):
        scale = np.maximum(1.0, np.abs(e).max(axis=1))
        worst = max(worst, float((np.abs(g - e).max(axis=1) / scale).max()))
    return worst


class OnnxModel:
    """An ONNX Runtime session on the CPU: uint8 pixels ``[N, S, S, 3]`` -> (embedding,
    logits)."""

    def __init__(self, graph: Graph, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one graph at a time: no parallel branches to run
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.graph = graph
        self.threads = threads
        self.session = onnxruntime.InferenceSession(
            graph.data, options, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        embedding, logits = self.session.run(None, {self.input: np.ascontiguousarray(batch)})
        return embedding, logits


def session_threads(spec: BackboneSpec) -> int:
    """The intra-op threads the torch path would use for `spec` on the CPU."""
    import torch

    threads = torch.get_num_threads()
    return min(threads, spec.max_threads) if spec.max_threads else threads


def onnx_model(
    spec: BackboneSpec, weights_sha256: str, build: Callable[[], torch.nn.Module]
) -> OnnxModel:
    """The backbone `spec` with the weights of sha256 `weights_sha256` as an ONNX Runtime
    session: from the cache, else exported from `build()` (its frozen torch module with those
    weights, built only then), checked and cached.

    ParityError when a fresh export does not reproduce the module; InputError when the `onnx`
    extra is missing."""
    missing = missing_modules()
    if missing:
        raise InputError(f"the ONNX runtime needs {', '.join(missing)}: {INSTALL_HINT}")
    key = cache_key(spec.name, weights_sha256)
    graph = cached_graph(spec.name, key)
    if graph is None:
        graph = export_and_check(spec, build().eval().cpu(), key)
    return OnnxModel(graph, session_threads(spec))


def export_and_check(spec: BackboneSpec, model: torch.nn.Module, key: str) -> Graph:
    import torch

    from affectpipe.extract.engine import FromPixels, probe_pixels

    pixels = probe_pixels(spec, PARITY_BATCH)
    exported = FromPixels(spec, model)  # checked below against the very module exported
    logger.warning("%s: exporting the ONNX graph (once per weights and versions)", spec.name)
    try:
        data = export_graph(exported, pixels[:2])
    except Exception as exc:  # the exporter fails in open-ended ways; all mean "no graph"
        raise ParityError(f"{spec.name}: ONNX export failed: {type(exc).__name__}: {exc}") from exc
    graph = Graph(data, hashlib.sha256(data).hexdigest(), float("nan"))
    with torch.inference_mode():
        expected = tuple(t.numpy() for t in exported(pixels))
    got = OnnxModel(graph, session_threads(spec))(pixels.numpy())
    difference = parity_difference(expected, got)
    if not difference <= PARITY_TOLERANCE:
        raise ParityError(
            f"{spec.name}: the exported ONNX graph differs from the torch module by "
            f"{difference:.3g} (relative; at most {PARITY_TOLERANCE:g} allowed)"
        )
    path, record_path = graph_paths(spec.name, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    record = {"key": key, "sha256": graph.sha256, "parity": difference,
              "backbone": spec.name, "export": export_settings()}  # fmt: skip
    write_text_atomic(record_path, json.dumps(record, indent=1) + "\n")
    return Graph(data, graph.sha256, difference, record)


def onnx_or_torch(
    spec: BackboneSpec,
    weights_sha256: str,
    build: Callable[[], torch.nn.Module],
    *,
    strict: bool,
) -> OnnxModel | None:
    """`onnx_model`, or None (warned) when the graph cannot be had and not `strict`
    (--runtime auto falls back to torch; an explicit --runtime onnx refuses)."""
    try:
        return onnx_model(spec, weights_sha256, build)
    except ParityError as exc:
        if strict:
            raise
        logger.warning("%s: running %s with torch", exc, spec.name)
        return None

"""The extraction pass: decode once in worker processes, run every backbone, commit chunks.

One pass serves several backbones: each batch of distinct images is decoded by the
DataLoader workers (see `affectpipe.extract.decode`), every CNN model runs on it under
`torch.inference_mode()`, descriptor rows come back from the workers, and each backbone's
rows are committed to its `PartStore` chunk by chunk. Batches never cross a chunk boundary,
so an interrupted and resumed run computes exactly the same batches as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from affectpipe.extract.backbones import BackboneSpec
from affectpipe.extract.decode import DecodeDataset, Descriptor, collate, die_with_parent
from affectpipe.extract.store import PartStore
from affectpipe.heads.attention import map_tokens

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ModelJob:
    """One CNN backbone in a pass: its spec, its prepared model and where its rows go;
    `spatial_grid` G: also the `spatial` part, its last feature map pooled to G x G cells.

    `runtime` says what `model` is: a torch module, or (``onnx``) an
    `affectpipe.extract.onnx_runtime.OnnxModel` run by ONNX Runtime on the CPU."""

    spec: BackboneSpec
    model: Any  # torch.nn.Module, or OnnxModel
    store: PartStore | None
    spatial_grid: int | None = None
    runtime: str = "torch"


@dataclass
class DescriptorJob:
    """One descriptor backbone in a pass (its rows are computed by the decode workers)."""

    descriptor: Descriptor
    store: PartStore


@dataclass(frozen=True)
class PassStats:
    rows: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class _ChunkBuffer:
    """Rows of one backbone accumulated until their chunk is complete."""

    start: int = -1
    parts: dict[str, list[np.ndarray]] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    rows: int = 0

    def add(self, start: int, arrays: dict[str, np.ndarray], failed: dict[int, str]) -> None:
        if start != self.start:
            self.start, self.parts, self.failed, self.rows = start, {}, {}, 0
        for name, array in arrays.items():
            self.parts.setdefault(name, []).append(array)
        self.failed.update(failed)
        self.rows += len(next(iter(arrays.values())))

    def commit_if_full(self, store: PartStore) -> None:
        if self.rows == store.chunk_stop(self.start) - self.start:
            arrays = {name: np.concatenate(parts) for name, parts in self.parts.items()}
            store.commit(self.start, arrays, self.failed)
            self.start = -1


def resolve_device(device: str) -> torch.device:
    """`cpu`, `cuda` or `cuda:N` -> torch.device, refusing CUDA when none is usable."""
    from affectpipe.errors import InputError

    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise InputError(f"bad device {device!r}: {exc}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {device} requested but CUDA is not available here")
        index = resolved.index or 0
        if index >= torch.cuda.device_count():
            raise InputError(f"device {device}: only {torch.cuda.device_count()} GPU(s) visible")
        resolved = torch.device("cuda", index)
    elif resolved.type != "cpu":
        raise InputError(f"unsupported device {device!r}: use cpu, cuda or cuda:N")
    return resolved


FOLD_CHECK_ATOL = 1e-4  # folded vs original on a probe batch (relative to outputs above 1);
# a correct fold differs by ~1e-6, a wrong one by the size of the outputs


def _batchnorm_replacement(bn: torch.nn.BatchNorm2d) -> torch.nn.Module | None:
    """What remains of `bn` once folded: nothing, or the activation of a fused BN+act module."""
    if type(bn) is torch.nn.BatchNorm2d:
        return torch.nn.Identity()
    if all(isinstance(getattr(bn, a, None), torch.nn.Module) for a in ("drop", "act")):
        return torch.nn.Sequential(bn.drop, bn.act)  # timm's BatchNormAct2d: bn -> drop -> act
    return None


def conv_batchnorm_pairs(model: torch.nn.Module, probe: torch.Tensor) -> list[tuple[str, str]]:
    """(conv, batchnorm) module names where the BN's only call consumes the conv's output.

    Found by running `probe` with hooks, so it follows the real dataflow whatever the code
    structure; a conv or BN called more than once is left alone.
    """
    outputs: dict[int, tuple[str, torch.Tensor]] = {}  # keeps outputs alive: ids stay unique
    calls: dict[str, int] = {}
    consumed: dict[str, str | None] = {}

    def after_conv(name: str):
        def hook(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            outputs[id(output)] = (name, output)

        return hook

    def before_bn(name: str):
        def hook(module, inputs):
            calls[name] = calls.get(name, 0) + 1
            consumed[name] = outputs.get(id(inputs[0]), (None, None))[0]

        return hook

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            handles.append(module.register_forward_hook(after_conv(name)))
        elif isinstance(module, torch.nn.BatchNorm2d) and module.track_running_stats:
            handles.append(module.register_forward_pre_hook(before_bn(name)))
    try:
        with torch.inference_mode():
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    return [
        (conv, bn)
        for bn, conv in consumed.items()
        if conv is not None and calls[bn] == 1 and calls[conv] == 1
    ]


def fold_batchnorms(model: torch.nn.Module, probe: torch.Tensor) -> torch.nn.Module:
    """Fold eval-mode BatchNorms into the convs that feed them (fewer passes over memory).

    Works on a copy; returns the original model if the folded one disagrees with it on
    `probe` by more than FOLD_CHECK_ATOL (a conv output also used elsewhere, say).
    """
    import copy

    folded = copy.deepcopy(model)
    modules = dict(folded.named_modules())
    for conv_name, bn_name in conv_batchnorm_pairs(folded, probe):
        conv, bn = modules[conv_name], modules[bn_name]
        replacement = _batchnorm_replacement(bn)
        if replacement is None:
            continue
        with torch.no_grad():
            scale = torch.rsqrt(bn.running_var.double() + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight.double()
            shift = -bn.running_mean.double() * scale
            if bn.bias is not None:
                shift = shift + bn.bias.double()
            if conv.bias is not None:
                shift = shift + conv.bias.double() * scale
            shape = (-1,) + (1,) * (conv.weight.dim() - 1)
            conv.weight.copy_(conv.weight.double() * scale.reshape(shape))
            conv.bias = torch.nn.Parameter(shift.to(conv.weight.dtype), requires_grad=False)
        parent, _, attr = bn_name.rpartition(".")
        setattr(modules[parent] if parent else folded, attr, replacement)
    with torch.inference_mode():
        expected, got = model(probe), folded(probe)
    for e, g in zip(expected, got, strict=True):
        if float((e - g).abs().max()) > FOLD_CHECK_ATOL * max(1.0, float(e.abs().max())):
            return model
    return folded


def probe_pixels(spec: BackboneSpec, size: int = 2) -> torch.Tensor:
    """A fixed batch of random uint8 pixels ``[size, S, S, 3]`` for checking model rewrites."""
    generator = torch.Generator().manual_seed(0)
    shape = (size, spec.input_size, spec.input_size, 3)
    return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)


class FromPixels(torch.nn.Module):
    """A backbone's module behind its own normalisation: uint8 ``[N, S, S, 3]`` pixels ->
    its outputs. The ONNX graphs are exported from this, so that ONNX Runtime normalises
    inside its thread pool instead of the main process doing it (the same operations in the
    same order: the same float32 values)."""

    def __init__(self, spec: BackboneSpec, model: torch.nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.model = model

    def forward(self, pixels: torch.Tensor) -> Any:
        return self.model(self.spec.normalize(pixels))


def probe_batch(spec: BackboneSpec, size: int = 2) -> torch.Tensor:
    """`probe_pixels` normalised as the backbone's torch module takes them."""
    return spec.normalize(probe_pixels(spec, size))


def prepare_model(
    model: torch.nn.Module,
    device: torch.device,
    *,
    channels_last: bool,
    probe: torch.Tensor | None = None,
) -> torch.nn.Module:
    """Eval mode on `device`, channels-last when asked (faster convs on CPU and GPU), with
    BatchNorms folded into their convs when a normalised `probe` batch is given."""
    model = model.eval().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if probe is not None:
        probe = probe.to(device)
        if channels_last:
            probe = probe.contiguous(memory_format=torch.channels_last)
        model = fold_batchnorms(model, probe)
    return model


def pooled_tokens(feature_map: torch.Tensor, grid: int) -> torch.Tensor:
    """A feature map [N, C, H, W] average-pooled to grid x grid cells, as the `spatial`
    part's rows [N, grid * grid * C] (cell by cell, see `affectpipe.features`)."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(feature_map.float(), grid)
    return map_tokens(pooled).flatten(1)


def forward(
    job: ModelJob,
    pixels: torch.Tensor,
    device: torch.device,
    *,
    channels_last: bool,
    amp_dtype: torch.dtype | None,
) -> dict[str, np.ndarray]:
    """uint8 ``[B, S, S, 3]`` -> the job's parts as numpy arrays: ``embedding`` and
    ``logits`` (float32), and ``spatial`` (float16) when the job has a spatial grid."""
    if job.runtime == "onnx":  # the graph takes the pixels: the normalisation is inside it
        embedding, logits = job.model(pixels.numpy())
        return {"embedding": embedding, "logits": logits}
    x = job.spec.normalize(pixels.to(device, non_blocking=True))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    with autocast, torch_threads(job.spec.max_threads if device.type == "cpu" else None):
        embedding, logits = job.model(x)
        parts = {"embedding": embedding, "logits": logits}
        if job.spatial_grid:
            # A second pass through the trunk: the backbones' forward does not return its map.
            tokens = pooled_tokens(job.model.feature_map(x), job.spatial_grid)
            parts["spatial"] = tokens.to(torch.float16)
    return {
        name: (t if name == "spatial" else t.float()).cpu().numpy() for name, t in parts.items()
    }


@contextlib.contextmanager
def torch_threads(limit: int | None):
    """At most `limit` intra-op threads inside the block (None: unchanged)."""
    before = torch.get_num_threads()
    if limit is None or limit >= before:
        yield
        return
    torch.set_num_threads(limit)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def checked_rows(
    arrays: dict[str, np.ndarray], ok: np.ndarray, reasons: Sequence[str], local_rows: np.ndarray
) -> dict[int, str]:
    """Apply the feature contract to one batch's `arrays` in place (a NaN/inf row is a failed
    row, so a file with non-finite ok rows is never current; failed rows hold zeros; `ok` is
    added) and return the failed rows' reasons by store row. Both engines commit through it."""
    non_finite = ok & ~np.all([np.isfinite(a).all(axis=1) for a in arrays.values()], 0)
    ok = ok & ~non_finite
    for array in arrays.values():
        array[~ok] = 0.0
    arrays["ok"] = ok
    why = [
        "non-finite features" if bad else reason or "not processed"
        for bad, reason in zip(non_finite, reasons, strict=True)
    ]
    return {int(local_rows[i]): why[i] for i in np.flatnonzero(~ok)}


def pass_layout(stores: Sequence[PartStore]) -> tuple[PartStore, list[set[int]]]:
    """The chunk layout one pass shares (rows and chunk boundaries), and each store's
    missing chunks; any engine's pass starts here."""
    if len({(s.n_rows, s.chunk_rows) for s in stores}) != 1:
        raise ValueError("the stores of one pass must share rows and chunk boundaries")
    return stores[0], [set(s.missing_chunks()) for s in stores]


def extract_pass(
    paths: Sequence[str | None],
    offset: int,
    model_jobs: Sequence[ModelJob],
    descriptor_jobs: Sequence[DescriptorJob],
    *,
    device: torch.device,
    batch_size: int,
    workers: int,
    channels_last: bool = True,
    amp_dtype: torch.dtype | None = None,
    progress: bool = True,
) -> PassStats:
    """Compute every chunk missing from any job's store.

    `paths[offset + r]` is the image of store row r; all stores share rows and chunk size.
    """
    jobs = [*model_jobs, *descriptor_jobs]
    stores = [job.store for job in jobs]
    store, missing = pass_layout(stores)
    chunk_starts = sorted(set().union(*missing))
    batches = [
        list(range(offset + first, offset + min(first + batch_size, store.chunk_stop(start))))
        for start in chunk_starts
        for first in range(start, store.chunk_stop(start), batch_size)
    ]
    rows = sum(len(b) for b in batches)
    if not rows:
        return PassStats(0, 0.0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels
    dataset = DecodeDataset(
        paths,
        [job.spec.resize for job in model_jobs],
        [job.spec.input_size for job in model_jobs],
        [job.descriptor for job in descriptor_jobs],
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
        worker_init_fn=functools.partial(die_with_parent, os.getpid()),
    )
    buffers = [_ChunkBuffer() for _ in jobs]
    names = ", ".join(s.target.stem for s in stores)
    started = time.perf_counter()
    with (
        torch.inference_mode(),
        tqdm(total=rows, unit="img", desc=f"extract {names}", disable=not progress) as bar,
    ):
        for batch in loader:
            local = batch.indices - offset
            start = int(local[0]) // store.chunk_rows * store.chunk_rows
            for k, job in enumerate(jobs):
                if start not in missing[k]:
                    continue  # this backbone committed the chunk before an interruption
                ok = batch.ok[:, k]
                if k < len(model_jobs):
                    arrays = forward(
                        job,
                        batch.inputs[k],
                        device,
                        channels_last=channels_last,
                        amp_dtype=amp_dtype,
                    )
                else:
                    arrays = {"embedding": batch.raws[k - len(model_jobs)].copy()}
                failures = checked_rows(arrays, ok, batch.reasons, local)
                buffers[k].add(start, arrays, failures)
                buffers[k].commit_if_full(job.store)
            bar.update(len(local))
    return PassStats(rows, time.perf_counter() - started)

"""The extraction stage's work: `run` (plan, locks, resumable passes, final files) and the
models its passes run (`build_model`, `model_job`).

`run` plans the work (`plan`: which backbones, weights and rows; `staleness`: which files
are current), holds one lock per output file, runs the shared decode/inference pass
(`engine`) into resumable part stores (`store`) and assembles each complete feature file
atomically (`assemble`); importers (`importers`) read other tools' outputs instead. Users
import these names from the package (`affectpipe.extract`), which loads this module on first
use. Heavy modules (torch, the backbones) are imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import shutil
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.extract.assemble import finish, retry_store_target, target_report
from affectpipe.extract.importers import import_outputs
from affectpipe.extract.options import ExtractOptions
from affectpipe.extract.plan import (
    ManifestView,
    Target,
    default_backbones,
    plan,
    read_manifest_view,
    shard_range,
)
from affectpipe.extract.results import BackboneReport, ExtractSummary
from affectpipe.extract.shards import merge_scratch
from affectpipe.extract.staleness import is_current, retry_rows
from affectpipe.fsutil import disk_full_as_error, file_lock, remove_stale_temps
from affectpipe.machine import default_workers

logger = logging.getLogger("affectpipe.extract")

DEFAULT_CHUNK_ROWS = 2048  # rows per committed chunk: at most this much work is redone
RANDOM_INIT_SEED = 0
# fp32; bf16, fp16: torch autocast (`--amp`); int8: ONNX Runtime int8 graphs (`quantize`).
PRECISIONS = ("fp32", "bf16", "fp16", "int8")


def build_model(spec: Any, weights_path: Path | None) -> Any:
    """A backbone's frozen network: from its weights file, or (None) the fixed-seed random
    init that feature files record as `random-init`. `predict` builds its models here too."""
    import torch

    if weights_path is not None:
        return spec.load(weights_path)
    with torch.random.fork_rng(devices=[]):  # fixed-seed random init, global RNG untouched
        torch.manual_seed(RANDOM_INIT_SEED)
        return spec.build()


def model_job(
    spec: Any,
    weights_path: Path | None,
    weights_sha256: str,
    device: Any,
    *,
    channels_last: bool,
    runtime: str,
    strict: bool,
    precision: str = "fp32",
    calibration: Any = None,
) -> Any:
    """A backbone's `engine.ModelJob` (without a store) on `runtime` (``torch`` or ``onnx``,
    as resolved by `onnx_runtime.resolve_runtime`): the ONNX graph of its module (the torch
    module is built only to export it), or, with torch (or when the graph fails its parity
    check and not `strict`), the prepared module. `precision` int8 (onnx only): the int8
    graph calibrated on `calibration` (`quantize.Calibration`), never replaced by torch.
    `predict` builds its models here too."""
    from affectpipe.extract.engine import ModelJob, prepare_model, probe_batch

    build = functools.partial(build_model, spec, weights_path)
    if precision == "int8":
        from affectpipe.extract.quantize import int8_model

        if runtime != "onnx" or calibration is None:
            raise InputError(f"{spec.name}: int8 runs on ONNX Runtime, with calibration images")
        return ModelJob(
            spec, int8_model(spec, weights_sha256, build, calibration), None, runtime="onnx"
        )
    if runtime == "onnx":
        from affectpipe.extract.onnx_runtime import onnx_or_torch

        graph = onnx_or_torch(spec, weights_sha256, build, strict=strict)
        if graph is not None:
            return ModelJob(spec, graph, None, runtime="onnx")
    prepared = prepare_model(build(), device, channels_last=channels_last, probe=probe_batch(spec))
    return ModelJob(spec, prepared, None)


def runtime_record(job: Any) -> dict[str, Any]:
    """The feature-file attrs saying which runtime computes `job`'s rows (for an int8 graph,
    also its calibration and measured parity)."""
    from affectpipe.extract.onnx_runtime import runtime_attrs

    if job.runtime != "onnx":
        return runtime_attrs(job.runtime)
    graph = job.model.graph
    extra = None
    if "calibration_sha256" in graph.record:
        from affectpipe.extract.quantize import int8_attrs

        extra = int8_attrs(graph)
    return runtime_attrs("onnx", graph.sha256, extra)


def run(
    paths: DatasetPaths,
    backbones: Sequence[str],
    *,
    device: str = "cpu",
    weights: Mapping[str, Path] | None = None,
    random_init: bool = False,
    batch_size: int = ExtractOptions.batch_size,
    workers: int | None = ExtractOptions.workers,
    shard: tuple[int, int] | None = None,
    force: bool = ExtractOptions.force,
    amp: str = ExtractOptions.amp,
    openface_dir: Path | None = None,
    progress: bool = True,
    channels_last: bool = ExtractOptions.channels_last,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    retry_failed: bool = ExtractOptions.retry_failed,
    engine: Any = None,
    spatial_grid: int | None = ExtractOptions.spatial_grid,
    runtime: str = ExtractOptions.runtime,
    precision: str | None = ExtractOptions.precision,
) -> ExtractSummary:
    """Extract features of every distinct manifest image with each backbone.

    Empty `backbones` means `default_backbones(weights)`. Complete files computed from the
    same inputs are skipped unless `force`; interrupted runs resume from their committed
    chunks. `retry_failed` re-attempts the ok=false rows (those with an image file) of
    complete files and of committed chunks, leaving the other rows as they are.
    `shard=(i, n)` (1-based) computes rows block i of n into
    ``features/<backbone>.shard-i-of-n.h5`` (join them with `merge`). `precision` (None:
    fp32) is fp32, bf16 or fp16 (torch autocast) or int8 (ONNX Runtime int8 graphs calibrated
    on the dataset's first images, see `quantize`); `amp` ("off", "bf16", "fp16") is the older
    spelling of the first three. Reduced precision moves the features: the file records it
    (attr ``precision``, part of its identity: a file at another precision is stale), and an
    int8 file also the graph's measured parity to fp32.
    `engine` runs the passes elsewhere (e.g. `ray_engine.RayEngine`); None: in this process.
    `workers` None: `machine.default_workers(device)`, as the CLI. `spatial_grid` G adds
    the `spatial` part to the CNN backbones' files (their last feature map pooled to G x G
    cells, see `affectpipe.features`); a file that has one keeps it.
    `runtime` runs the CNNs with torch, ONNX Runtime (``onnx``: graphs exported from the same
    modules, see `onnx_runtime`) or ``auto`` (ONNX Runtime on the CPU when installed); files
    record which (attr ``runtime``), and another runtime does not make a file stale.
    The defaults are `ExtractOptions`'. The files do not record these options: a file is the
    same whatever the batch size, workers or engine; what changes its values (the
    precision, `spatial_grid`, the runtime) is in its attrs.
    """
    workers = default_workers(device) if workers is None else workers
    if batch_size < 1 or workers < 0 or chunk_rows < 1:
        raise InputError("batch size and chunk rows must be >= 1, workers >= 0")
    precision = requested_precision(amp, precision)
    if spatial_grid is not None and engine is not None:
        raise InputError("--spatial-grid runs in this process only: drop --engine ray")
    if precision == "int8" and (engine is not None or spatial_grid is not None):
        raise InputError(
            "--precision int8 runs ONNX Runtime graphs in this process, which output embedding "
            "and logits only: drop --engine ray and --spatial-grid"
        )
    view = read_manifest_view(paths)
    backbones = list(backbones) or default_backbones(weights)
    targets = plan(
        paths,
        view,
        backbones,
        weights=weights,
        random_init=random_init,
        shard=shard,
        precision=precision,
        openface_dir=openface_dir,
        spatial_grid=spatial_grid,
    )
    if random_init and any(t.kind == "model" for t in targets):
        logger.warning("--random-init: CNN backbones use fixed-seed RANDOM weights, not official")
    from affectpipe.extract.engine import resolve_device

    torch_device = resolve_device(device) if engine is None else engine.connect(device)
    if engine is not None and runtime == "onnx":
        raise InputError("--runtime onnx runs with --engine local")
    from affectpipe.extract.onnx_runtime import resolve_runtime

    resolved = (
        "torch" if engine is not None else resolve_runtime(runtime, torch_device.type, precision)
    )
    rows = shard_range(len(view.images), shard)
    reports: list[BackboneReport] = []
    with ExitStack() as stack:
        todo = []
        for target in targets:
            stack.enter_context(file_lock(target.path.with_name(f".{target.path.name}.lock")))
            remove_stale_temps(target.path)  # left by a run killed while writing the file
            current = None if force else is_current(target)
            if current is None:
                todo.append(target)
                continue
            if retry_failed and target.kind != "importer":
                retry = retry_rows(target, view, rows)
                if len(retry) and target.kind == "descriptor" and not shard:
                    logger.warning(
                        "%s: its projection is fitted on all train rows, so retrying %d failed "
                        "rows rebuilds the whole file",
                        target.path,
                        len(retry),
                    )
                    todo.append(target)
                    continue
                if len(retry):
                    _remove_parts(target.path, keep_retry=True)
                    target.retry_rows = retry
                    todo.append(target)
                    continue
            _remove_parts(target.path)  # a kill between the final rename and the cleanup
            reports.append(target_report(target, "skipped", current, rows[1] - rows[0]))
        if precision == "int8":  # the same images for every shard and rerun of the manifest
            from affectpipe.extract.quantize import calibration_set

            for target in (t for t in todo if t.kind == "model"):
                target.calibration = calibration_set(target.spec, view.paths, view.train_mask)
        reports += _extract(
            todo,
            view,
            rows,
            device=torch_device,
            batch_size=batch_size,
            workers=workers,
            channels_last=channels_last,
            precision=precision,
            fresh=force,
            chunk_rows=chunk_rows,
            progress=progress,
            retry_failed=retry_failed,
            engine=engine,
            runtime=resolved,
            strict=runtime == "onnx" or precision == "int8",
        )
    order = {name: i for i, name in enumerate(backbones)}
    reports.sort(key=lambda r: order[r.backbone])
    where = str(torch_device) if engine is None else engine.describe()
    return ExtractSummary(tuple(reports), where, random_init)


def requested_precision(amp: str | None, precision: str | None) -> str:
    """The features' precision from `--precision` and the older `--amp` (which must agree)."""
    from_amp = None if amp in (None, "off", "fp32") else amp
    if from_amp is not None and from_amp not in ("bf16", "fp16"):
        raise InputError(f"bad --amp {amp!r}: use off, bf16 or fp16")
    if precision is not None and precision not in PRECISIONS:
        raise InputError(f"bad --precision {precision!r}: use {', '.join(PRECISIONS)}")
    if from_amp and precision and precision != from_amp:
        raise InputError(f"--amp {amp} and --precision {precision} disagree: give one")
    return precision or from_amp or "fp32"


def _remove_parts(path: Path, keep_retry: bool = False) -> None:
    """Remove the part stores of `path`, whose complete file is current (they are leftovers)."""
    from affectpipe.extract.store import parts_dir

    folders = [
        parts_dir(target) for target in (path, *(() if keep_retry else (retry_store_target(path),)))
    ]
    for folder in (*folders, merge_scratch(path)):
        if folder.exists():
            logger.warning("%s is complete and current: removing leftover %s", path, folder)
            shutil.rmtree(folder, ignore_errors=True)


def _extract(
    targets: list[Target],
    view: ManifestView,
    rows: tuple[int, int],
    *,
    device: Any,
    batch_size: int,
    workers: int,
    channels_last: bool,
    precision: str,
    fresh: bool,
    chunk_rows: int,
    progress: bool,
    retry_failed: bool = False,
    engine: Any = None,
    runtime: str = "torch",
    strict: bool = False,
) -> list[BackboneReport]:
    from affectpipe.extract.store import PartStore

    reports = []
    computed = [t for t in targets if t.kind != "importer"]
    resumed = set()
    for target in computed:
        header = {**target.identity, "rows": list(rows)}
        if target.retry_rows is not None:
            header["retry_rows"] = hashlib.sha256(target.retry_rows.tobytes()).hexdigest()
            store_path, n_rows = retry_store_target(target.path), len(target.retry_rows)
        else:
            store_path, n_rows = target.path, rows[1] - rows[0]
        target.store = PartStore(store_path, header, n_rows, chunk_rows)
        if target.store.open(fresh=fresh):
            resumed.add(target.backbone)
            logger.warning(
                "%s: resuming after %d committed rows", target.path, target.store.committed_rows()
            )
        if retry_failed and target.retry_rows is None:
            dropped = target.store.drop_chunks_with_failures(
                lambda row: view.paths[rows[0] + row] is not None
            )
            if dropped:
                logger.warning("%s: redoing %d committed rows with failures", target.path, dropped)
    pass_options = {
        "device": device,
        "batch_size": batch_size,
        "workers": workers,
        "channels_last": channels_last,
        "precision": precision,
        "progress": progress,
        "engine": engine,
        "runtime": runtime,
        "strict": strict,
    }
    speeds: dict[str, float] = {}
    # One pass per chunk layout (a resumed store keeps the boundaries it was started with).
    full = [t for t in computed if t.retry_rows is None]
    for layout in sorted({t.store.chunk_rows for t in full}):
        group = [t for t in full if t.store.chunk_rows == layout and not t.store.is_done()]
        speeds.update(_pass(group, view.paths, rows[0], **pass_options))
    for target in (t for t in computed if t.retry_rows is not None):
        subset = [view.paths[rows[0] + r] for r in target.retry_rows]
        if not target.store.is_done():
            speeds.update(_pass([target], subset, 0, **pass_options))
    for target in computed:
        detail = ""
        if target.retry_rows is not None:
            recovered = len(target.retry_rows) - len(target.store.failures())
            detail = f"({len(target.retry_rows)} failed rows re-attempted, {recovered} recovered)"
        attrs = finish(target, view, rows)
        action = "resumed" if target.backbone in resumed else "extracted"
        if target.retry_rows is not None:
            action = "retried"
        done = target_report(target, action, attrs, rows[1] - rows[0], speeds.get(target.backbone))
        reports.append(dataclasses.replace(done, detail=detail))
    for target in (t for t in targets if t.kind == "importer"):
        with disk_full_as_error(target.path, lambda: 0):  # an import: nothing to resume
            reports.append(import_outputs(target, view, progress))
    return reports


def _pass(
    group: list[Target],
    paths: Sequence[str | None],
    offset: int,
    *,
    device: Any,
    batch_size: int,
    workers: int,
    channels_last: bool,
    precision: str,
    progress: bool,
    engine: Any = None,
    runtime: str = "torch",
    strict: bool = False,
) -> dict[str, float]:
    """One shared decode/inference pass over `group`'s missing chunks; returns img/s each.

    `engine` (e.g. the Ray engine) runs the pass elsewhere; None runs it in this process."""
    from affectpipe.extract.engine import AMP_DTYPES, DescriptorJob, ModelJob, extract_pass

    if not group:
        return {}
    model_jobs = []
    for t in (t for t in group if t.kind == "model"):
        grid = t.identity.get("spatial_grid")
        if engine is None:
            job = model_job(
                t.spec,
                t.weights_path,
                t.identity["weights_sha256"],
                device,
                channels_last=channels_last,
                # The graphs output embedding and logits only: a spatial part needs torch.
                runtime="torch" if grid else runtime,
                strict=strict,
                precision=precision,
                calibration=t.calibration,
            )
        else:  # another engine prepares models where they run
            job = ModelJob(t.spec, build_model(t.spec, t.weights_path), None)
        if grid and not hasattr(job.model, "feature_map"):
            raise InputError(f"{t.backbone} exposes no feature map: extract it without a grid")
        job.store, job.spatial_grid = t.store, grid
        record = runtime_record(job)
        t.attrs.update(record)
        t.store.save_runtime(record)
        model_jobs.append(job)
    descriptor_jobs = [DescriptorJob(t.descriptor, t.store) for t in group if t.kind != "model"]
    stats = (extract_pass if engine is None else engine.extract_pass)(
        paths,
        offset,
        model_jobs,
        descriptor_jobs,
        device=device,
        batch_size=batch_size,
        workers=workers,
        channels_last=channels_last,
        amp_dtype=AMP_DTYPES.get(precision),
        progress=progress,
    )
    return {t.backbone: stats.images_per_s for t in group}

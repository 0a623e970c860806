"""`pipeline bench extract`: images/s per backbone, whole path, forward only and decode.

The whole path is what `pipeline extract` does (decode in workers -> resize -> normalise ->
forward -> committed chunks -> final file) on a temporary dataset made of a folder of face
crops repeated (symlinked) to a few thousand images (without a folder: BENCH_FACES synthetic
112 x 112 faces drawn as the demo draws them, since speed does not depend on what the crops
show); on a GPU it is also timed under AMP.
Forward only times the prepared model on a ready batch in three set-ups (fp32 NCHW, fp32
channels-last, AMP channels-last). Decode times the input path alone: the CPU decode workers
(decode + official resize) and, on a GPU, torchvision's batched nvJPEG decode with a GPU
resize (with its largest pixel difference from the official PIL resize). Whichever of decode
and forward is slower bounds the whole path. Speed does not depend on weight values, so
without official weights the bench uses the fixed-seed random initialisation and says so.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from affectpipe.benchtools import cpu_model
from affectpipe.config import DatasetPaths
from affectpipe.data.images import IMAGE_SUFFIXES
from affectpipe.errors import AffectpipeError, InputError
from affectpipe.machine import usable_cores
from affectpipe.manifest import empty_manifest, write_manifest

BENCH_FACES = 256  # synthetic crops drawn when no --images folder is given
FORWARD_BATCHES = 5
AMP_BENCH_DTYPE = "bf16"  # the AMP set-up timed (bf16: no overflow risk, native on A100/H100)


def bench_folder(images_dir: Path | None, scratch: Path) -> Path:
    """`images_dir`, checked; without one, BENCH_FACES synthetic face crops under `scratch`."""
    if images_dir is None:
        return _synthetic_faces(scratch / "synthetic-faces")
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(
            f"no bench images at {images_dir}: pass --images DIR (a folder of 112x112 face crops)"
        )
    return images_dir


def _synthetic_faces(folder: Path) -> Path:
    from affectpipe.data.synthetic import JPEG_QUALITY
    from affectpipe.data.synthetic_faces import Identity, draw_face
    from affectpipe.schema import AU_COLUMNS

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(BENCH_FACES):
        au = {
            c: float(v) for c, v in zip(AU_COLUMNS, rng.uniform(0, 1, len(AU_COLUMNS)), strict=True)
        }
        image = draw_face(Identity.sample(rng), au, *rng.uniform(-1, 1, 2), rng)
        image.save(folder / f"{i:03d}.jpg", quality=JPEG_QUALITY)
    return folder


@dataclass(frozen=True)
class BenchRow:
    backbone: str
    device: str
    batch_size: int
    workers: int
    images: int
    weights: str  # "official" (the given/cached file) or "random-init"
    whole_path_images_per_s: float  # decode -> forward -> committed chunks
    end_to_end_images_per_s: float  # the same plus model loading and the final file
    forward_images_per_s: float  # descriptors: per-image work in one process
    runtime: str = "torch"  # of the CNN: torch or onnx ("-" for descriptors)
    whole_path_rounds: tuple[float, ...] = ()  # each round's whole path (the row: median)
    load_average: tuple[float, ...] = ()  # 1-minute load average after each round
    # CNNs only (None for descriptors / where not measured):
    forward_fp32_nchw_images_per_s: float | None = None
    forward_amp_images_per_s: float | None = None  # AMP_BENCH_DTYPE, channels-last
    whole_path_amp_images_per_s: float | None = None  # GPU only
    decode_images_per_s: float | None = None  # CPU decode workers: decode + official resize
    gpu_decode_images_per_s: float | None = None  # nvJPEG batch decode + GPU resize
    gpu_resize_max_abs_diff: float | None = None  # vs the official resize, 0-255 scale


@dataclass(frozen=True)
class BenchResult:
    rows: tuple[BenchRow, ...]
    machine: dict[str, str]
    command: str

    def markdown(self) -> str:
        lines = [
            f"`{self.command}`",
            "",
            ", ".join(f"{k}: {v}" for k, v in self.machine.items()),
            "",
            "| backbone | device | batch | workers | images | weights | runtime "
            "| whole path img/s | incl. load + file img/s | forward only img/s | forward fp32 NCHW "
            f"| forward {AMP_BENCH_DTYPE} | whole path {AMP_BENCH_DTYPE} | decode (CPU workers) "
            "| decode (GPU nvJPEG) | rounds: whole path img/s (load) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            gpu_decode = _rate(r.gpu_decode_images_per_s)
            if r.gpu_resize_max_abs_diff is not None:
                gpu_decode += f" (max px diff {r.gpu_resize_max_abs_diff:.0f})"
            rounds = ", ".join(
                f"{rate:.1f} ({load:.1f})"
                for rate, load in zip(r.whole_path_rounds, r.load_average, strict=True)
            )
            lines.append(
                f"| {r.backbone} | {r.device} | {r.batch_size} | {r.workers} | {r.images} "
                f"| {r.weights} | {r.runtime} | {r.whole_path_images_per_s:.1f} "
                f"| {r.end_to_end_images_per_s:.1f} | {r.forward_images_per_s:.1f} "
                f"| {_rate(r.forward_fp32_nchw_images_per_s)} "
                f"| {_rate(r.forward_amp_images_per_s)} | {_rate(r.whole_path_amp_images_per_s)} "
                f"| {_rate(r.decode_images_per_s)} | {gpu_decode} | {rounds} |"
            )
        lines += [
            "",
            "forward only: fp32 with the run's memory layout; NCHW: fp32 without channels-last; "
            f"{AMP_BENCH_DTYPE}: autocast + channels-last. whole path {AMP_BENCH_DTYPE}: GPU only. "
            "Runtime onnx: ONNX Runtime on the CPU (the torch-only columns are '-'). Whole "
            "path and incl. load: the median of the rounds (the runtimes alternate in each).",
        ]
        if any(r.weights == "random-init" for r in self.rows):
            lines += ["", "Weights: fixed-seed random init (speed does not depend on values)."]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(
            {
                "command": self.command,
                "machine": self.machine,
                "rows": [asdict(r) for r in self.rows],
            },
            indent=1,
        )


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def machine_info(device: str) -> dict[str, str]:
    import torch

    info = {
        "cpu": cpu_model(),
        "cores": str(usable_cores()),
        "torch": torch.__version__,
        "torch threads": str(torch.get_num_threads()),
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def bench_images(images_dir: Path) -> list[Path]:
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"no images (.jpg/.png/.bmp) in {images_dir}")
    return files


def make_bench_dataset(images_dir: Path, repeat: int, cache_dir: Path) -> DatasetPaths:
    """A dataset of `repeat` x the folder's images (symlinks, distinct keys) in `cache_dir`."""
    files = bench_images(images_dir)
    root = cache_dir / "images"
    keys = []
    for k in range(repeat):
        folder = root / f"r{k:03d}"
        folder.mkdir(parents=True)
        for file in files:
            (folder / file.name).symlink_to(file.resolve())
            keys.append(f"r{k:03d}/{file.name}")
    frame = empty_manifest(len(keys))
    frame["image"] = keys
    frame["video"] = [key.split("/")[0] for key in keys]
    frame["split"] = "train"
    frame["has_image"] = True
    paths = DatasetPaths.of(cache_dir, "bench")
    write_manifest(frame, paths.manifest, {"dataset": "bench", "image_roots": {"train": str(root)}})
    return paths


def forward_only(
    backbone: str,
    device: str,
    batch_size: int,
    *,
    channels_last: bool,
    amp: str | None = None,
) -> float:
    """Images/s of the prepared model on a ready, normalised batch (no decode, no copy),
    in fp32 or under autocast to `amp` ("bf16", "fp16")."""
    import contextlib

    import torch

    from affectpipe.extract.backbones import get_backbone
    from affectpipe.extract.engine import AMP_DTYPES, prepare_model, probe_batch, resolve_device

    spec = get_backbone(backbone)
    torch_device = resolve_device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = spec.build()
    model = prepare_model(model, torch_device, channels_last=channels_last, probe=probe_batch(spec))
    x = probe_batch(spec, batch_size).to(torch_device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def sync() -> None:
        if torch_device.type == "cuda":
            torch.cuda.synchronize(torch_device)

    autocast = (
        torch.autocast(torch_device.type, dtype=AMP_DTYPES[amp])
        if amp
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), autocast:
        model(x)  # warm-up (oneDNN / cuDNN kernel selection)
        sync()
        started = time.perf_counter()
        for _ in range(FORWARD_BATCHES):
            model(x)
        sync()
    return FORWARD_BATCHES * batch_size / (time.perf_counter() - started)


def onnx_forward_only(backbone: str, batch_size: int) -> float:
    """Images/s of the backbone's ONNX Runtime session on a ready batch of pixels (the
    random-init graph: speed does not depend on the weight values)."""
    from affectpipe.extract.backbones import get_backbone
    from affectpipe.extract.engine import probe_pixels
    from affectpipe.extract.onnx_runtime import onnx_model
    from affectpipe.extract.plan import RANDOM_INIT_SHA256
    from affectpipe.extract.stage import build_model

    spec = get_backbone(backbone)
    model = onnx_model(spec, RANDOM_INIT_SHA256, partial(build_model, spec, None))
    x = probe_pixels(spec, batch_size).numpy()
    model(x)  # warm-up (memory arenas, kernel selection)
    started = time.perf_counter()
    for _ in range(FORWARD_BATCHES):
        model(x)
    return FORWARD_BATCHES * batch_size / (time.perf_counter() - started)


def decode_rate(files: Sequence[Path], backbone: str, batch_size: int, workers: int) -> float:
    """Images/s of the CPU input path alone: decode + official resize in `workers` processes
    (the extraction's `DecodeDataset` and DataLoader set-up, no model)."""
    import torch

    from affectpipe.extract.backbones import get_backbone
    from affectpipe.extract.decode import DecodeDataset, collate

    spec = get_backbone(backbone)
    dataset = DecodeDataset([str(f) for f in files], [spec.resize], [spec.input_size])
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        prefetch_factor=4 if workers else None,
    )
    started = time.perf_counter()
    for _ in loader:
        pass
    return len(dataset) / (time.perf_counter() - started)


def gpu_decode_rate(
    files: Sequence[Path], backbone: str, device: str, batch_size: int
) -> tuple[float, float] | None:
    """(images/s, largest pixel difference from the official decode + resize) of batched
    nvJPEG decoding (`torchvision.io.decode_jpeg(device="cuda")`) with an antialiased
    bilinear GPU resize; None on CPU or when this torchvision cannot decode on the GPU."""
    import torch

    from affectpipe.extract.vision import check_torchvision

    check_torchvision()
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    from affectpipe.extract.backbones import get_backbone
    from affectpipe.extract.decode import load_rgb
    from affectpipe.extract.engine import resolve_device

    torch_device = resolve_device(device)
    if torch_device.type != "cuda":
        return None
    spec = get_backbone(backbone)
    size = (spec.input_size, spec.input_size)
    data = [read_file(str(f)) for f in files]  # bytes in memory: this times decoding only

    def decode(chunk: list[torch.Tensor]) -> torch.Tensor:
        images = decode_jpeg(chunk, mode=ImageReadMode.RGB, device=torch_device)
        resized = [
            torch.nn.functional.interpolate(
                image[None].float(), size=size, mode="bilinear", antialias=True
            )
            for image in images
        ]
        return torch.cat(resized).round().clamp(0, 255).to(torch.uint8)  # [B, 3, S, S]

    try:
        first = decode(data[:batch_size])
    except Exception as exc:  # no nvJPEG in this build, a PNG among the files, ...: not timed
        print(f"GPU decode not timed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    official = np.stack([spec.resize(load_rgb(f)[0]) for f in files[:batch_size]])
    diff = np.abs(first.permute(0, 2, 3, 1).cpu().numpy().astype(int) - official.astype(int))
    torch.cuda.synchronize(torch_device)
    started = time.perf_counter()
    for start in range(0, len(data), batch_size):
        decode(data[start : start + batch_size])
    torch.cuda.synchronize(torch_device)
    return len(data) / (time.perf_counter() - started), float(diff.max())


def describe_only(backbone: str, images_dir: Path) -> float:
    """Images/s of a descriptor's per-image work in one process, on already decoded images."""
    from affectpipe.extract import registry
    from affectpipe.extract.decode import load_rgb

    descriptor = registry.get(backbone, "descriptor").load()()
    images = [np.asarray(load_rgb(path)[0]) for path in bench_images(images_dir)]
    descriptor.describe(images[0])  # warm-up: loads the landmark models
    started = time.perf_counter()
    for image in images:
        descriptor.describe(image)
    return len(images) / (time.perf_counter() - started)


def _cnn_extras(
    backbone: str,
    whole_path: Callable[..., Any],
    files: Sequence[Path],
    *,
    device: str,
    batch_size: int,
    workers: int,
) -> dict[str, float | None]:
    """The CNN-only columns: forward set-ups, AMP whole path (GPU), decode rates."""
    gpu = device.startswith("cuda")
    amp_report = whole_path(amp=AMP_BENCH_DTYPE).reports[0] if gpu else None
    gpu_decode = gpu_decode_rate(files, backbone, device, batch_size)
    return {
        "forward_fp32_nchw_images_per_s": forward_only(
            backbone, device, batch_size, channels_last=False
        ),
        "forward_amp_images_per_s": forward_only(
            backbone, device, batch_size, channels_last=True, amp=AMP_BENCH_DTYPE
        ),
        "whole_path_amp_images_per_s": amp_report and amp_report.images_per_s,
        "decode_images_per_s": decode_rate(files, backbone, batch_size, workers),
        "gpu_decode_images_per_s": gpu_decode and gpu_decode[0],
        "gpu_resize_max_abs_diff": gpu_decode and gpu_decode[1],
    }


def run_bench(
    *,
    images_dir: Path | None = None,
    repeat: int | None = None,
    backbones: Sequence[str] = ("mt-emotieffnet", "ddamfn"),
    device: str = "cpu",
    batch_size: int = 64,
    workers: int = 1,
    weights: Mapping[str, Path] | None = None,
    channels_last: bool = True,
    runtimes: Sequence[str] = ("auto",),
    rounds: int = 1,
) -> BenchResult:
    """Measure each backbone alone on `images_dir` repeated `repeat` times (default: a few
    thousand images on a GPU, 1,024 on a CPU): see the module docstring.

    Each CNN is timed on each of `runtimes` (`pipeline extract --runtime`), the runtimes
    alternating within each of `rounds` rounds so that a change in the machine's load hits
    every side alike; a row gives the median of its rounds, and each round with the 1-minute
    load average after it."""
    from affectpipe.extract import registry, stage
    from affectpipe.extract.plan import resolve_backbone_weights

    if repeat is None:
        repeat = 4 if device == "cpu" else 20
    if rounds < 1 or not runtimes:
        raise InputError("give at least one runtime and one round")
    rows = []
    with tempfile.TemporaryDirectory(prefix="affectpipe-bench-") as tmp:
        images_dir = bench_folder(images_dir, Path(tmp))
        paths = make_bench_dataset(images_dir, repeat, Path(tmp))
        for backbone in backbones:
            descriptor = registry.get(backbone).kind == "descriptor"
            random_init = False
            if not descriptor:
                try:
                    resolve_backbone_weights(backbone, weights)
                except AffectpipeError:
                    random_init = True  # speed does not depend on the weight values
            whole_path = partial(
                stage.run,
                paths,
                [backbone],
                device=device,
                weights=weights,
                random_init=random_init,
                batch_size=batch_size,
                workers=workers,
                force=True,
                channels_last=channels_last,
                progress=False,
            )
            sides = list(dict.fromkeys(runtimes))[: 1 if descriptor else None]
            timed: dict[str, list[tuple[Any, float, float]]] = {side: [] for side in sides}
            for _ in range(rounds):
                for side in sides:
                    started = time.perf_counter()
                    summary = whole_path(runtime=side)
                    seconds = time.perf_counter() - started
                    timed[side].append((summary, seconds, os.getloadavg()[0]))
            for side in sides:
                rows.append(
                    _bench_row(
                        backbone,
                        descriptor,
                        random_init,
                        timed[side],
                        whole_path,
                        images_dir,
                        repeat,
                        device=device,
                        batch_size=batch_size,
                        workers=workers,
                        channels_last=channels_last,
                    )
                )
    command = shlex.join(["pipeline", *sys.argv[1:]]) if sys.argv else "run_bench()"
    return BenchResult(tuple(rows), machine_info(device), command)


def _bench_row(
    backbone: str,
    descriptor: bool,
    random_init: bool,
    timed: Sequence[tuple[Any, float, float]],
    whole_path: Callable[..., Any],
    images_dir: Path,
    repeat: int,
    *,
    device: str,
    batch_size: int,
    workers: int,
    channels_last: bool,
) -> BenchRow:
    """One row from the rounds of one backbone on one runtime: (summary, seconds, load)."""
    reports = [summary.reports[0] for summary, _, _ in timed]
    rates = [float(r.images_per_s or np.nan) for r in reports]
    runtime = reports[-1].runtime
    if descriptor:
        extra: dict[str, Any] = {}
        forward = describe_only(backbone, images_dir)
    elif runtime == "onnx":
        extra = {}
        forward = onnx_forward_only(backbone, batch_size)
    else:
        extra = _cnn_extras(
            backbone,
            whole_path,
            bench_images(images_dir) * repeat,
            device=device,
            batch_size=batch_size,
            workers=workers,
        )
        forward = forward_only(backbone, device, batch_size, channels_last=channels_last)
    return BenchRow(
        backbone=backbone,
        device=timed[-1][0].device,
        batch_size=batch_size,
        workers=workers,
        images=reports[-1].rows,
        weights="built-in" if descriptor else "random-init" if random_init else "official",
        runtime=runtime or "-",
        whole_path_images_per_s=float(np.median(rates)),
        end_to_end_images_per_s=float(
            np.median([r.rows / s for r, (_, s, _) in zip(reports, timed, strict=True)])
        ),
        forward_images_per_s=forward,
        whole_path_rounds=tuple(rates),
        load_average=tuple(load for _, _, load in timed),
        **extra,
    )


@dataclass(frozen=True)
class ScalingRow:
    images: int
    mode: str  # "finalisation (staged rows)" or "end to end"
    seconds: float
    peak_rss_mb: float  # ru_maxrss of the `pipeline extract` process tree (wait4)
    fit_rows: int


def _staged_rows(base: np.ndarray, start: int, stop: int, seed: int) -> np.ndarray:
    """Rows [start, stop) of a large staged set made from `base` (real raw rows): repeated,
    the HOG part perturbed by seeded noise so that the PCA sees distinct rows."""
    from affectpipe.extract.backbones.openface import SHAPE_DIM

    rows = base[np.arange(start, stop) % len(base)].copy()
    noise = np.random.default_rng([seed, start]).normal(0.0, 0.01, rows[:, SHAPE_DIM:].shape)
    rows[:, SHAPE_DIM:] = np.clip(rows[:, SHAPE_DIM:] + noise, 0.0, None)
    return rows


def _extract_cli(
    paths: DatasetPaths, backbone: str, workers: int, action: str
) -> tuple[float, float]:
    """Run `pipeline extract` in a child process: (wall seconds, peak RSS MB of its tree);
    its report must say `action` (e.g. "resumed": no per-image work was redone)."""
    import subprocess

    command = [sys.executable, "-m", "affectpipe.pipeline", "--cache-dir", str(paths.root.parent)]
    command += ["extract", "--dataset", paths.root.name, "--backbones", backbone]
    command += ["--workers", str(workers)]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        child = subprocess.Popen(command, stdout=log)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, workers included
        child.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        said = log.read()
    if child.returncode or f"{backbone}: {action}" not in said:
        raise AffectpipeError(f"{shlex.join(command)} (exit {child.returncode}): {said}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def descriptor_scaling(
    counts: Sequence[int],
    *,
    backbone: str = "openface",
    images_dir: Path | None = None,
    end_to_end: int = 2048,
    workers: int = 1,
    seed: int = 0,
) -> list[ScalingRow]:
    """Peak RSS and wall of a descriptor's extraction as the image count grows.

    At each of `counts`, the raw rows of the bench crops (the REAL per-image work, done once
    here) are repeated with seeded noise on the HOG to the count and committed to the part
    store exactly as an interrupted extraction leaves them; then `pipeline extract` runs in
    a child process and does the real finalisation (sample fit, streamed projection, final
    file) on them. `end_to_end` images (repeated crops) also run the whole path for real.
    """
    with tempfile.TemporaryDirectory(prefix="affectpipe-bench-faces-") as faces:
        return _descriptor_scaling(
            counts, backbone, bench_folder(images_dir, Path(faces)), end_to_end, workers, seed
        )


def _descriptor_scaling(
    counts: Sequence[int],
    backbone: str,
    images_dir: Path,
    end_to_end: int,
    workers: int,
    seed: int,
) -> list[ScalingRow]:
    from affectpipe.extract import registry as backbones
    from affectpipe.extract.decode import load_rgb
    from affectpipe.extract.plan import plan, read_manifest_view
    from affectpipe.extract.stage import DEFAULT_CHUNK_ROWS
    from affectpipe.extract.store import PartStore
    from affectpipe.features import read_feature_file

    files = bench_images(images_dir)
    descriptor = backbones.get(backbone, "descriptor").load()()
    base = np.stack([descriptor.describe(np.asarray(load_rgb(f)[0]))[0] for f in files])
    out = []
    jobs = [(n, "finalisation (staged rows)") for n in counts]
    jobs += [(end_to_end, "end to end")] if end_to_end else []
    for n, mode in jobs:
        with tempfile.TemporaryDirectory(prefix="affectpipe-bench-") as tmp:
            paths = make_bench_dataset(images_dir, -(-n // len(files)), Path(tmp))
            view = read_manifest_view(paths)
            if mode != "end to end":
                (target,) = plan(
                    paths,
                    view,
                    [backbone],
                    weights=None,
                    random_init=False,
                    shard=None,
                    precision="fp32",
                    openface_dir=None,
                )
                rows = len(view.images)
                store = PartStore(
                    target.path, {**target.identity, "rows": [0, rows]}, rows, DEFAULT_CHUNK_ROWS
                )
                store.open()
                for start in store.chunk_starts():
                    raw = _staged_rows(base, start, store.chunk_stop(start), seed)
                    store.commit(start, {"embedding": raw, "ok": np.ones(len(raw), bool)})
            action = "extracted" if mode == "end to end" else "resumed"
            seconds, peak = _extract_cli(paths, backbone, workers, action)
            details = read_feature_file(paths.features(backbone)).attrs["openface_descriptor"]
            details = json.loads(details) if isinstance(details, str) else details
            fit_rows = details["hog_pca"]["fit_rows"]
            out.append(ScalingRow(len(view.images), mode, seconds, peak, fit_rows))
    return out


def scaling_markdown(rows: Sequence[ScalingRow], command: str) -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [f"`{command}`", "", f"load average at the end (1, 5, 15 min): {load}", ""]
    lines += ["| images | run | PCA fit rows | wall s | peak RSS MB |", "|---|---|---|---|---|"]
    lines += [
        f"| {r.images} | {r.mode} | {r.fit_rows} | {r.seconds:.1f} | {r.peak_rss_mb:.0f} |"
        for r in rows
    ]
    return "\n".join(lines)

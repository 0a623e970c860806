"""`pipeline bench extract`: images/s per backbone, whole path and forward only.

The whole path is what `pipeline extract` does (decode in workers -> resize -> normalise ->
forward -> committed chunks -> final file) on a temporary dataset made of a folder of face
crops repeated (symlinked) to a few thousand images. Forward only times the prepared model
on a ready batch. Speed does not depend on weight values, so without official weights the
bench uses the fixed-seed random initialisation and says so.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from affectpipe.config import DatasetPaths
from affectpipe.errors import AffectpipeError, InputError
from affectpipe.manifest import empty_manifest, write_manifest

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
FORWARD_BATCHES = 5


def default_images_dir() -> Path:
    """The shared bench crops next to the repository (``../shared/fixtures/images/bench112``)."""
    return Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "images" / "bench112"


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
            "| backbone | device | batch | workers | images | weights | whole path img/s "
            "| incl. load + file img/s | forward only img/s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.backbone} | {r.device} | {r.batch_size} | {r.workers} | {r.images} "
                f"| {r.weights} | {r.whole_path_images_per_s:.1f} "
                f"| {r.end_to_end_images_per_s:.1f} | {r.forward_images_per_s:.1f} |"
            )
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


def machine_info(device: str) -> dict[str, str]:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
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


def forward_only(backbone: str, device: str, batch_size: int, *, channels_last: bool) -> float:
    """Images/s of the prepared model on a ready, normalised batch (no decode, no copy)."""
    import torch

    from affectpipe.extract.backbones import get_backbone
    from affectpipe.extract.engine import prepare_model, probe_batch, resolve_device

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

    with torch.inference_mode():
        model(x)  # warm-up (oneDNN / cuDNN kernel selection)
        sync()
        started = time.perf_counter()
        for _ in range(FORWARD_BATCHES):
            model(x)
        sync()
    return FORWARD_BATCHES * batch_size / (time.perf_counter() - started)


def describe_only(backbone: str, images_dir: Path) -> float:
    """Images/s of a descriptor's per-image work in one process, on already decoded images."""
    from affectpipe.extract import registry
    from affectpipe.extract.images import load_rgb

    descriptor = registry.get(backbone, "descriptor").load()()
    images = [np.asarray(load_rgb(path)[0]) for path in bench_images(images_dir)]
    descriptor.describe(images[0])  # warm-up: loads the landmark models
    started = time.perf_counter()
    for image in images:
        descriptor.describe(image)
    return len(images) / (time.perf_counter() - started)


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
) -> BenchResult:
    """Measure each backbone alone on `images_dir` repeated `repeat` times (default: a few
    thousand images on a GPU, 1,024 on a CPU)."""
    from affectpipe import extract
    from affectpipe.extract import registry
    from affectpipe.extract.plan import resolve_backbone_weights

    images_dir = Path(images_dir) if images_dir is not None else default_images_dir()
    if not images_dir.is_dir():
        raise InputError(
            f"no bench images at {images_dir}: pass --images DIR (a folder of 112x112 face crops)"
        )
    if repeat is None:
        repeat = 4 if device == "cpu" else 20
    rows = []
    with tempfile.TemporaryDirectory(prefix="affectpipe-bench-") as tmp:
        paths = make_bench_dataset(images_dir, repeat, Path(tmp))
        for backbone in backbones:
            descriptor = registry.get(backbone).kind == "descriptor"
            random_init = False
            if not descriptor:
                try:
                    resolve_backbone_weights(backbone, weights)
                except AffectpipeError:
                    random_init = True  # speed does not depend on the weight values
            started = time.perf_counter()
            summary = extract.run(
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
            seconds = time.perf_counter() - started
            (report,) = summary.reports
            rows.append(
                BenchRow(
                    backbone=backbone,
                    device=summary.device,
                    batch_size=batch_size,
                    workers=workers,
                    images=report.rows,
                    weights="built-in"
                    if descriptor
                    else "random-init"
                    if random_init
                    else "official",
                    whole_path_images_per_s=float(report.images_per_s or np.nan),
                    end_to_end_images_per_s=report.rows / seconds,
                    forward_images_per_s=describe_only(backbone, images_dir)
                    if descriptor
                    else forward_only(backbone, device, batch_size, channels_last=channels_last),
                )
            )
    command = shlex.join(["pipeline", *sys.argv[1:]]) if sys.argv else "run_bench()"
    return BenchResult(tuple(rows), machine_info(device), command)

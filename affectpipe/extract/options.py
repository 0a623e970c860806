"""The options of `pipeline extract` (`ExtractOptions`) and those it shares with
`pipeline predict` (`InferenceOptions`): the defaults of the commands, of `extract.run` and
`Predictor`, and of `pipeline run` (see `affectpipe.options`)."""

from __future__ import annotations

from dataclasses import dataclass

import click

from affectpipe.extract.onnx_runtime import RUNTIMES
from affectpipe.machine import DEFAULT_BATCH_SIZE
from affectpipe.options import option


@dataclass(frozen=True)
class InferenceOptions:
    """How images go through the backbones, in `extract` and `predict` alike."""

    batch_size: int = option(
        DEFAULT_BATCH_SIZE,
        "Images per forward pass (try 256-512 on a GPU).",
        type=click.IntRange(min=1),
    )
    runtime: str = option(
        "auto",
        "Runtime of the CNN backbones: torch, or onnx (ONNX Runtime on the CPU, graphs "
        "exported once from the same modules and checked against them; needs `pip install "
        "'affectpipe[onnx]'`). auto: onnx on the CPU when installed, else torch.",
        type=click.Choice(RUNTIMES),
    )
    # None: `machine.default_workers(device)` (it depends on the device).
    workers: int | None = option(
        None,
        "Decode worker processes (0 = decode in the main process). "
        "[default: 1 on CPU, all cores on GPU]",
        type=click.IntRange(min=0),
    )


@dataclass(frozen=True)
class ExtractOptions(InferenceOptions):
    """How `extract` computes and stores features (what it extracts, from which weights and on
    which device, are the shared --backbones, --weights, --random-init and --device)."""

    amp: str = option(
        "off",
        "Mixed precision for the CNNs: faster on GPUs, but the features move (bf16: logits by "
        "~0.03, embeddings by ~0.15 abs); recorded in the file's attrs. Same as --precision "
        "bf16|fp16.",
        type=click.Choice(["off", "bf16", "fp16"]),
    )
    # None: fp32, or what --amp says (`stage.requested_precision`: the two must agree).
    precision: str | None = option(
        None,
        "Precision of the CNNs' features, an explicit choice (nothing picks a lower one for "
        "you): fp32; bf16/fp16 (torch autocast, as --amp); int8 (ONNX Runtime int8 graphs "
        "calibrated on the dataset's first images, CPU only; the file records the graph's "
        "measured difference from fp32). The precision is part of a feature file's identity: a "
        "file made at another one is recomputed. [default: fp32]",
        type=click.Choice(["fp32", "bf16", "fp16", "int8"]),
    )
    channels_last: bool = option(
        True,
        "Channels-last memory layout for the CNNs (faster convolutions).",
        flag="--channels-last/--no-channels-last",
    )
    spatial_grid: int | None = option(
        None,
        "Also store each CNN's last feature map average-pooled to GxG cells: the `spatial` "
        "part (float16), which the `attention` head reads (BACKBONE:spatial/attention). Costs "
        "one more pass through each trunk. A file that has the part keeps it on later runs.",
        type=click.IntRange(min=1),  # the upper bound is checked with the plan (no h5py here)
        metavar="G",
    )
    force: bool = option(False, "Recompute even if the features are up to date.")
    retry_failed: bool = option(
        False,
        "Re-attempt the images recorded as failed (ok=false, e.g. unreadable at the time) in "
        "complete files and interrupted runs; the other rows are kept as they are.",
    )

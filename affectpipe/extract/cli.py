"""`pipeline extract` and `pipeline bench extract`."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click

from affectpipe.cli_options import (
    backbones_option,
    dataset_option,
    device_of,
    parse_weights_option,
    random_init_option,
    weights_option,
    with_device_options,
)
from affectpipe.config import Settings
from affectpipe.errors import InputError
from affectpipe.extract.options import ExtractOptions
from affectpipe.machine import default_workers
from affectpipe.options import build, click_options


def _split_names(value: str | None) -> list[str]:
    return [name.strip() for name in (value or "").split(",") if name.strip()]


def _parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if not match:
        raise InputError(f"bad --shard {value!r}: use i/n, e.g. 2/4 (1-based)")
    return int(match[1]), int(match[2])


@click.command()
@dataset_option()
@backbones_option()
@with_device_options
@weights_option()
@random_init_option
@click_options(ExtractOptions)
@click.option("--shard", default=None, metavar="I/N", help="Extract only block I of N (1-based).")
@click.option("--merge", is_flag=True, help="Join finished --shard files into the final files.")
@click.option(
    "--openface-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="OpenFace 2.x output folder (CSV files) for the openface-csv backbone.",
)
@click.option(
    "--engine",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: this process and its decode workers; ray: a Ray cluster (docs/ray.md), "
    "needs `pip install 'affectpipe[ray]'`.",
)
@click.option(
    "--address",
    default=None,
    metavar="auto|HOST:PORT",
    help="Ray cluster to join (--engine ray). [default: start a local Ray instance]",
)
@click.option(
    "--actors",
    type=click.IntRange(min=1),
    default=None,
    help="Model actors (--engine ray). [default: one per GPU of the cluster; 1 on CPU]",
)
@click.pass_obj
def extract(
    settings: Settings,
    dataset: str,
    backbones: str | None,
    gpu: int | None,
    device: str | None,
    weights_items: tuple[str, ...],
    random_init: bool,
    shard: str | None,
    merge: bool,
    openface_dir: Path | None,
    engine: str,
    address: str | None,
    actors: int | None,
    **params,
) -> None:
    """Run frozen backbones over every distinct image and cache their features.

    Writes cache/<dataset>/features/<backbone>.h5 (embedding, logits, ok per image). Files
    already computed from the same manifest, weights, preprocessing and package version are
    skipped (use --force to redo). An interrupted run (Ctrl-C, crash, kill) resumes from its
    last committed chunk when rerun. Images that cannot be read or decoded get ok=false and
    are listed (--retry-failed re-attempts them later). A full disk stops the run with exit 1;
    free space and rerun to resume.

    \b
    Examples:
      pipeline extract --dataset abaw7 --gpu 0 --batch-size 256
      pipeline extract --dataset abaw7 --weights ddamfn=~/Downloads/ddamfn.pth
      pipeline extract --dataset abaw7 --gpu 0 --shard 1/4     # on four machines ...
      pipeline extract --dataset abaw7 --merge                  # ... then join
      pipeline extract --dataset abaw7 --retry-failed           # after fixing bad files
      pipeline extract --dataset abaw7 --spatial-grid 4         # + the `spatial` part
      pipeline extract --dataset abaw7 --precision int8         # opt-in int8 (CPU, ONNX)
      pipeline extract --dataset abaw7 --engine ray --address auto --device cuda
    """
    from affectpipe.extract import merge as merge_shards
    from affectpipe.extract import run as run_extraction

    paths = settings.dataset(dataset)
    names = _split_names(backbones)
    options = build(ExtractOptions, params)
    if merge:
        if shard is not None or options.retry_failed:
            raise InputError(
                "--merge joins existing shards: do not combine it with --shard or --retry-failed"
            )
        shard_files = paths.features_dir.glob("*.shard-*-of-*.h5")
        names = names or sorted({p.name.split(".shard-")[0] for p in shard_files})
        if not names:
            raise InputError(f"no shard files in {paths.features_dir} to merge")
        summary = merge_shards(paths, names, progress=True)
        click.echo(summary.text())
        return
    device_name = device_of(gpu, device)
    ray_engine = None
    if engine == "ray":
        from affectpipe.extract.ray_engine import RayEngine

        ray_engine = RayEngine(address, actors)  # exit 2 with the install command without Ray
    elif address is not None or actors is not None:
        raise InputError("--address and --actors go with --engine ray")
    if random_init:
        click.secho(
            "WARNING: --random-init: CNN features come from RANDOM weights, not the official ones",
            fg="yellow",
            err=True,
        )
    try:
        summary = run_extraction(
            paths,
            names,
            device=device_name,
            weights=parse_weights_option(weights_items),
            random_init=random_init,
            shard=_parse_shard(shard),
            openface_dir=openface_dir,
            progress=True,
            engine=ray_engine,
            **dataclasses.asdict(options),
        )
    except KeyboardInterrupt:
        click.echo("interrupted: committed chunks are kept; rerun the command to resume", err=True)
        raise
    click.echo(summary.text())


@click.command()
@click.option(
    "--images",
    "images_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of 112x112 face crops. [default: 256 synthetic faces drawn like the demo's; "
    "speed does not depend on what the crops show]",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=None,
    help="Use the folder this many times (symlinked). [default: 4 on CPU, 20 on GPU]",
)
@backbones_option(
    "mt-emotieffnet,ddamfn",
    help="Comma-separated backbones to time, each alone (CNNs, or `openface`: its "
    "'forward only' column is then the per-image descriptor work in one process).",
)
@with_device_options
@click_options(ExtractOptions, "batch_size", "workers", "channels_last")
@weights_option("Official weights to use (else a fixed-seed random init: speed is the same).")
@click.option(
    "--descriptor-scaling",
    "scaling",
    default=None,
    metavar="N,N,...",
    help="Instead: peak RSS and wall of the openface extraction at these image counts "
    "(real rows of the crops, repeated with noise and staged; the real finalisation), plus "
    "one real end-to-end run of --repeat x the crops (e.g. 4096,10240,40960).",
)
@click.option(
    "--runtime",
    "runtimes",
    default="auto",
    show_default=True,
    metavar="R[,R...]",
    help="Runtimes to time each CNN on, e.g. torch,onnx (auto, torch or onnx: see "
    "`pipeline extract --runtime`).",
)
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Time each CNN this many times, the runtimes alternating within each round; the "
    "table gives the medians and each round with the load average.",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the results as JSON here.",
)
def extract_bench(
    images_dir: Path | None,
    repeat: int | None,
    backbones: str,
    gpu: int | None,
    device: str | None,
    batch_size: int,
    workers: int | None,
    weights_items: tuple[str, ...],
    channels_last: bool,
    scaling: str | None,
    runtimes: str,
    rounds: int,
    json_out: Path | None,
) -> None:
    """Measure extraction throughput (images/s): whole path and forward only, per backbone.

    Prints a markdown table with the command and the machine (CPU, cores, torch, device).
    """
    import json
    import shlex
    import sys

    from affectpipe.extract.bench import descriptor_scaling, run_bench, scaling_markdown
    from affectpipe.fsutil import write_text_atomic

    if scaling is not None:
        try:
            counts = [int(n) for n in _split_names(scaling)]
        except ValueError:
            raise click.BadParameter(
                "use image counts like 4096,10240", param_hint="--descriptor-scaling"
            ) from None
        rows = descriptor_scaling(
            counts,
            images_dir=images_dir,
            end_to_end=256 * (repeat or 8),
            workers=1 if workers is None else workers,
        )
        command = shlex.join(["pipeline", *sys.argv[1:]])
        click.echo(scaling_markdown(rows, command))
        if json_out is not None:
            write_text_atomic(json_out, json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
        return
    from affectpipe.extract.onnx_runtime import RUNTIMES

    sides = _split_names(runtimes)
    if not sides or not set(sides) <= set(RUNTIMES):
        raise click.BadParameter(f"use {', '.join(RUNTIMES)}, comma-separated",
                                 param_hint="--runtime")  # fmt: skip
    device_name = device_of(gpu, device)
    result = run_bench(
        images_dir=images_dir,
        repeat=repeat,
        backbones=_split_names(backbones),
        device=device_name,
        batch_size=batch_size,
        workers=default_workers(device_name) if workers is None else workers,
        weights=parse_weights_option(weights_items),
        channels_last=channels_last,
        runtimes=sides,
        rounds=rounds,
    )
    click.echo(result.markdown())
    if json_out is not None:
        write_text_atomic(json_out, result.to_json())

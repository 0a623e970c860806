"""Click options shared by several commands, defined once (no torch imports here)."""

from __future__ import annotations

from pathlib import Path

import click

from affectpipe.config import DEFAULT_RUN
from affectpipe.errors import InputError

dataset_option = click.option(
    "--dataset", "-d", required=True, help="Dataset name (as given to `pipeline index --name`)."
)
run_option = click.option(
    "--run", "run_name", default=DEFAULT_RUN, show_default=True, help="Run name."
)
submission_out_option = click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for submission files [default: runs/<run>/blend/submission].",
)
weights_option = click.option(
    "--weights",
    "weights_items",
    multiple=True,
    metavar="NAME=PATH",
    help="Use a local weights file for a backbone (repeatable), e.g. ddamfn=~/ddamfn.pth.",
)
workers_option = click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Decode worker processes (0 = decode in the main process). "
    "[default: 1 on CPU, all cores on GPU]",
)
device_options = [
    click.option(
        "--gpu", type=int, default=None, help="Run on CUDA GPU N (same as --device cuda:N)."
    ),
    click.option("--device", default=None, help="cpu, cuda or cuda:N  [default: cpu]"),
    click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=64,
        show_default=True,
        help="Images per forward pass (try 256-512 on a GPU).",
    ),
]


def with_device_options(func):
    """--gpu, --device and --batch-size (turn the first two into one with `device_of`)."""
    for option in reversed(device_options):
        func = option(func)
    return func


def device_of(gpu: int | None, device: str | None) -> str:
    if gpu is not None and device is not None:
        raise InputError("give either --gpu N or --device, not both")
    if gpu is not None:
        return f"cuda:{gpu}"
    return device or "cpu"


def parse_weights_option(items: tuple[str, ...]) -> dict[str, Path]:
    """Repeated ``--weights NAME=PATH`` options -> {name: path}."""
    weights = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(f"bad --weights {item!r}: use NAME=PATH, e.g. ddamfn=ddamfn.pth")
        weights[name.strip()] = Path(path).expanduser()
    return weights

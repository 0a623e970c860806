"""`pipeline run` and `pipeline demo`: the stages chained."""

from __future__ import annotations

from pathlib import Path

import click

from affectpipe.blend.cli import echo_outcome, echo_scores, max_filled_option, partial_option
from affectpipe.config import DEFAULT_RUN, Settings


def _echo_outcome(result, partial: bool) -> None:
    """Scores, notes and files; exit 1 (via the error) without the requested submission."""
    click.echo("")
    echo_scores(result.blend)
    for note in result.notes:
        click.secho(f"WARNING: {note}", fg="yellow", err=True)
    echo_outcome(result.blend, partial)


@click.command()
@click.option("--dataset", "-d", required=True, help="Dataset name (folder under the cache).")
@click.option(
    "--data",
    "data_root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Dataset root to index first (skip to use the existing manifest).",
)
@click.option("--format", "fmt", help="Layout of --data, e.g. abaw-mtl (see `pipeline index`).")
@click.option(
    "--backbones",
    help="Comma-separated backbones [default: CNNs whose weights are available, plus openface].",
)
@click.option(
    "--weights",
    "weights_items",
    multiple=True,
    metavar="NAME=PATH",
    help="Local weights file for a backbone (repeatable).",
)
@click.option("--random-init", is_flag=True, help="RANDOM CNN weights (testing only).")
@click.option("--device", default="cpu", show_default=True, help="Torch device for extraction.")
@click.option("--run", "run_name", default=DEFAULT_RUN, show_default=True, help="Run name.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for submission files [default: runs/<run>/blend/submission].",
)
@partial_option
@max_filled_option
@click.pass_obj
def run(
    settings: Settings,
    dataset: str,
    data_root: Path | None,
    fmt: str | None,
    backbones: str | None,
    weights_items: tuple[str, ...],
    random_init: bool,
    device: str,
    run_name: str,
    out_dir: Path | None,
    partial: bool,
    max_filled: float,
) -> None:
    """Chain index (if --data is given), extract, heads and blend.

    \b
    Example:
      pipeline run --dataset abaw7 --data data/abaw7 --format abaw-mtl --device cuda:0
    Every stage reuses valid cached results, so re-running after a change is cheap.
    Exits 0 only when the submission the test list asks for was written (see `blend`).
    """
    from affectpipe.cli_options import parse_weights_option
    from affectpipe.workflow import run_pipeline

    names = [b.strip() for b in (backbones or "").split(",") if b.strip()]
    result = run_pipeline(
        dataset,
        settings.cache_dir,
        data_root=data_root,
        fmt=fmt,
        backbones=names,
        weights=parse_weights_option(weights_items),
        random_init=random_init,
        device=device,
        run=run_name,
        out_dir=out_dir,
        max_filled=max_filled,
        echo=click.echo,
    )
    _echo_outcome(result, partial)


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
    """Run the whole pipeline on built-in synthetic data (offline, a few minutes on CPU).

    Writes a small s-Aff-Wild2-layout dataset, indexes it, extracts features with
    RANDOMLY INITIALISED CNN backbones plus the OpenFace-style descriptor, trains the
    heads, blends, and prints where the submission and the report are. The scores show the
    pipeline working; they say nothing about the pretrained models.
    """
    from affectpipe.workflow import run_demo

    click.secho(
        "demo: CNN backbones use RANDOM weights (no download): features are random "
        "projections, not the pretrained models",
        fg="yellow",
        err=True,
    )
    _echo_outcome(run_demo(workdir, seed=seed, echo=click.echo), partial=False)

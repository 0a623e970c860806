"""`pipeline predict` and `pipeline export-run`: thin wrappers around `affectpipe.predict`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from affectpipe.cli_options import (
    dataset_option,
    device_of,
    parse_weights_option,
    progress_option,
    run_option,
    weights_option,
    with_device_options,
)
from affectpipe.config import Settings
from affectpipe.errors import InputError
from affectpipe.options import build, click_options
from affectpipe.predict.options import PredictOptions

OUTPUT_SUFFIXES = (".csv", ".parquet")


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@dataset_option(required=False, help="Dataset whose run to apply.")
@run_option
@click.option(
    "--from-run",
    "from_run",
    type=click.Path(exists=True, path_type=Path),
    help="An exported run (folder or .tar.gz from `pipeline export-run`) instead of --dataset.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output table: FILE.csv or FILE.parquet.",
)
@click_options(PredictOptions)
@click.option(
    "--per-video",
    "per_video",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write one CSV per video into this folder (its rows by frame and face_id).",
)
@click.option(
    "--plot",
    "plot_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write one HTML page per video into this folder: valence/arousal curves, "
    "expression strip, AU activations over time and a thumbnail of each track.",
)
@with_device_options
@weights_option()
@progress_option
@click.pass_obj
def predict(
    settings: Settings,
    inputs: tuple[Path, ...],
    dataset: str | None,
    run_name: str,
    from_run: Path | None,
    out: Path,
    per_video: Path | None,
    plot_dir: Path | None,
    gpu: int | None,
    device: str | None,
    weights_items: tuple[str, ...],
    progress: bool,
    **params,
) -> None:
    """Apply a trained run to face crops, folders (recursive) or videos: one row per frame.

    Every image or frame is checked for a face first: a face crop by a fast check, anything
    else (or a crop that fails it) by detection (--detector) and the ABAW 5-point alignment
    to 112x112. The `face_check` column says which decided (crop-check, detection, assumed);
    `face_ok` is false where no face was seen. Detection gives one row per face with its box
    (box_x1..box_y2), 5 landmarks (left_eye_x..mouth_right_y) and det_score; `face_id` is the
    face's track in a video (IoU + landmark distance), its rank by size in an image, -1
    without a face. Video rows carry `frame` (1-based, as ABAW's 00001.jpg) and `timestamp`
    (seconds).

    \b
    Examples:
      pipeline predict --dataset faces --out preds.csv photos/
      pipeline predict --from-run run.tar.gz --detect --every 5 --out clip.parquet clip.mp4
      pipeline predict --dataset faces --out all.csv --per-video csv/ --plot html/ clips/
    """
    if (dataset is None) == (from_run is None):
        raise InputError("give either --dataset (with --run) or --from-run")
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(f"--out must end in {' or '.join(OUTPUT_SUFFIXES)}: {out}")
    if dataset is not None and not settings.dataset(dataset).manifest.exists():
        raise InputError(f"no dataset {dataset!r} in {settings.cache_dir}: run `pipeline index`")
    from affectpipe.predict.api import Predictor

    options = {
        **dataclasses.asdict(build(PredictOptions, params)),
        "device": device_of(gpu, device),
        "weights": parse_weights_option(weights_items),
        "progress": progress,
    }
    if from_run is not None:
        predictor = Predictor.from_export(from_run, **options)
    else:
        predictor = Predictor.load(settings.cache_dir, dataset, run_name, **options)
    table = predictor.predict(list(inputs))
    write_table(table, out)
    failed = int((~table["face_ok"]).sum())
    click.echo(f"{len(table)} rows ({failed} without a usable face) -> {out}")
    from affectpipe.predict.pervideo import write_per_video, write_plots

    if per_video is not None:
        click.echo(f"{len(write_per_video(table, per_video))} per-video CSV files -> {per_video}")
    if plot_dir is not None:
        pages = write_plots(table, predictor.thumbnails, plot_dir)
        click.echo(f"{len(pages)} per-video HTML pages -> {plot_dir}")


def write_table(table, out: Path) -> None:
    """Write atomically as CSV or Parquet (by suffix)."""
    from affectpipe.fsutil import atomic_path

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        if out.suffix.lower() == ".parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)


@click.command("export-run")
@dataset_option(help="Dataset whose run to export.")
@run_option
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="A new folder, or FILE.tar.gz for one archive.",
)
@click.pass_obj
def export_run(settings: Settings, dataset: str, run_name: str, out: Path) -> None:
    """Write everything `predict` needs (heads, blend, backbone identities) to share a run."""
    paths = settings.dataset(dataset)
    if not paths.manifest.exists():
        raise InputError(f"no dataset {dataset!r} in {settings.cache_dir}: run `pipeline index`")
    from affectpipe.predict.runfiles import export, load_from_cache

    written = export(load_from_cache(paths, run_name), out)
    click.echo(f"exported run {run_name!r} of {dataset} -> {written}")

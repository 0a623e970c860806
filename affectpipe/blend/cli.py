"""`pipeline blend`, `pipeline validate-submission`, `pipeline bench blend`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from affectpipe.config import DEFAULT_RUN, Settings
from affectpipe.errors import InputError
from affectpipe.schema import TASKS

FORMAT_CHOICES = ("mtl", "va", "expr", "au")


def echo_scores(result) -> None:
    """A short table of validation scores: best single candidate, tuned, cross-fitted."""
    click.echo(f"{'task':<6} {'best single':>12} {'tuned (val)':>12} {'cross-fitted':>13}")
    rows = list(result.scores.items())
    if result.p_mtl:
        rows.append(("P_MTL", result.p_mtl))
    for task, s in rows:
        click.echo(
            f"{task:<6} {s['best_single']:>12.4f} {s['tuned']:>12.4f} {s['crossfit']:>13.4f}"
        )


@click.command()
@click.option("--dataset", "-d", required=True, help="Dataset name (folder under the cache).")
@click.option("--run", "run_name", default=DEFAULT_RUN, show_default=True, help="Heads run.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for submission files [default: runs/<run>/blend/submission].",
)
@click.option(
    "--task",
    "tasks",
    multiple=True,
    type=click.Choice(TASKS),
    help="Blend only these tasks (repeatable) [default: every task with predictions].",
)
@click.option("--no-correction", is_flag=True, help="No VA calibration / EXPR class offsets.")
@click.option("--no-smoothing", is_flag=True, help="No temporal smoothing.")
@click.option(
    "--folds", default=3, show_default=True, type=click.IntRange(2), help="Cross-fit folds."
)
@click.option(
    "--jobs",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Processes for tuning and cross-fit folds (worth it on big validation sets).",
)
@click.option("--no-report", is_flag=True, help="Skip report.html.")
@click.pass_obj
def blend(
    settings: Settings,
    dataset: str,
    run_name: str,
    out_dir: Path | None,
    tasks: tuple[str, ...],
    no_correction: bool,
    no_smoothing: bool,
    folds: int,
    jobs: int,
    no_report: bool,
) -> None:
    """Tune blends on validation and write submission files and a report.

    Per task, non-negative candidate weights are tuned on the validation rows (CCC per
    dimension for VA, macro F1 for EXPR, mean F1 for AU), then VA calibration or EXPR class
    offsets, per-AU thresholds and a per-video smoothing window. Besides the (optimistic)
    tuned score, a cross-fitted score tunes on some validation videos and scores the others.
    Writes runs/<run>/blend/blend.json, report.html and the submission files the dataset's
    test list calls for.
    """
    from affectpipe.blend.runner import run
    from affectpipe.blend.tuning import BlendOptions

    options = BlendOptions(
        correction=not no_correction,
        smoothing=not no_smoothing,
        crossfit_folds=folds,
        n_jobs=jobs,
    )
    result = run(
        settings.dataset(dataset),
        run=run_name,
        out_dir=out_dir,
        tasks=tasks or None,
        progress=True,
        options=options,
        report=not no_report,
    )
    echo_scores(result)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"blend.json:  {result.blend_json}")
    if result.report:
        click.echo(f"report:      {result.report}")
    for path in result.submission_files[:5]:
        click.echo(f"submission:  {path}")
    if len(result.submission_files) > 5:
        click.echo(f"             ... {len(result.submission_files) - 5} more files")


@click.command("validate-submission")
@click.argument("file", type=click.Path(exists=True, path_type=Path))
@click.option("--dataset", "-d", required=True, help="Dataset whose test list the file answers.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMAT_CHOICES),
    help="Submission kind [default: detected from the header].",
)
@click.pass_obj
def validate_submission(settings: Settings, file: Path, dataset: str, fmt: str | None) -> None:
    """Check a submission FILE against a dataset's test list.

    Checks the header, one line per test-list entry in list order (repeated entries
    repeated), the number of fields, value ranges (VA in [-1, 1]) and integer fields
    (expression 0..7, AUs 0/1). FILE may also be an ABAW3 per-video folder (one
    <video>.txt per test video, frames 1..last). Prints every problem with its line
    number; exits with status 2 when the submission is invalid.
    """
    from affectpipe.blend.validate import validate_file, validate_video_folder
    from affectpipe.manifest import read_manifest

    manifest = read_manifest(settings.dataset(dataset).manifest)
    if not (manifest["split"] == "test").any():
        raise InputError(f"dataset {dataset!r} has no test rows to check against")
    if file.is_dir():
        found = validate_video_folder(file, manifest, fmt)
        problems = [problem for _, problem in found]
        for name, problem in found:
            click.echo(f"{file / name}:{problem}", err=True)
    else:
        problems = validate_file(file, manifest, fmt)
        for problem in problems:
            click.echo(f"{file}:{problem}", err=True)
    if problems:
        click.echo(f"{file}: INVALID ({len(problems)} problem(s))", err=True)
        sys.exit(2)
    click.echo(f"{file}: OK")


@click.command()
@click.option("--rows", default=26876, show_default=True, help="Validation rows.")
@click.option("--videos", default=70, show_default=True, help="Videos.")
@click.option("--candidates", default=7, show_default=True, help="Candidates per task.")
@click.option("--seed", default=0, show_default=True)
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1), help="Processes.")
def blend_bench(rows: int, videos: int, candidates: int, seed: int, jobs: int) -> None:
    """Time blend tuning on validation-sized synthetic predictions.

    Tunes weights, VA calibration / EXPR offsets / AU thresholds and smoothing windows, and
    cross-fits, for all three tasks at s-Aff-Wild2 validation scale; prints a markdown table.
    """
    from affectpipe.blend.bench import bench_blend, markdown

    table = bench_blend(
        n_rows=rows, n_videos=videos, n_candidates=candidates, seed=seed, n_jobs=jobs
    )
    command = " ".join(["pipeline", "bench", "blend", *sys.argv[3:]])
    click.echo(markdown(table, command, rows, videos, jobs))

"""`pipeline blend`, `pipeline validate-submission`, `pipeline bench blend`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from affectpipe.blend.options import BlendOptions
from affectpipe.cli_options import (
    blend_jobs_option,
    candidates_option,
    dataset_option,
    max_filled_option,
    partial_option,
    progress_option,
    run_option,
    submission_out_option,
    tasks_option,
)
from affectpipe.config import Settings
from affectpipe.errors import AffectpipeError, InputError
from affectpipe.options import build, click_options

FORMAT_CHOICES = ("mtl", "va", "expr", "au")


def echo_scores(result) -> None:
    """Validation scores: best single candidate, the blend tuned and cross-fitted, the best
    single candidate cross-fitted, and what the submission uses."""
    click.echo(
        f"{'task':<6} {'best single':>12} {'tuned (val)':>12} {'cross-fitted':>13} "
        f"{'single x-fit':>13}  uses"
    )
    rows = [(task, s, result.outcomes[task].choice) for task, s in result.scores.items()]
    if result.p_mtl:
        rows.append(("P_MTL", result.p_mtl, ""))
    for task, s, uses in rows:
        click.echo(
            f"{task:<6} {s['best_single']:>12.4f} {s['tuned']:>12.4f} {s['crossfit']:>13.4f} "
            f"{s['single_crossfit']:>13.4f}  {uses}".rstrip()
        )
    for task, outcome in result.outcomes.items():
        decided = [
            f"{stage} {'kept' if entry['kept'] else 'dropped'} ({entry['why']})"
            for stage, entry in outcome.blend.decisions.items()
        ]
        if decided:
            click.echo(f"{task} stages: " + "; ".join(decided))
        present = outcome.present_class_line()
        if present:
            click.echo(present)


def echo_outcome(result, partial: bool) -> None:
    """Print a blend's choices, warnings and files; raise (exit 1) when the submission the
    test list asks for was not written, unless `partial` accepts what was."""
    for note in result.choices:
        click.echo(note)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"blend.json:  {result.blend_json}")
    if result.report:
        click.echo(f"report:      {result.report}")
    for path in result.submission_files[:5]:
        click.echo(f"submission:  {path}")
    if len(result.submission_files) > 5:
        click.echo(f"             ... {len(result.submission_files) - 5} more files")
    shortfall = result.shortfall(partial)
    if shortfall:
        raise AffectpipeError(shortfall)
    for name, why in result.missing.items():  # accepted by --partial: still said
        click.echo(f"warning: not written (--partial): {name}: {why}", err=True)


class StageFlagsCommand(click.Command):
    """A command with a `--no-<stage>` flag for each registered blend stage after the base,
    made when the command runs (after plugins have registered theirs)."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        from affectpipe.blend.stage_registry import blend_stages, flag_name

        stages = blend_stages()
        names = tuple(stage.name for stage in stages)
        if getattr(self, "_stage_names", None) != names:
            self._stage_names = names
            self._stage_flags = [
                click.Option(
                    ["--no-" + stage.name.replace("_", "-"), flag_name(stage)],
                    is_flag=True,
                    help=stage.help,
                )
                for stage in stages
            ]
        *own, help_option = super().get_params(ctx)
        return [*own, *self._stage_flags, help_option]


@click.command(cls=StageFlagsCommand)
@dataset_option()
@run_option
@submission_out_option
@tasks_option("Blend only these tasks (repeatable) [default: every task with predictions].")
@candidates_option(
    "Blend only these prediction files (repeatable), from any heads invocation of the "
    "run [default: every candidate of the last complete heads run].",
    metavar="[TASK/]NAME",
)
@click_options(BlendOptions)
@partial_option
@max_filled_option
@click.option("--no-report", is_flag=True, help="Skip report.html.")
@progress_option
@click.pass_obj
def blend(
    settings: Settings,
    dataset: str,
    run_name: str,
    out_dir: Path | None,
    tasks: tuple[str, ...],
    candidates: tuple[str, ...],
    partial: bool,
    max_filled: float,
    no_report: bool,
    progress: bool,
    **options: bool | int | str,
) -> None:
    """Tune blends on validation and write submission files and a report.

    Per task, non-negative candidate weights are tuned on the validation rows (CCC per
    dimension for VA, macro F1 for EXPR, mean F1 for AU), then VA calibration or EXPR class
    offsets, per-AU thresholds and a per-video smoothing window; for EXPR optionally a
    logit adjustment (tau * log prior) and gating by a confident backbone's own expression
    prediction, each kept only when it raises the cross-fitted score. Besides the (optimistic)
    tuned score, a cross-fitted score tunes on some validation videos and scores the others;
    when the best single candidate cross-fits better than the blend, the submission uses it.
    Writes the submission files the dataset's test list calls for, report.html and, last,
    runs/<run>/blend/blend.json. Exits 1 when a requested file could not be written (it
    says which and why), unless --partial.
    """
    from affectpipe.blend.runner import run
    from affectpipe.blend.stage_registry import blend_stages, flag_name

    off = tuple(s.name for s in blend_stages() if options.pop(flag_name(s), False))
    chosen = build(BlendOptions, {**options, "disabled_stages": off})
    result = run(
        settings.dataset(dataset),
        run=run_name,
        out_dir=out_dir,
        tasks=tasks or None,
        progress=progress,
        options=chosen,
        report=not no_report,
        max_filled=max_filled,
        candidates=candidates or None,
    )
    echo_scores(result)
    echo_outcome(result, partial)


@click.command("validate-submission")
@click.argument("file", type=click.Path(exists=True, path_type=Path))
@dataset_option(help="Dataset whose test list the file answers.")
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
    number; exits with status 2 when the submission is invalid. Warns (exit 0) about value
    columns that never change (a prior is not a prediction) and about a file that differs
    from what the dataset's blend.json recorded for it.
    """
    from affectpipe.manifest import read_manifest, read_manifest_metadata
    from affectpipe.schema import TASKS
    from affectpipe.submission import checks, detect_style, get_style

    paths = settings.dataset(dataset)
    manifest = read_manifest(paths.manifest)
    metadata = read_manifest_metadata(paths.manifest)
    if not (manifest["split"] == "test").any():
        raise InputError(f"dataset {dataset!r} has no test rows to check against")
    tasks = None if fmt is None else TASKS if fmt == "mtl" else (fmt,)
    # A folder is a per-video submission; a file, whichever style its header names (or the
    # one that holds the --format's tasks when the header is unrecognised).
    style = detect_style(file) or get_style("video-names" if file.is_dir() else "frame-lines")
    found = style.validate(file, manifest, metadata, tasks)
    problems = [problem for _, problem in found]
    for name, problem in found:
        shown = file / name if file.is_dir() else file
        click.echo(f"{shown}:{problem}", err=True)
    kind = tasks or style.tasks_of(file)
    warnings = checks.constant_columns(style.value_rows(file), kind) if kind else []
    warnings += checks.blend_record_warnings(paths.root / "runs", file)
    for warning in warnings:
        click.echo(f"{file}: warning: {warning}", err=True)
    if problems:
        click.echo(f"{file}: INVALID ({len(problems)} problem(s))", err=True)
        sys.exit(2)
    click.echo(f"{file}: OK")


@click.command()
@click.option(
    "--rows",
    default="s",
    show_default=True,
    help="s: s-Aff-Wild2 (26,876 validation rows, a 51,159-row MTL test list); or test rows "
    "as a count (1m, 250k, ...): per-task test lists as for the full Aff-Wild2, with 0.4 "
    "validation rows per test row.",
)
@click.option("--candidates", default=7, show_default=True, help="Candidates per task.")
@click.option("--seed", default=0, show_default=True)
@blend_jobs_option(
    "`pipeline blend --jobs`: processes (0: one per usable core above 20,000 validation rows)."
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the synthetic run here and reuse it on the next call [default: a temporary "
    "folder, removed after].",
)
def blend_bench(rows: str, candidates: int, seed: int, jobs: int, workdir: Path | None) -> None:
    """Time `pipeline blend` end to end on a synthetic run of the given size.

    Writes a manifest and every task's prediction files (videos of 1-3k frames), then runs
    `pipeline blend` (weights, corrections, thresholds, smoothing, cross-fitting, the
    submission files and the report) in a child process; prints its wall time, the wall
    time of each stage and its peak RSS as markdown, with the validation scores.
    """
    import tempfile

    from affectpipe.blend.bench import bench_blend, markdown, parse_rows

    scale = parse_rows(rows)
    with tempfile.TemporaryDirectory(prefix="blend-bench-") as scratch:
        root = workdir or Path(scratch)
        result = bench_blend(root, scale, n_candidates=candidates, seed=seed, n_jobs=jobs)
    command = " ".join(["pipeline", "bench", "blend", *sys.argv[3:]])
    click.echo(markdown(result, command, candidates, jobs))

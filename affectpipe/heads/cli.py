"""`pipeline heads` and `pipeline bench heads`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from affectpipe.cli_options import (
    candidates_option,
    config_option,
    dataset_option,
    progress_option,
    run_option,
    tasks_option,
)
from affectpipe.config import Settings
from affectpipe.heads.options import HeadsOptions
from affectpipe.options import build, click_options


@click.command()
@dataset_option()
@run_option
@tasks_option(
    "Train only this task (repeatable); exit 2 if it has no labelled train rows. "
    "Default: every task with labelled train rows (the others are skipped, with the reason)."
)
@candidates_option(
    "Train only this candidate (repeatable), e.g. 'mt-emotieffnet:embedding+logits/mlp' "
    "or its file name 'mt-emotieffnet.embedding+logits__mlp'; applies to each selected task."
)
@config_option(
    "TOML file with a [heads] table: candidates and hyper-parameters "
    "(see docs/pipeline.example.toml)."
)
@click_options(HeadsOptions)
@progress_option
@click.pass_obj
def heads(
    settings: Settings,
    dataset: str,
    run_name: str,
    tasks: tuple[str, ...],
    candidates: tuple[str, ...],
    config_path: Path | None,
    progress: bool,
    **params,
) -> None:
    """Train shallow heads per task on cached features (CPU, seconds).

    \b
    Default candidates, for every backbone with a feature file in the cache:
      va   BACKBONE:logits and BACKBONE:embedding+logits
      expr BACKBONE:embedding+logits
      au   BACKBONE:embedding+logits
    and BACKBONE:embedding for every task where a backbone has no logits (openface),
    each with the `linear` and `mlp` models (`lightgbm` on request), plus one `temporal`
    candidate per task (a sequence model over each video's frames) on the first CNN
    backbone's embedding+logits (`temporal = false` in the config turns it off).
    Writes runs/RUN/heads/TASK/CANDIDATE.json + .safetensors (the head; never a pickle) and
    runs/RUN/preds/TASK/CANDIDATE.parquet, then commits the candidate to the run's ledger,
    runs/RUN/heads/run.json; merges runs/RUN/heads/metrics.json and prints the validation
    metrics. A run is a ledger: running `heads` again with other candidates adds them (a
    candidate of the same name is replaced), and `blend` uses every committed candidate
    whose inputs are current; `--fresh` starts the run over. Needs labelled validation
    rows (exit 2 without them).
    """
    from affectpipe.heads.training import train

    result = train(
        settings.dataset(dataset),
        run=run_name,
        tasks=tasks or None,
        candidates=candidates or None,
        config_path=config_path,
        progress=progress,
        **dataclasses.asdict(build(HeadsOptions, params)),
    )
    click.echo(result.table())
    for line in result.skipped_lines():
        click.echo(line)
    click.echo(
        f"{len(result.results)} candidates in {result.seconds:.1f} s; "
        f"metrics: {result.metrics_path}; run record: {result.record_path}"
    )


@click.command()
@click.option(
    "--scale",
    type=click.Choice(["full", "small", "1m"]),
    default="full",
    show_default=True,
    help="full: s-Aff-Wild2 size (142,333 / 26,876 / 51,159 rows); small: a tenth; "
    "1m: 1,000,000 rows in the same proportions (~4 GB of float16 cache).",
)
@click.option(
    "--temporal/--no-temporal",
    default=False,
    show_default=True,
    help="Also time the default temporal candidates (one per task; minutes at full scale).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the synthetic cache lives (reused when present). Default: CACHE_DIR/bench-heads.",
)
@click.option(
    "--reference-rows",
    default=40000,
    show_default=True,
    help="Train rows (subsample) for the scikit-learn reference classifiers; 0 = all.",
)
@progress_option
@click.pass_obj
def heads_bench(
    settings: Settings,
    scale: str,
    temporal: bool,
    workdir: Path | None,
    reference_rows: int,
    progress: bool,
) -> None:
    """Time the default heads run at s-Aff-Wild2 scale (or 1M rows) and compare with reference
    fits.

    Generates (or reuses) a synthetic feature cache with planted signal, times the default
    `pipeline heads` run end to end (stages, peak memory) and per candidate, measures the I/O
    floor (reading the features), fits scikit-learn references (Ridge / LogisticRegression)
    on the same features and prints a markdown table of scores and timings.
    """
    from affectpipe.heads.bench import run_bench

    report = run_bench(
        workdir or settings.cache_dir / "bench-heads",
        scale=scale,
        temporal=temporal,
        reference_rows=reference_rows,
        progress=progress,
    )
    for part in report:
        click.echo(part)

"""The options of `pipeline index`: the defaults of the command, of `index_dataset` and of
`pipeline run`'s [index] table (see `affectpipe.options`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from affectpipe.options import option


@dataclass(frozen=True)
class IndexOptions:
    """How `index` reads a dataset. The format options (all but `lenient` and `force`) apply
    to some formats only; None: the format's default (a format refuses one it does not take)."""

    train_file: Path | None = option(
        None, "abaw-mtl: training file.", type=click.Path(path_type=Path)
    )
    val_file: Path | None = option(
        None, "abaw-mtl: validation file.", type=click.Path(path_type=Path)
    )
    test_list: Path | None = option(
        None, "Challenge test list file.", type=click.Path(path_type=Path)
    )
    image_root: Path | None = option(
        None, "Folder the image keys are relative to.", type=click.Path(path_type=Path)
    )
    test_image_root: Path | None = option(
        None,
        "Folder of the test images (default: discovered, else --image-root).",
        type=click.Path(path_type=Path),
    )
    labels: Path | None = option(
        None,
        "videos: ABAW per-task annotation folder (Train_Set/, Validation_Set/).",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
    )
    task: str | None = option(
        None, "videos: the task of --labels.", type=click.Choice(["va", "expr", "au"])
    )
    detector: str | None = option(
        None, "videos: face detector (default mtcnn; see `pipeline predict`)."
    )
    frames_dir: Path | None = option(
        None,
        "videos: where the aligned frames go (default CACHE/NAME/frames).",
        type=click.Path(file_okay=False, path_type=Path),
    )
    split_column: str | None = option(None, "csv: column holding train/val/test (default `split`).")
    video_column: str | None = option(
        None, "csv: column grouping rows into videos (default `video`)."
    )
    val_fraction: float | None = option(
        None,
        "csv without split column: fraction of videos put in val (deterministic).",
        type=click.FloatRange(0.0, 1.0, max_open=True),
    )
    # None, not False: a format that does not take the option is not handed it.
    allow_absolute_paths: bool | None = option(
        None,
        "csv: accept absolute image paths (other keys must stay inside the image root).",
        is_flag=True,
    )
    lenient: bool = option(
        False, "Mark malformed fields missing (and count them) instead of failing."
    )
    force: bool = option(False, "Re-index even when the inputs are unchanged.")

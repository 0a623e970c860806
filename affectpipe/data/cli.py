"""`pipeline index`: dataset readers -> manifest."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from affectpipe.cli_options import layout_option
from affectpipe.config import Settings
from affectpipe.data.options import IndexOptions
from affectpipe.options import build, click_options

FORMAT_HELP = """\b
Formats:
  abaw-mtl   s-Aff-Wild2 (ABAW3/4/7 MTL): training_set_annotations.txt,
             validation_set_annotations.txt, test list (MTL_Challenge_test_set_release.txt,
             test_set_examples/MTL.txt, MTL.txt or
             Multi_Task_Learning_Challenge_test_set_release.txt), images in cropped_aligned/ and
             test_data/ | mtl_test_data/ | testset/ cropped_aligned/.
  abaw-va, abaw-expr, abaw-au
             per-task Aff-Wild2 (ABAW3/5/6/8): <task folder>/Train_Set/*.txt and
             Validation_Set/*.txt, one file per video (ROOT = the annotations folder or the
             task folder); test lists of ABAW3 (video names: each expands to frames 1..last
             image of the video's folder) or ABAW5/6 (header + one frame a line).
  abaw-tasks per-task Aff-Wild2 as ONE dataset: ROOT = the annotations folder holding
             the VA, EXPR and AU task folders (any present); train/val rows are the union
             of their frames with each task's labels, then each task's test list as its
             own block of rows. Frames are extracted once.
  csv        (alias folder) a CSV with an `image` column (relative to --image-root,
             default the CSV's folder or its images/ subfolder; absolute paths only with
             --allow-absolute-paths) and any of valence, arousal, expression, au1..au26,
             split, video, frame.
  videos     a folder of raw videos (recursive): each is decoded once, the largest face
             of every frame detected (--detector, default mtcnn), aligned to ABAW's 112x112
             five-point template and written to CACHE/NAME/frames/<video>/<frame:05d>.jpg
             (or --frames-dir); frames without a face are listed in <video>/missing.tsv.
             Finished videos are skipped when indexing again. Labels: --labels DIR --task
             va|expr|au, an ABAW per-task folder (Train_Set/, Validation_Set/ <video>.txt);
             other videos become test rows.
  Per-task test lists (abaw-va/expr/au, abaw-tasks), the first found in the annotations
  folder or its parent (abaw-va/expr/au: or --test-list FILE):
    VA   test_set_examples/CVPR_6th_ABAW_VA_test_set_example.txt,
         CVPR_5th_ABAW_VA_test_set_sample.txt,
         Valence_Arousal_Estimation_Challenge_test_set_release.txt
    EXPR test_set_examples/CVPR_6th_ABAW_Expr_test_set_example.txt,
         CVPR_5th_ABAW_EXPR_test_set_sample.txt,
         Expression_Classification_Challenge_test_set_release.txt
    AU   test_set_examples/CVPR_6th_ABAW_AU_test_set_example.txt,
         CVPR_5th_ABAW_AU_test_set_sample.txt,
         Action_Unit_Detection_Challenge_test_set_release.txt
  Without one, a task has no test rows (and no submission is asked for).

Image keys that leave the image root (`../x.jpg`, absolute paths) are refused with FILE:LINE.
"""


@click.command(epilog=FORMAT_HELP)
@click.argument("root", type=click.Path(exists=True, path_type=Path))
@layout_option(required=True, help="Dataset layout (see below).")
@click.option("--name", required=True, help="Dataset name: the manifest goes to CACHE/NAME/.")
@click_options(IndexOptions)
@click.pass_obj
def index(
    settings: Settings,
    root: Path,
    fmt: str,
    name: str,
    **params: object,
) -> None:
    """Index the dataset at ROOT into CACHE/NAME/manifest.parquet.

    Rows keep the files' order (train, val, then the test list) and repeated image keys;
    missing labels become NaN / -1. A malformed line stops with FILE:LINE and exit code 2,
    writing nothing (unless --lenient). Indexing unchanged inputs again is a no-op.
    """
    from affectpipe.data.index import index_dataset

    options = build(IndexOptions, params)
    result = index_dataset(root, fmt, name, settings.cache_dir, **dataclasses.asdict(options))
    click.echo(result.summary)

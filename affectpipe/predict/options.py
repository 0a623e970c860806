"""The options of `pipeline predict`: the defaults of the command and of `Predictor` (see
`affectpipe.options`)."""

from __future__ import annotations

from dataclasses import dataclass

import click

from affectpipe.extract import InferenceOptions
from affectpipe.options import option


@dataclass(frozen=True)
class PredictOptions(InferenceOptions):
    """How `predict` finds the faces of images and videos (and, as `extract`, runs the
    backbones on them)."""

    detect: bool = option(
        False, "Always find and align every face of each image or frame (raw frames)."
    )
    detector: str = option(
        "mtcnn",
        "Face detector for --detect and for frames the crop check does not take: "
        "mtcnn (CNN, 5 landmarks; weights fetched with pip) or dlib-hog.",
    )
    redetect: int = option(
        1,
        "In videos, run the full detection every N-th kept frame; in between MTCNN looks "
        "only around the previous frame's faces (several times faster; a new face is found "
        "at the next full detection, a lost one at once).",
        type=click.IntRange(min=1),
    )
    assume_aligned: bool = option(
        False,
        "Take every image as an aligned face crop: skip the face check (face_check=assumed).",
    )
    every: int = option(1, "Keep every N-th video frame.", type=click.IntRange(min=1))

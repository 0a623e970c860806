"""`--format videos`: a folder of raw videos becomes a dataset of cropped-aligned frames.

Every video under ROOT (recursive, sorted; the suffixes `pipeline predict` reads) is decoded
once (with predict's decoder and caps), its faces found by a registered detector
(`--detector`, default MTCNN), and the largest face of each frame aligned to
ABAW's 112x112 five-point template and written as ``<frames dir>/<video>/<frame:05d>.jpg``
(frames numbered from 1, as ABAW's `cropped_aligned`; ``<video>`` is the file's stem). The
frames dir defaults to ``CACHE/NAME/frames``. A frame without a face, or one that cannot be
decoded, gets no image and a line in ``<video>/missing.tsv`` (frame, reason): recorded, not
fatal. A video is finished when its ``done.json`` (file size, mtime, detector) is written;
indexing again skips finished videos and redoes an interrupted one.

Labels (optional): ``--labels DIR`` is an ABAW per-task annotation folder (`--task va|expr|au`;
``Train_Set/<video>.txt``, ``Validation_Set/<video>.txt``, line i = frame i, as
`abaw-va/expr/au` read them); a video without an annotation file, or every video without
``--labels``, becomes test rows (its frames that have an image).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from affectpipe.data.dataset import Inputs, Table
from affectpipe.data.formats.abaw_task import AbawTask
from affectpipe.data.labels import missing_labels
from affectpipe.errors import InputError
from affectpipe.fsutil import write_text_atomic

DONE = "done.json"
MISSING = "missing.tsv"


class VideoFolder:
    name = "videos"
    option_names = ("labels", "task", "detector", "frames_dir")
    writes_images = True  # `index_dataset` passes `frames_dir` (CACHE/NAME/frames) by default

    def resolve(
        self,
        root: Path,
        *,
        frames_dir: str | Path,
        labels: str | Path | None = None,
        task: str | None = None,
        detector: str = "mtcnn",
    ) -> Inputs:
        from affectpipe.predict.inputs import is_video

        root = root.resolve()
        videos = sorted(p for p in root.rglob("*") if p.is_file() and is_video(p))
        if not videos:
            raise InputError(f"no video files under {root}")
        stems = [v.stem for v in videos]
        repeated = sorted({s for s in stems if stems.count(s) > 1})
        if repeated:
            raise InputError(f"videos share a name (their frames would mix): {repeated[:5]}")
        if (labels is None) != (task is None):
            raise InputError("--labels and --task go together (an ABAW per-task folder)")
        frames = Path(frames_dir).expanduser().resolve()
        extracted = {
            v.stem: _extract(v, frames / v.stem, detector)
            for v in tqdm(videos, desc="detecting faces", unit="video", disable=None)
        }
        options: dict[str, Any] = {"detector": detector, "videos": extracted}
        sources: tuple[Path, ...] = ()
        parts: dict[str, Inputs] = {}
        if labels is not None:
            assert task is not None
            labelled = AbawTask(task).resolve(Path(labels), image_root=frames)
            labelled = Inputs(
                tuple(p for p in labelled.sources if p != labelled.test_list),
                labelled.image_roots,
                labelled.options,
            )
            sources, parts = labelled.sources, {str(task): labelled}
        roots = {"train": frames, "val": frames, "test": frames}
        return Inputs(sources, roots, options, None, parts)

    def read(
        self, inputs: Inputs, images: Mapping[Path, frozenset[str]], *, lenient: bool
    ) -> Table:
        present = images[inputs.image_roots["test"]]
        frame = pd.DataFrame(columns=["image", "video", "frame", "split"])
        fixes: dict[str, int] = {}
        for task, labelled in inputs.parts.items():
            table = AbawTask(task).read(labelled, images, lenient=lenient)
            frame, fixes = table.frame, table.fixes
        labelled_videos = set(frame["video"]) if len(frame) else set()
        keys = sorted(k for k in present if k.split("/", 1)[0] not in labelled_videos)
        video = [k.split("/", 1)[0] for k in keys]
        numbers = [int(Path(k).stem) for k in keys]
        tests = pd.DataFrame(
            {
                "image": keys,
                "video": video,
                "frame": numbers,
                "split": "test",
                **missing_labels(len(keys)),
            }
        )
        rows = pd.concat([frame, tests], ignore_index=True)
        if not len(rows):
            where = inputs.image_roots["test"]
            raise InputError(
                f"no face in any frame of the videos (each video's reasons: "
                f"{where}/<video>/{MISSING})"
            )
        return Table(rows, None, fixes)


def _extract(video: Path, folder: Path, detector: str) -> dict[str, Any]:
    """Write the aligned face of each frame of `video` into `folder` unless done already;
    returns what `done.json` records."""
    stat = video.stat()
    identity = {
        "video": str(video),
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "detector": detector,
    }
    done = folder / DONE
    if done.exists():
        try:
            recorded = json.loads(done.read_text())
        except (OSError, ValueError):
            recorded = {}
        if {k: recorded.get(k) for k in identity} == identity:
            return recorded
    from affectpipe.faces.tracking import VideoFaces
    from affectpipe.predict.face_check import DetectorChoice, find_faces
    from affectpipe.predict.inputs import video_frames

    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():  # an interrupted run's frames: redone from the start
        if stale.is_file():
            stale.unlink()
    choice = DetectorChoice.of(detector)
    faces_of = VideoFaces(choice.load)
    missing, written = [], 0
    for frame in video_frames(video):
        if frame.frame == 0:  # the video could not be opened at all
            missing.append((0, frame.reason or "unreadable"))
            break
        found = find_faces([frame.image], [frame.reason], "detect", faces_of, choice.face_score)[0]
        if found[0].image is None:  # else found[0] is the largest face
            missing.append((frame.frame, found[0].reason or "no face"))
            continue
        found[0].image.save(folder / f"{frame.frame:05d}.jpg", quality=95)
        written += 1
    lines = "".join(f"{n}\t{why}\n" for n, why in missing)
    write_text_atomic(folder / MISSING, "frame\treason\n" + lines)
    recorded = {**identity, "frames_written": written, "frames_missing": len(missing)}
    write_text_atomic(done, json.dumps(recorded, indent=1) + "\n")
    return recorded

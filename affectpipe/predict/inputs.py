"""What `predict` reads: image files, folders (recursive, sorted) and videos.

`Predictor` decodes image files as extraction does (`load_rgb`); a video becomes a stream of
`Frame`s, one per kept frame (`every` N-th, counted from the first). Frames are numbered from
1, as ABAW numbers its `cropped_aligned` frames (00001.jpg is a video's first frame), and carry
their presentation time in seconds. A file that cannot be decoded is a frame without an image
(and a reason), never an exception: its row says `face_ok = false`."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from affectpipe.data.images import IMAGE_SUFFIXES
from affectpipe.errors import InputError
from affectpipe.extract import MAX_DECODE_PIXELS, to_rgb
from affectpipe.fsutil import file_kind

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg"})


@dataclass(frozen=True)
class Frame:
    source: str
    frame: int  # 1-based number in its video (0: the video could not be opened)
    time: float  # seconds from the video's start (NaN when unknown)
    image: Image.Image | None
    reason: str | None  # why `image` is None


def _folder_files(folder: Path) -> list[Path]:
    """A folder's image and video files (recursive, sorted); a sub-folder that cannot be read
    is an error naming it, not a silent gap in the output."""

    def unreadable(exc: OSError) -> None:
        raise InputError(f"cannot read folder {exc.filename}: {exc.strerror or exc}")

    found = []
    for parent, _, names in os.walk(folder, onerror=unreadable):
        found += [
            Path(parent) / n
            for n in names
            if Path(n).suffix.lower() in (*IMAGE_SUFFIXES, *VIDEO_SUFFIXES)
        ]
    return sorted(found)


def expand(inputs: Sequence[str | Path]) -> list[Path]:
    """Files to read, in order: files as given, folders as their images and videos (sorted)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += _folder_files(path)
        elif path.exists() or path.is_symlink():
            files.append(path)
        else:
            raise InputError(f"no such file or folder: {path}")
    if not files:
        raise InputError("no image or video found in: " + ", ".join(map(str, inputs)))
    return files


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def video_frames(path: Path, every: int = 1) -> Iterator[Frame]:
    """Every `every`-th frame of a video, decoded with PyAV; one failed frame if unreadable,
    not a regular file (a FIFO would block for ever), too large a frame or without frames."""
    import av

    try:
        kind = file_kind(os.stat(path).st_mode)
    except OSError as exc:
        kind = f"unreadable ({exc.strerror or exc})"
    if kind is not None:
        yield Frame(str(path), 0, math.nan, None, f"not a regular file ({kind})")
        return
    try:
        container = av.open(str(path))
    except Exception as exc:  # any demuxer error: an unusable input, not a crash
        yield Frame(str(path), 0, math.nan, None, f"undecodable video: {type(exc).__name__}: {exc}")
        return
    with container:
        index = 0
        try:
            stream = container.streams.video[0]
            pixels = stream.codec_context.width * stream.codec_context.height
            if pixels > MAX_DECODE_PIXELS:
                raise ValueError(f"{pixels} pixels a frame, over {MAX_DECODE_PIXELS}")
            for decoded in container.decode(stream):
                if index % every == 0:
                    yield Frame(
                        str(path),
                        index + 1,
                        _seconds(decoded, container),
                        to_rgb(decoded.to_image()),
                        None,
                    )
                index += 1
        except Exception as exc:  # a damaged stream ends this video with one failed row
            yield Frame(
                str(path),
                index + 1,
                math.nan,
                None,
                f"undecodable frame: {type(exc).__name__}: {exc}",
            )
            return
    if index == 0:
        yield Frame(str(path), 0, math.nan, None, "a video without frames")


def _seconds(decoded: Any, container: Any) -> float:
    """A frame's presentation time from the video's first frame; NaN without timestamps."""
    if decoded.time is None:
        return math.nan
    stream = container.streams.video[0]
    start = stream.start_time * stream.time_base if stream.start_time is not None else 0
    return float(decoded.time - start)

"""What `predict` reads: image files, folders (recursive, sorted) and videos.

`Predictor` decodes image files as extraction does (`load_rgb`); a video becomes a stream of
`Frame`s, one per kept frame (`every` N-th, counted from the first). Frames are numbered from
1, as ABAW numbers its `cropped_aligned` frames (00001.jpg is a video's first frame), and carry
their presentation time in seconds. A file that cannot be decoded is a frame without an image
(and a reason), never an exception: its row says `face_ok = false`."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from affectpipe.errors import InputError
from affectpipe.extract.images import to_rgb

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg"})


@dataclass(frozen=True)
class Frame:
    source: str
    frame: int  # 1-based number in its video (0: the video could not be opened)
    time: float  # seconds from the video's start (NaN when unknown)
    image: Image.Image | None
    reason: str | None  # why `image` is None


def expand(inputs: Sequence[str | Path]) -> list[Path]:
    """Files to read, in order: files as given, folders as their images and videos (sorted)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES and not p.is_dir()
            )
            files += found
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
    """Every `every`-th frame of a video, decoded with PyAV; one failed frame if unreadable."""
    import av

    try:
        container = av.open(str(path))
    except Exception as exc:  # any demuxer error: an unusable input, not a crash
        yield Frame(str(path), 0, math.nan, None,
                    f"undecodable video: {type(exc).__name__}: {exc}")
        return
    with container:
        index = 0
        try:
            for decoded in container.decode(video=0):
                if index % every == 0:
                    yield Frame(str(path), index + 1, _seconds(decoded, container),
                                to_rgb(decoded.to_image()), None)
                index += 1
        except Exception as exc:  # a damaged stream ends this video with one failed row
            yield Frame(str(path), index + 1, math.nan, None,
                        f"undecodable frame: {type(exc).__name__}: {exc}")


def _seconds(decoded: Any, container: Any) -> float:
    """A frame's presentation time from the video's first frame; NaN without timestamps."""
    if decoded.time is None:
        return math.nan
    stream = container.streams.video[0]
    start = stream.start_time * stream.time_base if stream.start_time is not None else 0
    return float(decoded.time - start)


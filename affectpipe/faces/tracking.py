"""Faces of consecutive video frames linked into tracks (`face_id`).

Greedy matching, best pair first, of each frame's detections to the tracks seen within the
last `max_gap` kept frames. A pair's cost is ``(1 - IoU) + landmark distance / face size``
(the mean distance of the 5 points over the track's last box side); a pair is allowed when
its IoU is at least `min_iou` or its landmark distance is below `max_point_shift` face sizes
(a fast move of a face that keeps its shape). An unmatched detection starts a new track.
A face that leaves for longer than `max_gap` frames and returns gets a new id: there is no
re-identification by appearance.

`VideoFaces` is the detector of one video's frames: a full detection every `redetect`-th
frame, and in between, with a detector that can (`refine`, e.g. MTCNN's R- and O-Nets on the
previous boxes), only a search around the previous frame's faces, which is several times
faster; a full detection also runs on any frame where a face was lost (or scores under
`min_score`) or none was seen.
A face that enters while others are tracked is found at the next full detection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from affectpipe.faces.detection import Detection, FaceDetector, box_iou

MIN_IOU = 0.3
MAX_POINT_SHIFT = 0.6
MAX_GAP = 25  # kept frames (1 s at 25 fps)


@dataclass
class _Track:
    ident: int
    box: np.ndarray
    points: np.ndarray
    last_seen: int


@dataclass
class Tracker:
    """Call `update` once per kept frame of one video, in order."""

    min_iou: float = MIN_IOU
    max_point_shift: float = MAX_POINT_SHIFT
    max_gap: int = MAX_GAP
    _tracks: list[_Track] = field(default_factory=list)
    _frame: int = 0
    _next: int = 0

    def update(self, detections: Sequence[Detection]) -> list[int]:
        """The track id of each detection of the next frame."""
        self._frame += 1
        self._tracks = [t for t in self._tracks if self._frame - t.last_seen <= self.max_gap]
        ids = [-1] * len(detections)
        if detections and self._tracks:
            cost = self._costs(detections)
            for flat in np.argsort(cost, axis=None):
                d, t = np.unravel_index(flat, cost.shape)
                if not np.isfinite(cost[d, t]):
                    break
                if ids[d] >= 0 or self._tracks[t].last_seen == self._frame:
                    continue
                ids[d] = self._claim(self._tracks[t], detections[d])
        for d, detection in enumerate(detections):
            if ids[d] < 0:
                track = _Track(self._next, detection.box, detection.points, self._frame)
                self._tracks.append(track)
                self._next += 1
                ids[d] = track.ident
        return ids

    def _claim(self, track: _Track, detection: Detection) -> int:
        track.box, track.points, track.last_seen = detection.box, detection.points, self._frame
        return track.ident

    def _costs(self, detections: Sequence[Detection]) -> np.ndarray:
        boxes = np.stack([d.box for d in detections])
        iou = box_iou(boxes, np.stack([t.box for t in self._tracks]))
        sides = np.array([max(t.box[2] - t.box[0], t.box[3] - t.box[1], 1.0) for t in self._tracks])
        shift = (
            np.array(
                [
                    [np.linalg.norm(d.points - t.points, axis=1).mean() for t in self._tracks]
                    for d in detections
                ]
            )
            / sides
        )
        allowed = (iou >= self.min_iou) | (shift < self.max_point_shift)
        return np.where(allowed, 1.0 - iou + shift, np.inf)


class VideoFaces:
    """A detector for the frames of one video, in order (see the module docstring)."""

    def __init__(
        self,
        load: Callable[[], FaceDetector],
        redetect: int = 1,
        min_score: float = float("-inf"),
    ) -> None:
        self.load = load  # called at the first detection (a video may need none)
        self.redetect = redetect
        self.min_score = min_score  # a refined face scoring less counts as lost
        self._previous: list[Detection] = []
        self._since = 0

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        detector = self.load()
        refine = getattr(detector, "refine", None)
        if self.redetect <= 1 or refine is None:
            return detector.detect(images)
        found = []
        for image in images:
            faces: list[Detection] = []
            if self._previous and self._since < self.redetect - 1:
                faces = [
                    f for f in refine([image], [self._previous])[0] if f.score >= self.min_score
                ]
                self._since += 1
            if len(faces) < len(self._previous) or not faces:
                faces = detector.detect([image])[0]
                self._since = 0
            self._previous = faces
            found.append(faces)
        return found

"""Face detection (`affectpipe.faces`): MTCNN's parity with the original implementation,
the ABAW 5-point alignment, tracking and the detector registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from affectpipe.errors import InputError
from affectpipe.extract.backbones.openface_geometry import apply_transform
from affectpipe.faces import registry
from affectpipe.faces.align import ALIGNED_SIDE, TEMPLATE, align_face, alignment_matrix
from affectpipe.faces.detection import Detection, box_iou
from affectpipe.faces.tracking import Tracker, VideoFaces


@pytest.fixture(scope="module")
def reference(fixtures_dir: Path) -> dict:
    folder = fixtures_dir / "mtcnn"
    ref = np.load(folder / "ref_mtcnn.npz")
    return {
        "folder": folder,
        **{k: ref[k] for k in ref.files},
        "truth": json.loads((folder / "truth.json").read_text()),
    }


def _frames(reference: dict, rows: list[int]) -> list[np.ndarray]:
    return [
        np.asarray(
            Image.open(reference["folder"] / "frames" / reference["names"][i]).convert("RGB")
        )
        for i in rows
    ]


def _check_parity(reference: dict, detector, rows: list[int]) -> None:
    found = detector.detect(_frames(reference, rows))
    for i, faces in zip(rows, found, strict=True):
        mine = reference["image_index"] == i
        assert len(faces) == reference["count"][i], reference["names"][i]
        # Both list the largest face first.
        boxes = np.array([f.box for f in faces]).reshape(-1, 4)
        points = np.array([f.points for f in faces]).reshape(-1, 5, 2)
        np.testing.assert_allclose(boxes, reference["boxes"][mine], atol=1e-3)
        np.testing.assert_allclose(points, reference["points"][mine], atol=1e-3)
        np.testing.assert_allclose([f.score for f in faces], reference["probs"][mine], atol=1e-5)


def test_mtcnn_matches_the_original_on_some_frames(reference: dict, mtcnn_detector):
    """Boxes, landmarks and probabilities of facenet-pytorch 2.6.0's MTCNN (frames with 0 to
    3 faces, one batch)."""
    _check_parity(reference, mtcnn_detector, [0, 4, 7, 8, 9])


@pytest.mark.slow
def test_mtcnn_matches_the_original_on_every_frame(reference: dict, mtcnn_detector):
    _check_parity(reference, mtcnn_detector, list(range(len(reference["names"]))))


def test_mtcnn_finds_the_pasted_faces(reference: dict, mtcnn_detector):
    rows = [4, 6, 7, 8]
    for i, faces in zip(rows, mtcnn_detector.detect(_frames(reference, rows)), strict=True):
        truth = np.array(reference["truth"][reference["names"][i]])
        iou = box_iou(truth, np.array([f.box for f in faces]))
        assert (iou.max(axis=1) > 0.3).all()


def test_the_weights_come_pinned_from_the_facenet_wheel():
    from affectpipe.extract.weights import WEIGHTS, weights_entries

    detector = registry.get("mtcnn")
    assert sorted(detector.weights) == ["onet", "pnet", "rnet"]
    for entry in detector.weights.values():
        assert WEIGHTS[entry.name] is entry and entry.backbone == "mtcnn"
        assert entry.package.requirement == "facenet-pytorch==2.6.0"
        assert len(entry.sha256) == 64 and len(entry.package.wheel_sha256) == 64
    assert [e.name for e in weights_entries(["mtcnn"])] == [
        "mtcnn_pnet",
        "mtcnn_rnet",
        "mtcnn_onet",
    ]


def test_unknown_detector_names_the_known_ones():
    with pytest.raises(InputError, match="mtcnn, dlib-hog"):
        registry.get("retinaface")


def test_a_tampered_weight_file_is_refused(tmp_path: Path):
    from affectpipe.errors import AffectpipeError

    fake = tmp_path / "pnet.pt"
    fake.write_bytes(b"\x80\x02not weights")
    with pytest.raises((InputError, AffectpipeError)):
        registry.get("mtcnn").build(weights={"pnet": fake})


def test_alignment_puts_the_landmarks_on_the_template():
    """A face rotated by 20 degrees, scaled and shifted: its landmarks map exactly onto the
    template, and the aligned crop shows what was drawn at them."""
    angle = np.deg2rad(20)
    rotation = 2.5 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = TEMPLATE @ rotation.T + [300, 150]
    matrix = alignment_matrix(points)
    np.testing.assert_allclose(points @ matrix[:, :2].T + matrix[:, 2], TEMPLATE, atol=1e-9)
    canvas = np.zeros((480, 640, 3), np.uint8)
    for x, y in points.round().astype(int):
        canvas[y - 4 : y + 5, x - 4 : x + 5] = 255
    aligned = np.asarray(align_face(Image.fromarray(canvas), points))
    assert aligned.shape == (ALIGNED_SIDE, ALIGNED_SIDE, 3)
    for x, y in TEMPLATE.round().astype(int):
        assert aligned[y, x].min() > 200  # a marker lands on each template point
    assert aligned[10, 10].max() == 0


def test_detected_faces_align_close_to_the_template(reference: dict, mtcnn_detector):
    """Re-detecting an aligned crop (padded back into a frame) finds its landmarks where the
    alignment put them (within MTCNN's own few pixels of noise at 112); those sit within a
    few pixels of the template (a similarity cannot fit a smile's wide mouth exactly)."""
    faces = mtcnn_detector.detect(_frames(reference, [7]))[0]
    frame = Image.fromarray(_frames(reference, [7])[0])
    for face in faces:
        crop = align_face(frame, face.points).resize((224, 224), Image.Resampling.BICUBIC)
        canvas = Image.new("RGB", (400, 400), (120, 120, 120))
        canvas.paste(crop, (88, 88))
        again = mtcnn_detector.detect([np.asarray(canvas)])[0]
        assert len(again) == 1
        found = (again[0].points - 88) / 2
        placed = apply_transform(alignment_matrix(face.points), face.points)
        assert np.linalg.norm(found - placed, axis=1).max() < 4.0
        assert np.linalg.norm(placed - TEMPLATE, axis=1).mean() < 6.0


def _face(x: float, y: float, side: float = 100) -> Detection:
    box = np.array([x, y, x + side, y + side])
    return Detection(box, TEMPLATE / 112 * side + [x, y], 0.99)


def test_tracks_follow_two_faces_and_a_returning_face_gets_a_new_id():
    tracker = Tracker(max_gap=3)
    ids = [tracker.update([_face(10 + 5 * t, 50), _face(400 - 5 * t, 60)]) for t in range(5)]
    assert ids == [[0, 1]] * 5
    # Listed in the other order, each face keeps its track.
    assert tracker.update([_face(375, 60), _face(35, 50)]) == [1, 0]
    assert tracker.update([]) == []
    # A fast move of the same face (IoU under 0.3, landmarks 0.55 faces away): same track.
    assert tracker.update([_face(90, 50)]) == [0]
    for _ in range(4):
        tracker.update([])
    assert tracker.update([_face(90, 50)]) == [2]  # gone for longer than max_gap


def test_dlib_hog_gives_five_points_in_the_same_order(reference: dict, mtcnn_detector):
    hog = registry.get("dlib-hog").build()
    frame = _frames(reference, [7])
    mine = hog.detect(frame)[0]
    theirs = mtcnn_detector.detect(frame)[0]
    assert mine
    big = max(theirs, key=lambda d: d.box[2] - d.box[0])
    match = max(mine, key=lambda d: box_iou(d.box, big.box)[0, 0])
    side = big.box[2] - big.box[0]
    assert np.linalg.norm(match.points - big.points, axis=1).max() < 0.15 * side


def test_video_faces_refine_between_full_detections(reference: dict, mtcnn_detector):
    """redetect=4: one full detection, then three frames searched around the previous faces
    (the same faces: IoU over 0.9 with a full detection's, landmarks within 5% of the box);
    a lost face brings a full detection at once."""
    frame = _frames(reference, [8])[0]
    shifted = [np.roll(frame, 3 * k, axis=1) for k in range(5)]
    calls = []

    class Counting:
        def detect(self, images):
            calls.append(len(images))
            return mtcnn_detector.detect(images)

        def refine(self, images, previous):
            return mtcnn_detector.refine(images, previous)

    video = VideoFaces(lambda: Counting(), redetect=4)
    found = video.detect(shifted)
    assert calls == [1, 1]  # frames 1 and 5
    full = mtcnn_detector.detect(shifted)
    for mine, theirs in zip(found, full, strict=True):
        assert len(mine) == len(theirs) == 3
        for a, b in zip(mine, theirs, strict=True):
            assert box_iou(a.box, b.box)[0, 0] > 0.9
            side = b.box[2] - b.box[0]
            assert np.linalg.norm(a.points - b.points, axis=1).max() < 0.05 * side
    blank = np.full_like(frame, 128)
    assert video.detect([blank]) == [[]] and calls == [1, 1, 1]

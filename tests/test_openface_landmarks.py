"""dlib landmarks and their geometry on real face photos (shared fixtures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from affectpipe.extract.backbones.landmarks import (
    LEFT_EYE,
    MIRROR_68,
    MOUTH,
    NOSE_TIP,
    RIGHT_EYE,
    fit_landmarks,
)
from affectpipe.extract.backbones.openface_geometry import (
    AU_MEASUREMENTS,
    REFERENCE_SHAPE,
    align_to_reference,
    apply_transform,
    au_measurements,
    estimate_reference_shape,
    similarity_transform,
)

MIRROR = list(MIRROR_68)


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def photos(fixtures_dir: Path) -> list[Path]:
    """All 12 dev photos (odd sizes, grayscale ones) and 40 of the 112x112 bench crops."""
    images = fixtures_dir / "images"
    return sorted((images / "dev").glob("*.jpg")) + sorted((images / "bench112").glob("*.jpg"))[:40]


def interocular(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[RIGHT_EYE].mean(0) - points[LEFT_EYE].mean(0)))


def test_mirror_permutation_is_an_involution_fixing_the_midline():
    assert sorted(MIRROR) == list(range(68))
    assert [MIRROR[MIRROR[i]] for i in range(68)] == list(range(68))
    midline = [8, 27, 28, 29, 30, 33, 51, 57, 62, 66]
    assert [MIRROR[i] for i in midline] == midline
    assert MIRROR[36] == 45 and MIRROR[48] == 54 and MIRROR[0] == 16


def test_landmarks_on_real_faces_are_plausible(photos):
    asymmetry = []
    for path in photos:
        fit = fit_landmarks(load_rgb(path))
        points = fit.points
        assert points.shape == (68, 2), path
        eyes_y = (points[RIGHT_EYE, 1].mean() + points[LEFT_EYE, 1].mean()) / 2
        assert eyes_y < points[NOSE_TIP, 1] < points[MOUTH, 1].mean(), path
        assert points[RIGHT_EYE, 0].mean() < points[LEFT_EYE, 0].mean(), path
        assert fit.plausible, path
        aligned, _ = align_to_reference(points)
        mirrored = aligned[MIRROR] * np.array([-1.0, 1.0])
        asymmetry.append(np.linalg.norm(mirrored - aligned, axis=1).mean())
    # Inter-ocular units; head yaw makes single faces asymmetric, the typical face is not.
    assert max(asymmetry) < 0.45
    assert np.median(asymmetry) < 0.2


def test_landmarks_are_stable_under_a_horizontal_flip(photos):
    errors = []
    for path in photos:
        rgb = load_rgb(path)
        direct = fit_landmarks(rgb).points
        flipped = fit_landmarks(np.ascontiguousarray(rgb[:, ::-1])).points
        unflipped = flipped.copy()
        unflipped[:, 0] = rgb.shape[1] - 1 - unflipped[:, 0]
        error = np.linalg.norm(unflipped[MIRROR] - direct, axis=1).mean() / interocular(direct)
        errors.append(error)
    assert max(errors) < 0.15
    assert np.mean(errors) < 0.05


def test_landmarks_found_without_detection_on_a_tiny_crop(fixtures_dir):
    # A 23x32 photo: below what the detector finds even upsampled, so the crop box is used.
    fit = fit_landmarks(load_rgb(fixtures_dir / "images/dev/HrithikRoshan_64.jpg"))
    assert not fit.detected and fit.detector_score == 0.0
    assert fit.plausible


def test_reference_shape_is_reproduced_from_the_bench_crops(fixtures_dir):
    crops = sorted((fixtures_dir / "images/bench112").glob("*.jpg"))
    shapes = np.stack([fit_landmarks(load_rgb(path)).points for path in crops])
    estimate = estimate_reference_shape(shapes)
    assert np.abs(estimate - REFERENCE_SHAPE).max() < 0.01


def test_reference_shape_is_symmetric_with_unit_eye_distance():
    mirrored = REFERENCE_SHAPE[MIRROR] * np.array([-1.0, 1.0])
    assert np.abs(mirrored - REFERENCE_SHAPE).max() < 0.002
    assert REFERENCE_SHAPE[RIGHT_EYE].mean(0) == pytest.approx([-0.5, 0.0], abs=0.002)
    assert REFERENCE_SHAPE[LEFT_EYE].mean(0) == pytest.approx([0.5, 0.0], abs=0.002)


def test_similarity_transform_recovers_a_known_transform_without_reflection():
    angle, scale, shift = 0.3, 2.5, np.array([10.0, -4.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = scale * REFERENCE_SHAPE @ rotation.T + shift
    found_scale, matrix = similarity_transform(REFERENCE_SHAPE, moved)
    assert found_scale == pytest.approx(scale)
    assert np.allclose(apply_transform(matrix, REFERENCE_SHAPE), moved)
    # A mirror image is matched exactly only by a reflection, which must not be used.
    cloud = np.random.default_rng(0).normal(size=(20, 2))
    _, matrix = similarity_transform(cloud, cloud * np.array([-1.0, 1.0]))
    assert np.linalg.det(matrix[:, :2]) > 0


def test_au_measurements_follow_the_landmarks_they_document():
    base = dict(zip(AU_MEASUREMENTS, au_measurements(REFERENCE_SHAPE), strict=True))
    smile = REFERENCE_SHAPE.copy()
    smile[[48, 54], 1] -= 0.1  # lip corners up
    smile[48, 0] -= 0.05
    smile[54, 0] += 0.05  # and apart
    smiling = dict(zip(AU_MEASUREMENTS, au_measurements(smile), strict=True))
    assert smiling["lip_corner_raise_r"] == pytest.approx(base["lip_corner_raise_r"] + 0.1)
    assert smiling["lip_corner_raise_l"] == pytest.approx(base["lip_corner_raise_l"] + 0.1)
    assert smiling["mouth_width"] == pytest.approx(base["mouth_width"] + 0.1)
    assert smiling["corner_to_eye_r"] < base["corner_to_eye_r"]

    open_mouth = REFERENCE_SHAPE.copy()
    open_mouth[[56, 57, 58, 65, 66, 67, 5, 6, 7, 8, 9, 10, 11], 1] += 0.2  # jaw and lower lip
    opened = dict(zip(AU_MEASUREMENTS, au_measurements(open_mouth), strict=True))
    assert opened["mouth_opening"] == pytest.approx(base["mouth_opening"] + 0.2)
    assert opened["jaw_drop"] == pytest.approx(base["jaw_drop"] + 0.2)
    assert opened["lip_thickness"] == pytest.approx(base["lip_thickness"])

    raised = REFERENCE_SHAPE.copy()
    raised[17:27, 1] -= 0.1  # both brows up
    brows = dict(zip(AU_MEASUREMENTS, au_measurements(raised), strict=True))
    for name in ("inner_brow_raise_r", "inner_brow_raise_l", "outer_brow_raise_r"):
        assert brows[name] == pytest.approx(base[name] + 0.1)

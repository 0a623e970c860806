"""Landmark geometry: similarity alignment to a reference shape and AU-related measurements.

Coordinates are in the *reference frame*: the reference shape (`REFERENCE_SHAPE`) is upright,
symmetric, has its eye centres at (-0.5, 0) and (0.5, 0) (inter-ocular distance 1) and y
pointing down, as in images. A face is aligned by the least-squares similarity transform
(scale, in-plane rotation, translation; no reflection) that maps its *rigid* points (upper
jaw, nose, eye corners: `RIGID_POINTS`) onto the reference's, so what expressions move
(brows, lids, lips, jaw) stays visible in the aligned coordinates.

`REFERENCE_SHAPE` was computed by `estimate_reference_shape` (generalised Procrustes
analysis, mirror-symmetrised) from dlib fits on the 256 crops of
shared/fixtures/images/bench112, rounded to 3 decimals.

AU-related measurements (`AU_MEASUREMENTS`, in inter-ocular units of the aligned face;
indices are the 68-point numbering of `landmarks`):

- inner_brow_raise_r / _l: AU1 raises, AU4 lowers. Inner eye corner (39 / 42) y minus
  inner brow end (21 / 22) y.
- outer_brow_raise_r / _l: AU2. Outer eye corner (36 / 45) y minus outer brow end (17 / 26) y.
- brow_gap: AU4 draws the brows together. x distance of the inner brow ends 21, 22.
- eye_aperture_r / _l: AU5 opens; AU6, AU7, AU43/45 close. Mean lid gap 37-41 and 38-40
  (right), 43-47 and 44-46 (left).
- nostril_width: AU9 (nose wrinkler), AU38. x distance of the nostril wings 31, 35.
- nose_to_upper_lip: AU9, AU10 (upper lip raiser) shorten it. Upper lip top 51 y minus
  nose base 33 y.
- lip_corner_raise_r / _l: AU12 raises (smile), AU15 lowers. Mid-lip y ((51 + 57) / 2)
  minus lip corner (48 / 54) y.
- mouth_width: AU12, AU20 widen; AU18, AU22, AU23 narrow. x distance of corners 48, 54.
- mouth_opening: AU25 (lips part), AU26/27. Inner lip gap: 66 y minus 62 y.
- mouth_aspect: AU25/26 versus AU12/20. mouth_opening / mouth_width.
- jaw_drop: AU26, AU27. Chin 8 y minus nose base 33 y.
- lip_thickness: AU23 (tightener), AU24 (presser), AU28 thin the red lips.
  (62 - 51) + (57 - 66) in y.
- lower_lip_to_chin: AU17 (chin raiser), AU16. Chin 8 y minus lower lip bottom 57 y.
- corner_to_eye_r / _l: AU6 + AU12 (cheek raise in a smile) shorten it. Distance from lip
  corner 48 / 54 to outer eye corner 36 / 45.
"""

from __future__ import annotations

import numpy as np

from affectpipe.extract.backbones.landmarks import LEFT_EYE, MIRROR_68, RIGHT_EYE

# Points that expressions barely move: upper jaw (0, 1, 15, 16), nose (27-35), eye corners.
RIGID_POINTS: tuple[int, ...] = (0, 1, 15, 16, *range(27, 36), 36, 39, 42, 45)

AU_MEASUREMENTS: tuple[str, ...] = (
    "inner_brow_raise_r",
    "inner_brow_raise_l",
    "outer_brow_raise_r",
    "outer_brow_raise_l",
    "brow_gap",
    "eye_aperture_r",
    "eye_aperture_l",
    "nostril_width",
    "nose_to_upper_lip",
    "lip_corner_raise_r",
    "lip_corner_raise_l",
    "mouth_width",
    "mouth_opening",
    "mouth_aspect",
    "jaw_drop",
    "lip_thickness",
    "lower_lip_to_chin",
    "corner_to_eye_r",
    "corner_to_eye_l",
)

# fmt: off
REFERENCE_SHAPE = np.array(
    [
        (-1.158, 0.030), (-1.147, 0.322), (-1.117, 0.610), (-1.062, 0.894), (-0.960, 1.160),
        (-0.791, 1.390), (-0.565, 1.564), (-0.301, 1.681), (0.000, 1.707), (0.301, 1.681),
        (0.565, 1.564), (0.791, 1.390), (0.960, 1.160), (1.062, 0.894), (1.117, 0.610),
        (1.147, 0.322), (1.158, 0.030), (-0.924, -0.196), (-0.778, -0.318), (-0.580, -0.355),
        (-0.373, -0.329), (-0.178, -0.256), (0.178, -0.256), (0.373, -0.329), (0.580, -0.355),
        (0.778, -0.318), (0.924, -0.196), (0.000, -0.034), (0.000, 0.159), (0.000, 0.348),
        (0.000, 0.543), (-0.230, 0.675), (-0.119, 0.717), (0.000, 0.751), (0.119, 0.717),
        (0.230, 0.675), (-0.694, 0.004), (-0.571, -0.063), (-0.426, -0.063), (-0.297, 0.023),
        (-0.435, 0.050), (-0.578, 0.048), (0.297, 0.023), (0.426, -0.063), (0.571, -0.063),
        (0.694, 0.004), (0.578, 0.048), (0.435, 0.050), (-0.439, 1.056), (-0.280, 0.980),
        (-0.118, 0.944), (0.000, 0.973), (0.118, 0.944), (0.280, 0.980), (0.439, 1.056),
        (0.287, 1.191), (0.127, 1.249), (0.000, 1.261), (-0.127, 1.249), (-0.287, 1.191),
        (-0.374, 1.061), (-0.120, 1.037), (0.000, 1.049), (0.120, 1.037), (0.374, 1.061),
        (0.121, 1.107), (0.000, 1.120), (-0.121, 1.107),
    ]
)
# fmt: on


def similarity_transform(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """Least-squares similarity (Umeyama) mapping `source` [n, 2] onto `target` [n, 2].

    Returns (scale, matrix): `matrix` [2, 3] maps a point p to `matrix[:, :2] @ p +
    matrix[:, 2]`, where `matrix[:, :2]` is `scale` times a rotation (never a reflection).
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_c, target_c = source - source_mean, target - target_mean
    u, singular, vt = np.linalg.svd(target_c.T @ source_c / len(source))
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ sign @ vt
    variance = (source_c**2).sum() / len(source)
    scale = float(np.trace(np.diag(singular) @ sign) / variance) if variance > 0 else 1.0
    translation = target_mean - scale * rotation @ source_mean
    return scale, np.hstack([scale * rotation, translation[:, None]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def align_to_reference(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Align image landmarks [68, 2] to the reference frame on the rigid points.

    Returns (aligned points [68, 2], the image -> reference matrix [2, 3]).
    """
    rigid = list(RIGID_POINTS)
    _, matrix = similarity_transform(points[rigid], REFERENCE_SHAPE[rigid])
    return apply_transform(matrix, np.asarray(points, dtype=np.float64)), matrix


def _normalise_to_eyes(shape: np.ndarray) -> np.ndarray:
    """Move and scale a shape so its eye centres sit at (-0.5, 0) and (0.5, 0)."""
    right = shape[RIGHT_EYE].mean(axis=0)
    left = shape[LEFT_EYE].mean(axis=0)
    _, matrix = similarity_transform(np.stack([right, left]), np.array([[-0.5, 0.0], [0.5, 0.0]]))
    return apply_transform(matrix, shape)


def estimate_reference_shape(shapes: np.ndarray, iterations: int = 10) -> np.ndarray:
    """Mean shape of landmark sets [M, 68, 2] by generalised Procrustes analysis.

    The mean is made left-right symmetric (averaged with its mirror image) and normalised
    to the eye convention of the reference frame.
    """
    shapes = np.asarray(shapes, dtype=np.float64)
    mirror = list(MIRROR_68)
    reference = _normalise_to_eyes(shapes[0])
    for _ in range(iterations):
        aligned = [apply_transform(similarity_transform(s, reference)[1], s) for s in shapes]
        mean = np.mean(aligned, axis=0)
        mirrored = mean[mirror] * np.array([-1.0, 1.0])
        reference = _normalise_to_eyes((mean + mirrored) / 2)
    return reference


def au_measurements(aligned: np.ndarray) -> np.ndarray:
    """The `AU_MEASUREMENTS` of aligned landmarks [68, 2] (reference frame), float32."""
    p = np.asarray(aligned, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    mid_lip_y = (y[51] + y[57]) / 2
    mouth_width = x[54] - x[48]
    mouth_opening = y[66] - y[62]
    values = (
        y[39] - y[21],
        y[42] - y[22],
        y[36] - y[17],
        y[45] - y[26],
        x[22] - x[21],
        ((y[41] - y[37]) + (y[40] - y[38])) / 2,
        ((y[47] - y[43]) + (y[46] - y[44])) / 2,
        x[35] - x[31],
        y[51] - y[33],
        mid_lip_y - y[48],
        mid_lip_y - y[54],
        mouth_width,
        mouth_opening,
        mouth_opening / mouth_width if abs(mouth_width) > 1e-6 else 0.0,
        y[8] - y[33],
        (y[62] - y[51]) + (y[57] - y[66]),
        y[8] - y[57],
        float(np.linalg.norm(p[48] - p[36])),
        float(np.linalg.norm(p[54] - p[45])),
    )
    return np.asarray(values, dtype=np.float32)

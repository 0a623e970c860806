"""Procedural face pictures whose features show facial action units (synthetic demo data).

`draw_face` paints a frontal face (hair, ears, shaded skin, eyes with iris and pupil,
brows, nose, lips) at 3x the output size and downsamples it, so edges are anti-aliased and
look enough like a cropped, aligned face for landmark fitting and HOG. Per-frame actions:
AU1/AU2 raise the inner/outer brows, AU4 lowers and knits them, AU6/AU7 narrow the eyes
(AU6 also lifts the cheeks), AU10 raises the upper lip, AU12/AU15 lift/drop the lip
corners, AU23/AU24 thin and press the lips, AU25/AU26 part the lips and drop the jaw.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SUPERSAMPLE = 3
AUs = Mapping[str, float]  # AU column name -> intensity in [0, 1]

SKIN_TONES = ((236, 192, 160), (224, 172, 135), (198, 142, 104), (160, 108, 74), (111, 74, 50))
HAIR_COLOURS = ((30, 22, 18), (70, 45, 28), (120, 85, 50), (185, 150, 95), (90, 90, 92))
IRIS_COLOURS = ((70, 45, 25), (60, 95, 130), (75, 110, 70), (40, 30, 25))


@dataclass(frozen=True)
class Identity:
    """What stays fixed within a video: colours and face geometry (fractions of the size)."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    iris: tuple[int, int, int]
    background: tuple[tuple[int, int, int], tuple[int, int, int]]
    center: tuple[float, float]
    half_width: float
    aspect: float  # face half-height / half-width
    eye_spacing: float  # eye centre offset from the midline, fraction of half_width
    eye_size: float
    mouth_width: float
    lip_colour: tuple[int, int, int]

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Identity:
        skin = np.array(SKIN_TONES[rng.integers(len(SKIN_TONES))]) + rng.integers(-12, 13, 3)
        lip = np.clip(skin * np.array([0.85, 0.55, 0.55]) + [25, 0, 5], 0, 255)
        back = rng.integers(40, 220, 3)
        half_width = rng.uniform(0.39, 0.43)
        aspect = rng.uniform(1.22, 1.32)
        # Framed like an aligned crop: chin near the bottom edge, eyes ~38% down, the top
        # of the head cut off.
        center_y = 0.975 - half_width * aspect + rng.uniform(-0.015, 0.015)
        return cls(
            skin=_rgb(skin),
            hair=HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))],
            iris=IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))],
            background=(_rgb(back), _rgb(back * rng.uniform(0.55, 0.9))),
            center=(0.5 + rng.uniform(-0.015, 0.015), center_y),
            half_width=half_width,
            aspect=aspect,
            eye_spacing=rng.uniform(0.36, 0.44),
            eye_size=rng.uniform(0.9, 1.1),
            mouth_width=rng.uniform(0.34, 0.42),
            lip_colour=_rgb(lip),
        )


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in np.clip(np.round(values), 0, 255))
    return (r, g, b)


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 24) -> np.ndarray:
    s = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - s) ** 2 * p0 + 2 * (1 - s) * s * p1 + s**2 * p2


def _shift(box: list[float], dx: float, dy: float) -> list[float]:
    return [box[0] - dx, box[1] - dy, box[2] - dx, box[3] - dy]


def _points(xy: np.ndarray) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in xy]


def draw_face(
    identity: Identity,
    au: AUs,
    valence: float,
    arousal: float,
    rng: np.random.Generator,
    size: int = 112,
) -> Image.Image:
    """One RGB face picture; `au` maps `au1`..`au26` to intensities in [0, 1], valence and
    arousal are in [-1, 1] (valence curves the mouth, arousal opens the eyes, lifts brows).

    `rng` adds per-frame jitter (position, roll, lighting, sensor noise).
    """
    big = size * SUPERSAMPLE
    canvas = _background(identity, big).copy()
    draw = ImageDraw.Draw(canvas)
    a = identity.half_width * big
    b = a * identity.aspect
    cx = identity.center[0] * big + rng.normal(0, 0.012) * big
    cy = identity.center[1] * big + rng.normal(0, 0.012) * big
    skin = np.array(identity.skin, dtype=float)
    dark_skin = _rgb(skin * 0.78)

    # Hair behind the head, neck, ears, face.
    draw.ellipse([cx - 1.12 * a, cy - 1.12 * b, cx + 1.12 * a, cy + 0.35 * b], fill=identity.hair)
    draw.rectangle([cx - 0.45 * a, cy + 0.6 * b, cx + 0.45 * a, big], fill=dark_skin)
    for side in (-1, 1):
        ex = cx + side * 0.97 * a
        draw.ellipse([ex - 0.13 * a, cy - 0.28 * b, ex + 0.13 * a, cy + 0.1 * b], fill=dark_skin)
    jaw = 0.06 * b * au.get("au26", 0.0)  # a dropped jaw lengthens the face
    draw.ellipse([cx - a, cy - b, cx + a, cy + b + jaw], fill=identity.skin)
    # Fringe: the upper half of an ellipse whose centre line is the hairline.
    top, hairline = cy - 1.15 * b, cy - 0.55 * b
    draw.chord(
        [cx - 1.05 * a, top, cx + 1.05 * a, 2 * hairline - top], 180, 360, fill=identity.hair
    )

    eye_y = cy - 0.12 * b
    _cheeks(draw, identity, cx, eye_y, a, au)
    _eyes(canvas, draw, identity, cx, eye_y, a, au, arousal)
    _brows(draw, identity, cx, eye_y, a, au, arousal)
    _nose(draw, skin, cx, eye_y, cy, a, b, au)
    _mouth(draw, identity, cx, cy + 0.52 * b, a, au, valence)

    # Lighting and head roll are applied at the output size: the same look, 9x cheaper.
    k = SUPERSAMPLE
    small = _shade(canvas.resize((size, size), Image.LANCZOS), cx / k, cy / k, a / k, b / k)
    fill = _rgb(np.mean(identity.background, axis=0))
    small = small.rotate(
        rng.normal(0, 2.0), resample=Image.BILINEAR, center=(cx / k, cy / k), fillcolor=fill
    )
    pixels = np.asarray(small, dtype=np.float32) * rng.uniform(0.92, 1.08)
    pixels += rng.normal(0, 3.0, pixels.shape)
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))


@functools.lru_cache(maxsize=8)
def _background(identity: Identity, big: int) -> Image.Image:
    top, bottom = (np.array(c, dtype=np.float32) for c in identity.background)
    ramp = np.linspace(0.0, 1.0, big, dtype=np.float32)[:, None, None]
    rows = top * (1 - ramp) + bottom * ramp
    return Image.fromarray(np.repeat(rows, big, axis=1).astype(np.uint8))


def _shade(canvas: Image.Image, cx: float, cy: float, a: float, b: float) -> Image.Image:
    """Soft light from the upper left: darker towards the face outline and the lower right."""
    big = canvas.size[0]
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32)
    r2 = ((xx - cx) / (1.1 * a)) ** 2 + ((yy - cy) / (1.1 * b)) ** 2
    light = 1.0 - 0.22 * np.clip(r2, 0, 1.6) - 0.05 * ((xx - cx) / a + (yy - cy) / b)
    pixels = np.asarray(canvas, dtype=np.float32) * np.clip(light, 0.55, 1.08)[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _cheeks(
    draw: ImageDraw.ImageDraw, identity: Identity, cx: float, eye_y: float, a: float, au: AUs
) -> None:
    lift = au.get("au6", 0.0)
    if lift < 0.05:
        return
    blush = _rgb(np.array(identity.skin) * (1 - 0.12 * lift) + np.array([18, -6, -6]) * lift)
    for side in (-1, 1):
        x = cx + side * identity.eye_spacing * a * 1.15
        y = eye_y + (0.42 - 0.1 * lift) * a
        draw.ellipse([x - 0.2 * a, y - 0.1 * a, x + 0.2 * a, y + 0.1 * a], fill=blush)


def _eyes(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    identity: Identity,
    cx: float,
    eye_y: float,
    a: float,
    au: AUs,
    arousal: float,
) -> None:
    width = 0.2 * a * identity.eye_size
    opening = 0.55 + 0.3 * arousal + 0.25 * au.get("au2", 0.0)
    opening -= 0.3 * au.get("au6", 0.0) + 0.35 * au.get("au7", 0.0)
    height = width * 0.55 * float(np.clip(opening, 0.12, 1.15))
    for side in (-1, 1):
        ex = cx + side * identity.eye_spacing * a
        box = [ex - width, eye_y - height, ex + width, eye_y + height]
        # Iris and pupil are drawn on a patch and pasted through the eye-shaped mask.
        x0, y0 = int(ex - width) - 2, int(eye_y - width) - 2
        side_px = int(2 * width) + 5
        mask = Image.new("L", (side_px, side_px), 0)
        ImageDraw.Draw(mask).ellipse(_shift(box, x0, y0), fill=255)
        patch = Image.new("RGB", (side_px, side_px), (238, 236, 230))
        patch_draw = ImageDraw.Draw(patch)
        r = 0.45 * width
        px, py = ex - x0, eye_y - y0
        patch_draw.ellipse([px - r, py - r, px + r, py + r], fill=identity.iris)
        pr = 0.45 * r
        patch_draw.ellipse([px - pr, py - pr, px + pr, py + pr], fill=(8, 8, 8))
        patch_draw.ellipse(
            [px - 0.3 * r, py - 0.55 * r, px - 0.05 * r, py - 0.3 * r], fill=(250, 250, 250)
        )
        canvas.paste(patch, (x0, y0), mask.filter(ImageFilter.GaussianBlur(1)))
        # Upper lid line and a faint lower lid.
        draw.arc(box, 190, 350, fill=(25, 18, 15), width=max(2, int(0.035 * a)))
        draw.arc(box, 20, 160, fill=_rgb(np.array(identity.skin) * 0.7), width=2)


def _brows(
    draw: ImageDraw.ImageDraw,
    identity: Identity,
    cx: float,
    eye_y: float,
    a: float,
    au: AUs,
    arousal: float,
) -> None:
    inner_up = 0.16 * au.get("au1", 0.0) - 0.14 * au.get("au4", 0.0) + 0.03 * arousal
    outer_up = 0.16 * au.get("au2", 0.0) + 0.03 * arousal
    knit = 0.07 * au.get("au4", 0.0)
    colour = _rgb(np.array(identity.hair) * 0.8)
    base = eye_y - 0.32 * a
    for side in (-1, 1):
        inner = np.array([cx + side * (0.14 - knit) * a, base - inner_up * a])
        middle = np.array([cx + side * 0.38 * a, base - (0.07 + 0.6 * outer_up) * a])
        outer = np.array([cx + side * 0.62 * a, base + 0.03 * a - outer_up * a])
        curve = _bezier(inner, middle, outer, 16)
        draw.line(_points(curve), fill=colour, width=max(3, int(0.075 * a)), joint="curve")


def _nose(
    draw: ImageDraw.ImageDraw,
    skin: np.ndarray,
    cx: float,
    eye_y: float,
    cy: float,
    a: float,
    b: float,
    au: AUs,
) -> None:
    shadow = _rgb(skin * 0.72)
    tip_y = cy + 0.22 * b - 0.04 * a * au.get("au10", 0.0)
    draw.line([(cx + 0.04 * a, eye_y + 0.05 * a), (cx + 0.08 * a, tip_y)], fill=shadow, width=3)
    for side in (-1, 1):
        nx = cx + side * 0.1 * a
        draw.ellipse(
            [nx - 0.05 * a, tip_y - 0.02 * a, nx + 0.05 * a, tip_y + 0.04 * a], fill=shadow
        )
    fold = 0.4 * au.get("au10", 0.0) + 0.5 * au.get("au12", 0.0) + 0.3 * au.get("au6", 0.0)
    if fold > 0.1:  # nasolabial folds deepen with a raised lip or a smile
        tone = _rgb(skin * (1 - 0.25 * min(fold, 1.0)))
        for side in (-1, 1):
            start = np.array([cx + side * 0.2 * a, tip_y])
            end = np.array([cx + side * 0.42 * a, cy + 0.55 * b])
            control = np.array([cx + side * 0.4 * a, tip_y + 0.1 * b])
            draw.line(_points(_bezier(start, control, end, 12)), fill=tone, width=3)


def _mouth(
    draw: ImageDraw.ImageDraw,
    identity: Identity,
    cx: float,
    my: float,
    a: float,
    au: AUs,
    valence: float,
) -> None:
    press = max(au.get("au23", 0.0), au.get("au24", 0.0))
    width = identity.mouth_width * a * (1 + 0.3 * au.get("au12", 0.0) - 0.15 * press)
    lift = 0.12 * a * (au.get("au12", 0.0) - au.get("au15", 0.0)) + 0.08 * a * valence
    gap = 0.02 * a + 0.16 * a * au.get("au25", 0.0) + 0.2 * a * au.get("au26", 0.0)
    gap *= 1 - 0.8 * press
    thick = 0.075 * a * (1 - 0.6 * press)
    raise_upper = 0.05 * a * au.get("au10", 0.0)

    left = np.array([cx - width, my - lift])
    right = np.array([cx + width, my - lift])
    mid = _bezier(left, np.array([cx, my + lift]), right)
    taper = np.sin(np.linspace(0, np.pi, len(mid)))[:, None] * np.array([0.0, 1.0])
    upper_in = mid - taper * (gap / 2 + raise_upper)
    lower_in = mid + taper * gap / 2
    upper_out = upper_in - taper**0.7 * thick
    lower_out = lower_in + taper**0.7 * thick * 1.25

    draw.polygon(_points(np.vstack([upper_in, lower_in[::-1]])), fill=(60, 18, 22))
    if gap > 0.06 * a:  # teeth show once the lips part
        teeth = upper_in + taper * min(gap * 0.45, 0.07 * a)
        draw.polygon(_points(np.vstack([upper_in, teeth[::-1]])), fill=(235, 232, 220))
    lip = identity.lip_colour
    draw.polygon(_points(np.vstack([upper_out, upper_in[::-1]])), fill=_rgb(np.array(lip) * 0.9))
    draw.polygon(_points(np.vstack([lower_in, lower_out[::-1]])), fill=lip)
    draw.line(_points(mid if gap < 0.03 * a else upper_in), fill=(70, 30, 30), width=2)

"""A small synthetic dataset in the exact s-Aff-Wild2 layout (for `pipeline demo` and tests).

Each video follows smooth latent trajectories (sums of slow sinusoids): valence, arousal
and 12 AU intensities coupled to them. Labels come from the latents (AU = intensity above
0.5, expression = a rule on the latents, imbalanced like the real data) and the faces are
drawn from the same latents (`affectpipe.data.synthetic_faces`), so the labels are visible in the
pixels and change smoothly from frame to frame. Missing labels come in contiguous runs at
about the real rates (abaw-formats.md §1.4).

Layout written under `root`::

    cropped_aligned/<video>/<frame:05d>.jpg        train and val videos, 112x112 JPEG
    test_data/cropped_aligned/<video>/<frame>.jpg  test videos (a few listed frames absent)
    training_set_annotations.txt, validation_set_annotations.txt
    test_set_examples/MTL.txt                      ABAW7 style: header, `key,` lines
    test_ground_truth.txt                          test labels (not an ABAW file: for scoring demos)
    affectpipe-demo.json                           the parameters it was made with
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from affectpipe import __version__
from affectpipe.data.synthetic_faces import Identity, draw_face
from affectpipe.errors import InputError
from affectpipe.fsutil import write_text_atomic
from affectpipe.schema import AU_COLUMNS, MTL_SUBMISSION_HEADER

ANNOTATION_HEADER = "image,valence,arousal,expression," + ",".join(f"AU{c[2:]}" for c in AU_COLUMNS)
# Fractions of rows with a valid label (abaw-formats.md §1.4).
TRAIN_VALID = {"va": 0.73, "expr": 0.64, "au": 0.73}
VAL_VALID = {"va": 1.0, "expr": 0.57, "au": 1.0}
TEST_ABSENT_IMAGE_RATE = 0.04
JPEG_QUALITY = 92
MARKER = "affectpipe-demo.json"  # the generator's parameters; `complete` once fully written
OWNED = (
    "cropped_aligned",
    "test_data",
    "test_set_examples",
    "training_set_annotations.txt",
    "validation_set_annotations.txt",
    "test_ground_truth.txt",
)

# How each AU intensity leans on valence and arousal (the rest is its own slow wave).
AU_COUPLING = {
    "au1": (-0.2, 0.6),
    "au2": (0.0, 0.6),
    "au4": (-0.7, 0.2),
    "au6": (0.8, 0.1),
    "au7": (-0.3, 0.3),
    "au10": (-0.5, 0.2),
    "au12": (0.9, 0.0),
    "au15": (-0.7, -0.2),
    "au23": (-0.4, 0.1),
    "au24": (-0.4, -0.1),
    "au25": (0.2, 0.7),
    "au26": (0.0, 0.7),
}


@dataclass(frozen=True)
class Video:
    name: str
    split: str
    frames: np.ndarray  # sparse 1-based frame numbers
    valence: np.ndarray
    arousal: np.ndarray
    au: dict[str, np.ndarray]  # latent intensities in [0, 1]


def video_names(n: int, rng: np.random.Generator) -> list[str]:
    """Distinct folder names in the real styles: `video12`, `134-30-1280x720`, `_left`..."""
    names: list[str] = []
    while len(names) < n:
        k = len(names)
        number = int(rng.integers(1, 400))
        style = k % 4
        if style == 0:
            name = f"video{number}"
        elif style == 1:
            name = f"{number}-30-1280x720"
        elif style == 2:
            name = f"video{number}_1_{'left' if k % 8 == 2 else 'right'}"
        else:
            name = f"{number}-25-{rng.choice(['640x360', '1920x1080'])}"
        if name not in names:
            names.append(name)
    return names


def _wave(t: np.ndarray, rng: np.random.Generator, n_terms: int = 3) -> np.ndarray:
    """A smooth zero-mean curve over frame numbers `t` (sum of slow sinusoids), ~unit scale."""
    out = np.zeros(len(t))
    for _ in range(n_terms):
        period = rng.uniform(40, 160)
        out += rng.normal(0, 0.7) * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    return out


def _make_video(name: str, split: str, n_frames: int, rng: np.random.Generator) -> Video:
    steps = rng.choice([1, 1, 1, 2, 3, 5, 9], size=n_frames)
    frames = int(rng.integers(1, 12)) + np.cumsum(steps) - steps[0]
    t = frames.astype(float)
    valence = np.tanh(rng.normal(0, 0.35) + _wave(t, rng))
    arousal = np.tanh(rng.normal(0.1, 0.3) + 0.8 * _wave(t, rng))
    au = {}
    for column, (wv, wa) in AU_COUPLING.items():
        own = rng.normal(-0.7, 0.3) + 0.9 * _wave(t, rng)
        drive = own + 1.4 * (wv * valence + wa * arousal)
        au[column] = 1 / (1 + np.exp(-2.5 * drive))
    return Video(name, split, frames, valence, arousal, au)


def expression_codes(video: Video) -> np.ndarray:
    """ABAW codes from the latents; later rules override earlier ones."""
    v, a, au = video.valence, video.arousal, video.au
    codes = np.zeros(len(v), dtype=np.int64)  # neutral
    codes[(np.abs(v) < 0.3) & (a > 0.35)] = 7  # other
    codes[(v < -0.25) & (a < 0.1)] = 5  # sadness
    codes[(v < -0.3) & (a >= 0.1) & (au["au4"] > 0.5)] = 1  # anger
    codes[(v < -0.35) & (au["au10"] > 0.6)] = 2  # disgust
    codes[(v < -0.2) & (a > 0.55) & (au["au1"] > 0.5)] = 3  # fear
    codes[(a > 0.45) & (au["au2"] > 0.5) & (au["au26"] > 0.5) & (v >= -0.2)] = 6  # surprise
    codes[(v > 0.3) & (au["au12"] > 0.5)] = 4  # happiness
    return codes


def _missing_run(n: int, valid_rate: float, rng: np.random.Generator) -> np.ndarray:
    """[n] bool, True on one contiguous run of about (1 - valid_rate) * n frames."""
    length = int(round((1 - valid_rate) * n))
    missing = np.zeros(n, dtype=bool)
    if length:
        start = int(rng.integers(0, n - length + 1))
        missing[start : start + length] = True
    return missing


def _annotation_lines(video: Video, rng: np.random.Generator, valid: dict[str, float]) -> list[str]:
    n = len(video.frames)
    no_va, no_expr, no_au = (_missing_run(n, valid[task], rng) for task in ("va", "expr", "au"))
    codes = expression_codes(video)
    labels = np.stack([video.au[c] > 0.5 for c in AU_COLUMNS], axis=1).astype(int)
    lines = []
    for i, frame in enumerate(video.frames):
        va = "-5,-5" if no_va[i] else f"{video.valence[i]:.6f},{video.arousal[i]:.6f}"
        expr = -1 if no_expr[i] else codes[i]
        aus = ",".join(["-1"] * len(AU_COLUMNS) if no_au[i] else map(str, labels[i]))
        lines.append(f"{video.name}/{frame:05d}.jpg,{va},{expr},{aus}")
    return lines


def write_demo_dataset(
    root: Path,
    *,
    seed: int = 0,
    n_videos: int = 12,
    frames_per_video: int = 40,
    n_val: int = 3,
    n_test: int = 3,
    image_size: int = 112,
) -> Path:
    """Write the synthetic s-Aff-Wild2-layout dataset under `root` and return `root`.

    `index_dataset(root, "abaw-mtl", name, cache_dir)` indexes it without options. The same
    arguments give byte-identical files; when `root` already holds a complete dataset made
    with them, nothing is rewritten. A folder written by another call is replaced; any other
    non-empty folder is refused.
    """
    if n_val + n_test >= n_videos:
        raise ValueError("need at least one training video: n_val + n_test < n_videos")
    root = Path(root)
    params = {
        "seed": seed,
        "n_videos": n_videos,
        "frames_per_video": frames_per_video,
        "n_val": n_val,
        "n_test": n_test,
        "image_size": image_size,
        "package_version": __version__,
    }
    if _prepare_root(root, params):
        return root
    rng = np.random.default_rng(seed)
    names = video_names(n_videos, rng)
    splits = ["train"] * (n_videos - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    streams = rng.spawn(n_videos)
    annotations: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    test_list: list[str] = []
    for name, split, stream in zip(names, splits, streams, strict=True):
        video = _make_video(name, split, frames_per_video, stream)
        lines = _annotation_lines(video, stream, VAL_VALID if split != "train" else TRAIN_VALID)
        annotations[split].extend(lines)
        absent = (stream.random(len(video.frames)) < TEST_ABSENT_IMAGE_RATE) & (split == "test")
        image_root = root / ("test_data/cropped_aligned" if split == "test" else "cropped_aligned")
        _write_images(video, image_root, absent, stream, image_size)
        if split == "test":
            keys = [line.split(",", 1)[0] for line in lines]
            repeat = int(stream.integers(len(keys)))  # real lists repeat a few keys
            test_list.extend([*keys[: repeat + 1], keys[repeat], *keys[repeat + 1 :]])

    header = ANNOTATION_HEADER + "\n"
    write_text_atomic(
        root / "training_set_annotations.txt", header + "\n".join(annotations["train"]) + "\n"
    )
    write_text_atomic(
        root / "validation_set_annotations.txt", header + "\n".join(annotations["val"]) + "\n"
    )
    write_text_atomic(
        root / "test_set_examples" / "MTL.txt",
        MTL_SUBMISSION_HEADER + "\n" + "".join(f"{key},\n" for key in test_list),
    )
    write_text_atomic(
        root / "test_ground_truth.txt", header + "\n".join(annotations["test"]) + "\n"
    )
    write_text_atomic(root / MARKER, json.dumps({**params, "complete": True}))
    return root


def _prepare_root(root: Path, params: dict[str, object]) -> bool:
    """True when `root` already holds this dataset; else leave it ready to be written.

    The marker file is written first (incomplete) and completed last, so a crash part-way
    is recognised and the folder rewritten by the next call.
    """
    marker = root / MARKER
    if marker.exists():
        if json.loads(marker.read_text()) == {**params, "complete": True}:
            return True
        for name in OWNED:
            target = root / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    elif root.exists() and any(root.iterdir()):
        raise InputError(f"{root} is not empty and holds no demo dataset: choose another folder")
    root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(marker, json.dumps({**params, "complete": False}))
    return False


def _write_images(
    video: Video, image_root: Path, absent: np.ndarray, rng: np.random.Generator, size: int
) -> None:
    identity = Identity.sample(rng)
    folder = image_root / video.name
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(video.frames):
        au = {c: float(v[i]) for c, v in video.au.items()}
        image = draw_face(
            identity, au, float(video.valence[i]), float(video.arousal[i]), rng, size=size
        )
        if absent[i]:
            continue
        image.save(folder / f"{frame:05d}.jpg", quality=JPEG_QUALITY)

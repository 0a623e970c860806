"""A synthetic feature cache with planted signal, for `pipeline bench heads`: s-Aff-Wild2's
size (220k rows), a tenth of it, or the full Aff-Wild2's (1M rows, same split proportions).

Each row has a latent vector z (16 dims: a per-video part plus a per-frame part). Labels are
noisy functions of z: VA a squashed linear map, expression an argmax over linear scores
plus Gumbel noise with biases giving the real class imbalance, AUs thresholded linear
scores with logistic noise at the real prevalences (abaw-formats.md §1.4). Missing labels
follow the real valid counts. Each backbone's features encode z linearly plus a tanh
non-linearity and Gaussian noise (DDAMFN noisier than MT-EmotiEffNet; the OpenFace-style
descriptor carries the expression and AU directions only). A few images are not ok, and
the test list repeats some keys, as the real one does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from affectpipe import __version__
from affectpipe.config import DatasetPaths
from affectpipe.features import write_feature_file_streamed
from affectpipe.manifest import distinct_images, empty_manifest, write_manifest
from affectpipe.schema import AU_COLUMNS

# s-Aff-Wild2 statistics (abaw-formats.md §1.4).
EXPR_TRAIN_COUNTS = np.array([23976, 4555, 3168, 3122, 18135, 7609, 5228, 24852], dtype=float)
AU_TRAIN_POSITIVES = np.array(
    [18713, 8745, 20342, 30605, 41337, 38286, 26783, 2460, 2980, 5003, 70584, 10756], dtype=float
)
VALID_RATES = {  # split -> (VA, EXPR, AU) share of rows with a valid label
    "train": (103917 / 142333, 90645 / 142333, 103316 / 142333),
    "val": (1.0, 15440 / 26876, 1.0),
}
AU_LABELLED_TRAIN = 103316
LATENT_DIM = 16
NOT_OK_RATE = 0.002
TEST_REPEAT_RATE = (51159 - 50441) / 51159


@dataclass(frozen=True)
class Scale:
    n_train: int
    n_val: int
    n_test: int
    rows_per_video: int = 400


SCALES = {
    "full": Scale(142333, 26876, 51159),
    "small": Scale(14233, 2688, 5116, rows_per_video=200),
    # The full Aff-Wild2's size (~1M rows per track) in s-Aff-Wild2's split proportions.
    "1m": Scale(645887, 121959, 232154),
}
# Feature storage of the synthetic caches: float16 halves the disk (the 1m cache is ~4 GB
# instead of ~8 GB; recorded in each file's `synthetic_storage` attr). Readers widen to
# float32; the planted signal is far above float16's resolution (~1e-3 relative).
STORAGE_DTYPE = "float16"
STORAGE_TORCH_DTYPE = torch.float16  # blocks are cast before HDF5 sees them (its cast is slow)
BLOCK_ROWS = 32768

# backbone -> (embedding dim, logit names or None, noise std of the embedding)
BACKBONES: dict[str, tuple[int, tuple[str, ...] | None, float]] = {
    "mt-emotieffnet": (
        1280,
        ("anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
        + ("valence", "arousal"),
        1.0,
    ),
    "ddamfn": (
        512,
        ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt"),
        1.5,
    ),
    "openface": (200, None, 1.0),
}


def _manifest(scale: Scale, rng: np.random.Generator) -> pd.DataFrame:
    frames = []
    for split, n in (("train", scale.n_train), ("val", scale.n_val), ("test", scale.n_test)):
        part = empty_manifest(n)
        video_ids = np.arange(n) // scale.rows_per_video
        frame_ids = np.arange(n) % scale.rows_per_video + 1
        part["video"] = [f"{split}{v:04d}" for v in video_ids]
        part["frame"] = frame_ids
        part["image"] = [
            f"{split}{v:04d}/{f:05d}.jpg" for v, f in zip(video_ids, frame_ids, strict=True)
        ]
        part["split"] = split
        part["has_image"] = True
        if split == "test":  # the real test list repeats some keys
            repeat = rng.random(n) < TEST_REPEAT_RATE
            repeat[0] = False
            images = part["image"].to_numpy(dtype=object)
            images[repeat] = images[np.flatnonzero(repeat) - 1]
            part["image"] = images
        frames.append(part)
    return pd.concat(frames, ignore_index=True)


def _latent(manifest: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    codes, videos = pd.factorize(manifest["video"])
    per_video = rng.standard_normal((len(videos), LATENT_DIM)) * 0.6
    return (per_video[codes] + rng.standard_normal((len(manifest), LATENT_DIM)) * 0.8).astype(
        np.float32
    )


def _labels(manifest: pd.DataFrame, z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fill the label columns in place; returns the latent directions of the 22 label scores."""
    n = len(manifest)
    directions = rng.standard_normal((LATENT_DIM, 2 + 8 + 12)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=0)
    scores = z @ directions
    va = np.tanh(0.5 * scores[:, :2] + 0.35 * rng.standard_normal((n, 2)))
    prior = EXPR_TRAIN_COUNTS / EXPR_TRAIN_COUNTS.sum()
    expr = (1.3 * scores[:, 2:10] + np.log(prior) + rng.gumbel(size=(n, 8))).argmax(axis=1)
    prevalence = AU_TRAIN_POSITIVES / AU_LABELLED_TRAIN
    au_scores = 1.6 * scores[:, 10:] + np.log(prevalence / (1 - prevalence))
    au = (au_scores + rng.logistic(size=(n, 12)) > 0).astype(np.int8)
    split = manifest["split"].to_numpy(dtype=object)
    rate = np.zeros((n, 3))
    for name, rates in VALID_RATES.items():
        rate[split == name] = rates  # test rows keep rate 0: no labels
    keep = rng.random((n, 3)) < rate
    va[~keep[:, 0]] = np.nan
    expr[~keep[:, 1]] = -1
    au[~keep[:, 2]] = -1
    manifest["valence"] = va[:, 0].astype(np.float32)
    manifest["arousal"] = va[:, 1].astype(np.float32)
    manifest["expression"] = expr.astype(np.int8)
    manifest[list(AU_COLUMNS)] = au
    return directions


def _feature_blocks(
    z: np.ndarray,
    ok: np.ndarray,
    dim: int,
    noise: float,
    directions: np.ndarray,
    name: str,
    rng: np.random.Generator,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(first row, {embedding, ok[, logits]}) blocks of one backbone's feature rows, generated
    block by block so that a 1M-row cache never exists in memory whole."""
    basis = z if name != "openface" else z @ directions[:, 2:]  # descriptors: EXPR/AU only
    linear = rng.standard_normal((basis.shape[1], dim)).astype(np.float32) / np.sqrt(basis.shape[1])
    bend = rng.standard_normal((basis.shape[1], dim)).astype(np.float32) / np.sqrt(basis.shape[1])
    logit_names = BACKBONES[name][1]
    k = len(logit_names) if logit_names is not None else 0
    logit_directions = directions[:, :k] if k == 10 else directions[:, 2:10]
    # torch for the bulk arithmetic: its normal draws, tanh and half casts run several times
    # faster than numpy's, which at 1M rows decides whether the cache takes minutes or tens.
    noise_draws = torch.Generator().manual_seed(int(rng.integers(2**62)))
    for start in range(0, len(z), BLOCK_ROWS):
        b = basis[start : start + BLOCK_ROWS]
        keep = ok[start : start + BLOCK_ROWS]
        embedding = torch.from_numpy(b @ linear) + 0.5 * torch.tanh(torch.from_numpy(b @ bend))
        embedding += noise * torch.randn(embedding.shape, generator=noise_draws)
        embedding[torch.from_numpy(~keep)] = 0.0
        block = {"embedding": embedding.to(STORAGE_TORCH_DTYPE).numpy(), "ok": keep}
        if k:
            scores = torch.from_numpy(z[start : start + BLOCK_ROWS] @ logit_directions)
            logits = scores + 0.7 * noise * torch.randn(scores.shape, generator=noise_draws)
            logits[torch.from_numpy(~keep)] = 0.0
            block["logits"] = logits.to(STORAGE_TORCH_DTYPE).numpy()
        yield start, block


def write_synthetic_cache(paths: DatasetPaths, scale: Scale, seed: int = 0) -> None:
    """Write manifest.parquet and features/{mt-emotieffnet,ddamfn,openface}.h5 under `paths`."""
    rng = np.random.default_rng(seed)
    manifest = _manifest(scale, rng)
    z = _latent(manifest, rng)
    directions = _labels(manifest, z, rng)
    images = distinct_images(manifest)
    codes, _ = pd.factorize(manifest["image"])  # codes follow first occurrence, as `images`
    first_row = np.unique(codes, return_index=True)[1]
    z_images = z[first_row]
    paths.features_dir.mkdir(parents=True, exist_ok=True)
    for name, (dim, logit_names, noise) in BACKBONES.items():
        ok = rng.random(len(images)) >= NOT_OK_RATE
        attrs = {
            "backbone": name,
            "package_version": __version__,
            "synthetic_seed": seed,
            "synthetic_storage": STORAGE_DTYPE,
        }
        if logit_names is not None:
            attrs["logit_names"] = list(logit_names)
        if name == "openface":
            attrs["groups"] = {"au": [0, 100], "geometry": [100, dim]}
        write_feature_file_streamed(
            paths.features(name),
            images,
            _feature_blocks(z_images, ok, dim, noise, directions, name, rng),
            attrs,
            embedding_dim=dim,
            logits_dim=len(logit_names) if logit_names is not None else None,
            dtype=STORAGE_DTYPE,
        )
    write_manifest(
        manifest,
        paths.manifest,
        {
            "dataset": paths.root.name,
            "format": "synthetic-heads",
            "image_roots": {},
            "sources": [],
            "package_version": __version__,
            "options": {"seed": seed, "scale": [scale.n_train, scale.n_val, scale.n_test]},
            "test_list": None,
        },
    )

"""Label schema shared by every stage: ABAW codes, AU order, manifest and prediction columns.

Everything that names a label, a class order or a column lives here, once.
"""

from __future__ import annotations

# ABAW expression codes 0..7 (ABAW3 onwards).
EXPR_NAMES: tuple[str, ...] = (
    "neutral",
    "anger",
    "disgust",
    "fear",
    "happiness",
    "sadness",
    "surprise",
    "other",
)
EXPR_MISSING = -1

# The 12 ABAW action units, in the order of the annotation files.
AU_NUMBERS: tuple[int, ...] = (1, 2, 4, 6, 7, 10, 12, 15, 23, 24, 25, 26)
AU_COLUMNS: tuple[str, ...] = tuple(f"au{n}" for n in AU_NUMBERS)
AU_MISSING = -1

VA_COLUMNS: tuple[str, ...] = ("valence", "arousal")
VA_MISSING_SENTINEL = -5.0  # in annotation files; NaN in the manifest

SPLITS: tuple[str, ...] = ("train", "val", "test")
TASKS: tuple[str, ...] = ("va", "expr", "au")

# Manifest columns in order, with their dtypes (numpy/pandas names).
MANIFEST_DTYPES: dict[str, str] = {
    "image": "string",
    "video": "string",
    "frame": "int64",
    "split": "string",
    "has_image": "bool",
    "valence": "float32",
    "arousal": "float32",
    "expression": "int8",
    **{c: "int8" for c in AU_COLUMNS},
}
MANIFEST_COLUMNS: tuple[str, ...] = tuple(MANIFEST_DTYPES)

# Prediction columns each task writes (runs/<run>/preds/<task>/<candidate>.parquet),
# besides the `image` and `split` columns (and `row`, the manifest row index).
PRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "va": VA_COLUMNS,
    "expr": tuple(f"p_{name}" for name in EXPR_NAMES),
    "au": tuple(f"p_{c}" for c in AU_COLUMNS),
}

# Headers of the challenge files (see ../shared/specs/abaw-formats.md §1.6, §3.2, §3.5).
MTL_SUBMISSION_HEADER = "image,valence,arousal,expression,aus"
TASK_HEADERS: dict[str, str] = {
    "va": "valence,arousal",
    "expr": "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other",
    "au": ",".join(f"AU{n}" for n in AU_NUMBERS),
}

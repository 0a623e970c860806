"""Per-video outputs of `pipeline predict`: one CSV per video (`--per-video DIR`, like
OpenFace's FeatureExtraction) and one self-contained HTML page per video (`--plot DIR`):
valence/arousal over time, the expression strip, AU activations and a thumbnail of each
track (`face_id`). Files are named after the video (``clip.mp4`` -> ``clip.csv``,
``clip.html``; a second video with the same name gets ``clip_2``), written atomically."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from affectpipe.fsutil import write_text_atomic
from affectpipe.schema import AU_COLUMNS, EXPR_NAMES, VA_COLUMNS

Thumbnails = Mapping[tuple[str, int], Image.Image]  # (source, face_id) -> aligned crop


def _video_names(table: pd.DataFrame) -> dict[str, str]:
    """Each video source's output name (its stem, numbered where stems repeat)."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    if "frame" not in table:
        return names
    for source in table.loc[table["frame"] >= 0, "source"].unique():
        stem, k = Path(source).stem, 1
        name = stem
        while name in taken:
            k += 1
            name = f"{stem}_{k}"
        taken.add(name)
        names[source] = name
    return names


def write_per_video(table: pd.DataFrame, folder: Path) -> list[Path]:
    """One CSV per video: its rows (every column but `source`), by frame then face_id."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for source, name in _video_names(table).items():
        rows = table[table["source"] == source].sort_values(["frame", "face_id"], kind="stable")
        path = folder / f"{name}.csv"
        write_text_atomic(path, rows.drop(columns="source").to_csv(index=False))
        written.append(path)
    return written


def write_plots(table: pd.DataFrame, thumbnails: Thumbnails, folder: Path) -> list[Path]:
    """One HTML page per video (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for source, name in _video_names(table).items():
        rows = table[table["source"] == source]
        path = folder / f"{name}.html"
        write_text_atomic(path, _page(source, rows, thumbnails))
        written.append(path)
    return written


def _png(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _jpeg(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _page(source: str, rows: pd.DataFrame, thumbnails: Thumbnails) -> str:
    import matplotlib

    matplotlib.use("Agg")
    tracks = sorted(t for t in rows["face_id"].unique() if t >= 0)
    seen = rows[rows["face_ok"]]
    parts = [
        f"<h1>{html.escape(Path(source).name)}</h1>",
        f"<p>{html.escape(source)}: {rows['frame'].nunique()} frames, "
        f"{int(rows['face_ok'].sum())} face rows, {len(tracks)} tracks.</p>",
        "<h2>Tracks</h2><div>",
    ]
    for track in tracks:
        of_track = seen[seen["face_id"] == track]
        span = (
            f"frames {of_track['frame'].min()}-{of_track['frame'].max()}, {len(of_track)} rows"
            if len(of_track)
            else "no usable face"
        )
        image = thumbnails.get((source, int(track)))
        picture = (
            f'<img src="data:image/jpeg;base64,{_jpeg(image)}" width="112" height="112">'
            if image is not None
            else ""
        )
        parts.append(
            f'<figure style="display:inline-block">{picture}<figcaption>face_id '
            f"{track}: {span}</figcaption></figure>"
        )
    parts.append("</div>")
    for title, plot in (
        ("Valence and arousal", _va),
        ("Expression", _expression),
        ("Action units", _aus),
    ):
        encoded = plot(seen, tracks)
        if encoded is not None:
            parts.append(f'<h2>{title}</h2><img src="data:image/png;base64,{encoded}">')
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>'
        f"{html.escape(Path(source).name)}</title></head><body>\n{body}\n</body></html>\n"
    )


def _x(rows: pd.DataFrame) -> tuple[np.ndarray, str]:
    if rows["timestamp"].notna().all():
        return rows["timestamp"].to_numpy(), "seconds"
    return rows["frame"].to_numpy(), "frame"


def _va(rows: pd.DataFrame, tracks: list[int]) -> str | None:
    if not set(VA_COLUMNS) <= set(rows.columns) or rows.empty:
        return None
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(VA_COLUMNS), 1, figsize=(10, 4), sharex=True)
    for axis, column in zip(axes, VA_COLUMNS, strict=True):
        for track in tracks:
            of_track = rows[rows["face_id"] == track]
            x, unit = _x(of_track)
            axis.plot(x, of_track[column], label=f"face_id {track}")
        axis.set_ylim(-1.05, 1.05)
        axis.set_ylabel(column)
        axis.axhline(0, color="grey", lw=0.5)
    axes[0].legend(loc="upper right", fontsize="small")
    axes[-1].set_xlabel(unit)
    return _png(figure)


def _expression(rows: pd.DataFrame, tracks: list[int]) -> str | None:
    if "expression" not in rows or rows.empty:
        return None
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    colours = plt.get_cmap("tab10").colors[: len(EXPR_NAMES)]
    figure, axes = plt.subplots(
        len(tracks), 1, figsize=(10, 0.6 + 0.5 * len(tracks)), squeeze=False
    )
    for axis, track in zip(axes[:, 0], tracks, strict=True):
        of_track = rows[rows["face_id"] == track]
        x, unit = _x(of_track)
        codes = of_track["expression"].to_numpy()[None, :]
        extent = (x.min(), x.max() if x.max() > x.min() else x.min() + 1, 0, 1)
        axis.imshow(
            codes,
            aspect="auto",
            cmap=ListedColormap(colours),
            vmin=-0.5,
            vmax=len(EXPR_NAMES) - 0.5,
            extent=extent,
            interpolation="nearest",
        )
        axis.set_yticks([])
        axis.set_ylabel(f"face_id {track}", rotation=0, ha="right", va="center")
    axes[-1, 0].set_xlabel(unit)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours]
    figure.legend(
        handles,
        EXPR_NAMES,
        ncol=len(EXPR_NAMES),
        loc="upper center",
        fontsize="small",
        bbox_to_anchor=(0.5, 1.15),
    )
    return _png(figure)


def _aus(rows: pd.DataFrame, tracks: list[int]) -> str | None:
    columns = [c for c in (f"p_{a}" for a in AU_COLUMNS) if c in rows]
    if not columns or rows.empty:
        return None
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(tracks), 1, figsize=(10, 2.2 * len(tracks)), squeeze=False)
    for axis, track in zip(axes[:, 0], tracks, strict=True):
        of_track = rows[rows["face_id"] == track]
        x, unit = _x(of_track)
        extent = (x.min(), x.max() if x.max() > x.min() else x.min() + 1, len(columns), 0)
        shown = axis.imshow(
            of_track[columns].to_numpy().T,
            aspect="auto",
            vmin=0,
            vmax=1,
            cmap="viridis",
            extent=extent,
            interpolation="nearest",
        )
        axis.set_yticks(
            np.arange(len(columns)) + 0.5, [c[2:].upper() for c in columns], fontsize="small"
        )
        axis.set_title(f"face_id {track}: activation probability", fontsize="small")
        figure.colorbar(shown, ax=axis)
    axes[-1, 0].set_xlabel(unit)
    return _png(figure)

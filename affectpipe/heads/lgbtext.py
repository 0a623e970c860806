"""LightGBM text models from a head file, checked before LightGBM parses them.

LightGBM trusts its model text: a split feature past the input width reads outside its
arrays (a segfault), child indices that form a cycle never end a prediction. `checked_model`
parses the text here, checks every tree (a tree from the root: every node reached exactly
once; split features below the input width; finite leaf values and shrinkage, thresholds
not NaN; numerical splits only) and the header (objective and class count of the task),
and returns a canonical text rebuilt from the checked values alone. So nothing unchecked
(`tree_sizes` offsets, categorical tables, linear leaves, parameters) ever reaches
LightGBM, and the predictions are those of the original model.
"""

from __future__ import annotations

import math

# Objective and trees per iteration of each task's boosters (`LightGBMHead._jobs`).
TASK_OBJECTIVES = {"va": ("regression", 1), "expr": ("multiclass", 8), "au": ("binary", 1)}
MAX_LEAVES = 131072  # LightGBM's own limit on num_leaves
# decision_type: bit 0 categorical (never written by these heads), bit 1 default left,
# bits 2-3 missing type (0 none, 1 zero, 2 NaN).
_DECISION_TYPES = frozenset(left | (missing << 2) for left in (0, 2) for missing in (0, 1, 2))


class ModelTextError(ValueError):
    """A LightGBM model text that fails a check (the message says which)."""


def _ints(text: str, n: int, field: str) -> list[int]:
    parts = text.split()
    if len(parts) != n:
        raise ModelTextError(f"{field} has {len(parts)} values, expected {n}")
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ModelTextError(f"{field}: not integers") from None


def _floats(text: str, n: int, field: str, infinite: bool = False) -> list[float]:
    parts = text.split()
    if len(parts) != n:
        raise ModelTextError(f"{field} has {len(parts)} values, expected {n}")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ModelTextError(f"{field}: not numbers") from None
    if not all(math.isfinite(v) or (infinite and not math.isnan(v)) for v in values):
        raise ModelTextError(f"{field}: not finite")
    return values


def _key_values(lines: list[str]) -> dict[str, str]:
    pairs = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            pairs[key.strip()] = value.strip()
    return pairs


def _check_reachable(left: list[int], right: list[int], n_leaves: int) -> None:
    """Every internal node and leaf reached exactly once from the root: a tree, no cycle."""
    seen_nodes, seen_leaves = [False] * (n_leaves - 1), [False] * n_leaves
    stack = [0]
    seen_nodes[0] = True
    while stack:
        node = stack.pop()
        for child in (left[node], right[node]):
            if child >= 0:
                if child >= n_leaves - 1 or seen_nodes[child]:
                    raise ModelTextError(f"node {node} has child {child}: not a tree")
                seen_nodes[child] = True
                stack.append(child)
            else:
                leaf = ~child
                if leaf >= n_leaves or seen_leaves[leaf]:
                    raise ModelTextError(f"node {node} has leaf {leaf}: not a tree")
                seen_leaves[leaf] = True
    if not all(seen_nodes) or not all(seen_leaves):
        raise ModelTextError("nodes or leaves unreachable from the root: not a tree")


def _tree(block: list[str], width: int) -> list[str]:
    """One checked tree, as canonical text lines."""
    kv = _key_values(block)
    try:
        n = int(kv.get("num_leaves", ""))
    except ValueError:
        raise ModelTextError("num_leaves missing or not an integer") from None
    if not 1 <= n <= MAX_LEAVES:
        raise ModelTextError(f"num_leaves {n} outside 1..{MAX_LEAVES}")
    if kv.get("num_cat", "0") != "0" or kv.get("is_linear", "0") != "0":
        raise ModelTextError("categorical splits or linear leaves (never written by affectpipe)")
    shrinkage = _floats(kv.get("shrinkage", "1"), 1, "shrinkage")[0]
    leaves = _floats(kv.get("leaf_value", ""), n, "leaf_value")
    lines = [f"num_leaves={n}", "num_cat=0"]
    if n > 1:
        features = _ints(kv.get("split_feature", ""), n - 1, "split_feature")
        if any(not 0 <= f < width for f in features):
            raise ModelTextError(f"a split feature is outside the input's 0..{width - 1}")
        # LightGBM writes inf for a split that only sends missing values one way.
        thresholds = _floats(kv.get("threshold", ""), n - 1, "threshold", infinite=True)
        decisions = _ints(kv.get("decision_type", ""), n - 1, "decision_type")
        if any(d not in _DECISION_TYPES for d in decisions):
            raise ModelTextError("decision_type: only numerical splits are allowed")
        left = _ints(kv.get("left_child", ""), n - 1, "left_child")
        right = _ints(kv.get("right_child", ""), n - 1, "right_child")
        _check_reachable(left, right, n)
        lines += [
            "split_feature=" + " ".join(map(str, features)),
            "threshold=" + " ".join(map(repr, thresholds)),
            "decision_type=" + " ".join(map(str, decisions)),
            "left_child=" + " ".join(map(str, left)),
            "right_child=" + " ".join(map(str, right)),
        ]
    lines += [
        "leaf_value=" + " ".join(map(repr, leaves)),
        "is_linear=0",
        f"shrinkage={shrinkage!r}",
    ]
    return lines


def _objective(text: str, task: str) -> str:
    name, n_trees = TASK_OBJECTIVES[task]
    tokens = text.split()
    if not tokens or tokens[0] != name:
        raise ModelTextError(f"objective {text!r}: a {task} head's boosters are {name}")
    options = dict(t.partition(":")[::2] for t in tokens[1:])
    if name == "multiclass" and options.get("num_class") != str(n_trees):
        raise ModelTextError(f"objective {text!r}: expected num_class:{n_trees}")
    if name == "binary":
        sigmoid = _floats(options.get("sigmoid", "1"), 1, "objective sigmoid")[0]
        if not 0 < sigmoid <= 100:
            raise ModelTextError(f"objective {text!r}: sigmoid outside (0, 100]")
        return f"binary sigmoid:{sigmoid!r}"
    return f"multiclass num_class:{n_trees}" if name == "multiclass" else name


def checked_model(text: str, width: int, task: str) -> str:
    """`text` (LightGBM's model_to_string) checked for an input of `width` columns and a
    booster of `task`; its canonical text. Raises ModelTextError saying what is wrong."""
    if not isinstance(text, str):
        raise ModelTextError(f"a booster is a {type(text).__name__}, not model text")
    lines = text.split("\n")
    if not lines or lines[0].strip() != "tree":
        raise ModelTextError("does not start with 'tree'")
    starts = [i for i, line in enumerate(lines) if line.startswith("Tree=")]
    end = next((i for i, line in enumerate(lines) if line.strip() == "end of trees"), None)
    if not starts or end is None or end < starts[-1]:
        raise ModelTextError("no trees, or no 'end of trees'")
    header = _key_values(lines[: starts[0]])
    if "average_output" in header:
        raise ModelTextError("random-forest averaging (never written by affectpipe)")
    _, n_trees = TASK_OBJECTIVES[task]
    for key, wanted in (
        ("num_class", n_trees),
        ("num_tree_per_iteration", n_trees),
        ("max_feature_idx", width - 1),
    ):
        if header.get(key) != str(wanted):
            raise ModelTextError(f"{key} is {header.get(key)!r}, expected {wanted}")
    if len(starts) % n_trees:
        raise ModelTextError(f"{len(starts)} trees: not a multiple of {n_trees} per round")
    out = [
        "tree",
        "version=v4",
        f"num_class={n_trees}",
        f"num_tree_per_iteration={n_trees}",
        "label_index=0",
        f"max_feature_idx={width - 1}",
        "objective=" + _objective(header.get("objective", ""), task),
        "feature_names=" + " ".join(f"Column_{i}" for i in range(width)),
        "feature_infos=" + " ".join(["none"] * width),
        "",
    ]
    for k, (start, stop) in enumerate(zip(starts, [*starts[1:], end], strict=True)):
        if lines[start].strip() != f"Tree={k}":
            raise ModelTextError(f"tree {k} is labelled {lines[start].strip()!r}")
        try:
            out += [f"Tree={k}", *_tree(lines[start + 1 : stop], width), "", ""]
        except ModelTextError as exc:
            raise ModelTextError(f"tree {k}: {exc}") from None
    out += ["end of trees", "", "pandas_categorical:null", ""]
    return "\n".join(out)

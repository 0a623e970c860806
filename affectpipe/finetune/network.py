"""The network a fine-tuning run trains, and the layout of its task outputs.

`FinetuneNet` wraps a registered backbone's own module (built by its `BackboneSpec`: there is
no second definition of any network) with one linear layer over all task outputs. It keeps
the backbone contract, ``x -> (embedding, logits)``: the embedding is the backbone's own
(pool ``embedding``) or the global + attention pooling of its last feature map (pool
``attention``), and the logits are the task outputs in `OutputLayout` order, raw (VA before
tanh, EXPR and AU before softmax / sigmoid). So a fine-tuned variant extracts like any
backbone, and its task outputs become a ``logits`` feature part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from affectpipe.errors import InputError
from affectpipe.heads.attention import AttentionPool, map_tokens
from affectpipe.schema import AU_COLUMNS, EXPR_NAMES, VA_COLUMNS
from affectpipe.tasks import get_task

# The raw output names of each task, in the order the prediction columns use.
OUTPUT_NAMES: dict[str, tuple[str, ...]] = {
    "va": VA_COLUMNS,
    "expr": EXPR_NAMES,
    "au": AU_COLUMNS,
}


@dataclass(frozen=True)
class OutputLayout:
    """Which tasks a variant predicts, in which order: ``logits[:, slices[task]]``."""

    tasks: tuple[str, ...]

    @property
    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for task in self.tasks:
            width = get_task(task).n_outputs
            out[task] = slice(start, start + width)
            start += width
        return out

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for task in self.tasks for name in OUTPUT_NAMES[task])

    @property
    def abaw_expr_index(self) -> tuple[int, ...] | None:
        """Logit columns of ABAW expression codes 0..7 (None without an EXPR output)."""
        if "expr" not in self.tasks:
            return None
        start = self.slices["expr"].start
        return tuple(range(start, start + len(EXPR_NAMES)))


class FinetuneNet(nn.Module):
    """A backbone's module + pooling + one linear layer of task outputs."""

    def __init__(self, backbone: nn.Module, n_outputs: int, pool: str, channels: int):
        super().__init__()
        self.backbone = backbone
        self.attention = AttentionPool(channels) if pool == "attention" else None
        self.head = nn.Linear(2 * channels if self.attention else channels, n_outputs)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map (a variant's `spatial` part pools it)."""
        return self.backbone.feature_map(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.attention is None:
            embedding, _ = self.backbone(x)
        else:
            embedding = self.attention(map_tokens(self.feature_map(x)))
        return embedding, self.head(embedding)

    def new_parameters(self) -> list[nn.Parameter]:
        """The layers the backbone did not have (they learn at the recipe's head_lr)."""
        return [p for name, p in self.named_parameters() if not name.startswith("backbone.")]


def channels_of(spec: Any, module: nn.Module, pool: str) -> int:
    """Width of what feeds the task layer before pooling: the embedding, or the channels of
    the last feature map (found with one forward of a blank image)."""
    if pool != "attention":
        return int(spec.embedding_dim)
    if not hasattr(module, "feature_map"):
        raise InputError(f"backbone {spec.name} exposes no feature map: use pool = 'embedding'")
    size = spec.input_size
    blank = spec.normalize(torch.zeros(1, size, size, 3, dtype=torch.uint8))
    was_training = module.training
    with torch.no_grad():
        module.eval()
        width = int(module.feature_map(blank).shape[1])
    module.train(was_training)
    return width


def build_network(
    spec: Any, layout: OutputLayout, pool: str, channels: int, backbone: nn.Module | None = None
) -> FinetuneNet:
    """`spec`'s module (`backbone`, or a fresh random one) with `layout`'s task outputs."""
    module = backbone if backbone is not None else spec.builder()
    return FinetuneNet(module, len(layout.names), pool, channels)

"""Global + attention pooling over the tokens of a spatial feature map (seed 003's module).

`AttentionPool` maps tokens ``[N, T, C]`` (the cells of a backbone's last feature map) to
``[N, 2C]``: their mean (the global view) beside an attention-weighted sum (the local view:
a small additive-attention MLP scores each token, softmax over the tokens). Fine-tuning uses
it on the live feature map (`affectpipe.finetune.network`, recipe ``attention-au``); the
`attention` head model uses it on the cached ``spatial`` part of a feature file, so the
attention gain can be had at heads speed without training the network.
"""

from __future__ import annotations

import torch
from torch import nn


class AttentionPool(nn.Module):
    """Tokens [N, T, C] -> [N, 2C]: mean over tokens, then the attention-weighted sum."""

    def __init__(self, channels: int, hidden: int = 128):
        super().__init__()
        self.channels = channels
        self.proj = nn.Linear(channels, hidden)
        self.score = nn.Linear(hidden, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.score(torch.tanh(self.proj(tokens))), dim=1)  # [N, T, 1]
        return torch.cat([tokens.mean(dim=1), (weights * tokens).sum(dim=1)], dim=1)


def map_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """A feature map [N, C, H, W] as tokens [N, H*W, C]."""
    return feature_map.flatten(2).transpose(1, 2)

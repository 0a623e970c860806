"""Task losses (PyTorch), shared by the linear and MLP heads.

va: 1 - mean batch CCC of valence and arousal; expr: class-weighted cross-entropy, focal
when gamma > 0; au: BCE with per-AU positive weights, missing (-1) entries masked out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean over columns of the batch CCC (population statistics)."""
    pred_mean, target_mean = pred.mean(0), target.mean(0)
    pred_c, target_c = pred - pred_mean, target - target_mean
    cov = (pred_c * target_c).mean(0)
    denom = pred_c.pow(2).mean(0) + target_c.pow(2).mean(0) + (pred_mean - target_mean).pow(2)
    return 1.0 - (2.0 * cov / denom.clamp_min(1e-8)).mean()


def expr_loss(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, gamma: float = 0.0
) -> torch.Tensor:
    """Class-weighted cross-entropy (weighted mean over the batch); focal when gamma > 0."""
    log_p = F.log_softmax(logits, dim=1).gather(1, target[:, None]).squeeze(1)
    w = weights[target]
    if gamma > 0:
        w = w * (1.0 - log_p.exp()).pow(gamma)
    return -(w * log_p).sum() / weights[target].sum().clamp_min(1e-8)


def au_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """BCE with positive weights, averaged over the labelled (target >= 0) entries only."""
    mask = (target >= 0).to(logits.dtype)
    per_entry = F.binary_cross_entropy_with_logits(
        logits, target.clamp_min(0).to(logits.dtype), pos_weight=pos_weight, reduction="none"
    )
    return (per_entry * mask).sum() / mask.sum().clamp_min(1.0)

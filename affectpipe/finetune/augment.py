"""Batched augmentation of aligned face crops on the training device.

Input and output are the backbone's resized pixels, ``[N, S, S, 3]`` with values in
0..255 (uint8 in, float out), so the backbone's own `normalize` follows unchanged. Every
random draw comes from the `generator` passed in (on the CPU, a few numbers per image),
which the trainer seeds from the run seed and the step: a resumed run redraws exactly
what the interrupted one would have.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from affectpipe.finetune.recipes import Augment


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def augment(pixels: torch.Tensor, settings: Augment, generator: torch.Generator) -> torch.Tensor:
    """Randomly flipped, rotated, zoomed, shifted, brightness/contrast-jittered and
    partly erased copies of `pixels` (uint8 or float ``[N, S, S, 3]``), float 0..255."""
    n, size = pixels.shape[0], pixels.shape[1]
    device = pixels.device
    x = pixels.permute(0, 3, 1, 2).to(torch.float32)

    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    if not settings.flip:
        flip = torch.ones(n)
    angle = _uniform(n, -settings.rotate, settings.rotate, generator) * (math.pi / 180)
    zoom = _uniform(n, 1 - settings.scale, 1 + settings.scale, generator)
    shift = _uniform(2 * n, -settings.shift, settings.shift, generator).view(n, 2) * 2
    # affine_grid maps output coordinates to input ones: inverse zoom, rotation, then flip.
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, shift[:, 0]], dim=1),
            torch.stack([sin * flip, cos, shift[:, 1]], dim=1),
        ],
        dim=1,
    ).to(device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    brightness = _uniform(n, 1 - settings.brightness, 1 + settings.brightness, generator)
    contrast = _uniform(n, 1 - settings.contrast, 1 + settings.contrast, generator)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast.to(device).view(n, 1, 1, 1) + mean
    x = x * brightness.to(device).view(n, 1, 1, 1)

    erase = torch.rand(n, generator=generator) < settings.erase
    area = _uniform(n, 0.02, 0.2, generator)
    aspect = torch.exp(_uniform(n, math.log(0.3), math.log(3.3), generator))
    height = (torch.sqrt(area * aspect) * size).clamp(1, size).long()
    width = (torch.sqrt(area / aspect) * size).clamp(1, size).long()
    top = (torch.rand(n, generator=generator) * (size - height + 1)).long()
    left = (torch.rand(n, generator=generator) * (size - width + 1)).long()
    fill = x.mean(dim=(2, 3), keepdim=True)
    rows = torch.arange(size)
    for i in torch.nonzero(erase).flatten().tolist():
        inside = (rows >= top[i]) & (rows < top[i] + height[i])
        across = (rows >= left[i]) & (rows < left[i] + width[i])
        mask = (inside[:, None] & across[None, :]).to(device)
        x[i] = torch.where(mask, fill[i], x[i])
    return x.clamp(0, 255).permute(0, 2, 3, 1)

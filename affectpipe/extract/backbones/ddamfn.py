"""DDAMFN++ (AffectNet-8): MixedFeatureNet trunk + dual-direction attention heads.

Re-implemented from the architecture description in the shared fixtures; attribute names
follow the official state_dict keys (``features.<i>``, ``cat_head<i>.CoordAtt``, ``Linear``,
``fc``, ``bn``) so the official checkpoint loads strictly, unused modules included.

Two details keep the outputs bit-identical to the official code: the trunk's coordinate
attention pools with adaptive average pooling (``Tensor.mean`` sums in another order), and
h_swish divides before it multiplies, ``x * (relu6(x + 3) / 6)``.

The model returns ``(embedding, logits)``: the 512-d GDConv output that feeds ``fc`` (the
official forward does not return it) and the 8 logits in AffectNet order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from affectpipe.extract.backbones import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec
from affectpipe.extract.weights import load_strict

# AffectNet's native expression ids 0..7.
AFFECTNET_CLASSES_8 = (
    "neutral",
    "happy",
    "sad",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
)
# logits[:, index] gives ABAW codes 0..7; Contempt stands in for ABAW's Other.
AFFECTNET_TO_ABAW = (0, 6, 5, 4, 1, 2, 3, 7)
INPUT_SIZE = 112  # fixed: the 7x7 kernels of the heads and of GDConv expect a 7x7 map
EMBEDDING_DIM = 512


def h_swish(x: torch.Tensor) -> torch.Tensor:
    # Divide before multiplying, as the official code does: the rounding then matches exactly.
    return x * (F.relu6(x + 3) / 6)


class ConvBN(nn.Module):
    """Bias-free conv + BatchNorm (official `Linear_block`)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | tuple[int, int] = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class ConvBNPReLU(ConvBN):
    """Bias-free conv + BatchNorm + per-channel PReLU (official `Conv_block`)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int | tuple[int, int] = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ):
        super().__init__(cin, cout, kernel, stride, padding, groups)
        self.prelu = nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class MixedDepthwiseConv(nn.Module):
    """Depthwise convs with different kernels on consecutive channel chunks (`MDConv`).

    `bn` and `prelu` exist in the official module (and its checkpoints) but forward never
    uses them.
    """

    def __init__(self, channels: int, kernels: Sequence[int], split: Sequence[int], stride: int):
        super().__init__()
        if sum(split) != channels or len(split) != len(kernels):
            raise ValueError(f"split {split} does not match {channels} channels / {kernels}")
        self.split = tuple(split)
        self.mixed_depthwise_conv = nn.ModuleList(
            nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False)
            for c, k in zip(split, kernels, strict=True)
        )
        self.bn = nn.BatchNorm2d(channels)
        self.prelu = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(x, self.split, dim=1)
        return torch.cat(
            [conv(chunk) for conv, chunk in zip(self.mixed_depthwise_conv, chunks, strict=True)],
            dim=1,
        )


class CoordAttention(nn.Module):
    """Shared tail of both coordinate attentions: pooled rows and columns -> two gates."""

    def add_gate_layers(self, channels: int) -> None:
        # Called by subclasses at the point where the official key order has these layers.
        mip = max(8, channels // 32)
        self.conv1 = nn.Conv2d(channels, mip, 1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.conv2 = nn.Conv2d(mip, channels, 1)
        self.conv3 = nn.Conv2d(mip, channels, 1)

    def gates(
        self, pooled_h: torch.Tensor, pooled_w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """pooled_h (N,C,H,1), pooled_w (N,C,W,1) -> a_w (N,C,1,W), a_h (N,C,H,1)."""
        height = pooled_h.shape[2]
        z = h_swish(self.bn1(self.conv1(torch.cat([pooled_h, pooled_w], dim=2))))
        z_h, z_w = z[:, :, :height], z[:, :, height:]
        a_h = torch.sigmoid(self.conv2(z_h))
        a_w = torch.sigmoid(self.conv3(z_w.permute(0, 1, 3, 2)))
        return a_w, a_h


class PooledCoordAttention(CoordAttention):
    """Trunk attention: average-pool along each axis, gate the input (official `CoordAtt`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.add_gate_layers(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2], x.shape[3]
        pooled_h = F.adaptive_avg_pool2d(x, (height, 1))
        pooled_w = F.adaptive_avg_pool2d(x, (1, width)).permute(0, 1, 3, 2)
        a_w, a_h = self.gates(pooled_h, pooled_w)
        return x * a_w * a_h


class DirectionalAttention(CoordAttention):
    """One DDA head: learned depthwise pooling along each axis -> attention map in (0, 1).

    `Linear` (a 7x7 depthwise ConvBN) is registered as in the official module but unused.
    """

    def __init__(self, channels: int = EMBEDDING_DIM, size: int = 7):
        super().__init__()
        self.Linear_h = ConvBN(channels, channels, (1, size), groups=channels)
        self.Linear_w = ConvBN(channels, channels, (size, 1), groups=channels)
        self.add_gate_layers(channels)
        self.Linear = ConvBN(channels, channels, size, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled_w = self.Linear_w(x).permute(0, 1, 3, 2)
        a_w, a_h = self.gates(self.Linear_h(x), pooled_w)
        return a_w * a_h


class AttentionHead(nn.Module):
    """Wrapper that gives the head's keys their official `cat_head<i>.CoordAtt.` prefix."""

    def __init__(self):
        super().__init__()
        self.CoordAtt = DirectionalAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.CoordAtt(x)


class MixBlock(nn.Module):
    """Expand 1x1 -> mixed depthwise -> coordinate attention -> project 1x1 (`Mix_Depth_Wise`)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        expanded: int,
        stride: int,
        kernels: Sequence[int],
        split: Sequence[int],
        residual: bool,
    ):
        super().__init__()
        self.conv = ConvBNPReLU(cin, expanded)
        self.conv_dw = MixedDepthwiseConv(expanded, kernels, split, stride)
        self.CA = PooledCoordAttention(expanded)
        self.project = ConvBN(expanded, cout)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.CA(self.conv_dw(self.conv(x))))
        return x + out if self.residual else out


class MixStage(nn.Module):
    """`count` residual MixBlocks; the official keys have a `model.` level (`Residual`)."""

    def __init__(
        self,
        channels: int,
        count: int,
        expanded: int,
        kernels: Sequence[int],
        split: Sequence[int],
    ):
        super().__init__()
        self.model = nn.Sequential(
            *(MixBlock(channels, channels, expanded, 1, kernels, split, True) for _ in range(count))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def mixed_feature_trunk() -> nn.Sequential:
    """MixedFeatureNet up to `conv_6_sep`: (N, 3, 112, 112) -> (N, 512, 7, 7)."""
    return nn.Sequential(
        ConvBNPReLU(3, 64, 3, 2, 1),
        ConvBNPReLU(64, 64, 3, 1, 1, groups=64),
        MixBlock(64, 64, 128, 2, (3, 5, 7), (64, 32, 32), residual=False),
        MixStage(64, 9, 128, (3, 5), (96, 32)),
        MixBlock(64, 128, 256, 2, (3, 5, 7), (128, 64, 64), residual=False),
        MixStage(128, 16, 256, (3, 5), (192, 64)),
        MixBlock(128, 256, 1024, 2, (3, 5, 7, 9), (256, 256, 256, 256), residual=False),
        MixStage(256, 6, 512, (3, 5, 7), (172, 170, 170)),
        ConvBNPReLU(256, EMBEDDING_DIM),
    )


class DDAMFN(nn.Module):
    """DDAMNet: trunk, `num_heads` attention heads fused by max, GDConv, linear classifier."""

    def __init__(self, num_classes: int = 8, num_heads: int = 2):
        super().__init__()
        self.num_heads = num_heads
        self.features = mixed_feature_trunk()
        for i in range(num_heads):
            setattr(self, f"cat_head{i}", AttentionHead())
        self.Linear = ConvBN(EMBEDDING_DIM, EMBEDDING_DIM, 7, groups=EMBEDDING_DIM)
        self.fc = nn.Linear(EMBEDDING_DIM, num_classes)
        self.bn = nn.BatchNorm1d(num_classes)  # in the official checkpoints, unused in forward

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's last map (N, 512, 7, 7), before the attention heads."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        trunk = self.features(x)
        attention = self.cat_head0(trunk)
        for i in range(1, self.num_heads):
            attention = torch.max(attention, getattr(self, f"cat_head{i}")(trunk))
        embedding = self.Linear(trunk * attention).flatten(1)
        return embedding, self.fc(embedding)


def load_ddamfn(path: Path) -> DDAMFN:
    """DDAMFN with the weights of an official checkpoint (`model_state_dict`) or a state_dict."""
    return load_strict(DDAMFN(), path, "a DDAMFN AffectNet-8 checkpoint")


SPEC = BackboneSpec(
    name="ddamfn",
    input_size=INPUT_SIZE,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    embedding_dim=EMBEDDING_DIM,
    logit_names=AFFECTNET_CLASSES_8,
    abaw_expr_index=AFFECTNET_TO_ABAW,
    builder=DDAMFN,
    loader=load_ddamfn,
    description="DDAMFN++ trained on AffectNet-8 (logits in AffectNet order)",
)

"""DAN ("Distract Your Attention", AffectNet-8): ResNet-18 trunk + 4 cross-attention heads.

Re-implemented from the architecture description in the shared fixtures; attribute names
follow the official state_dict keys (``features.<i>``, ``cat_head<i>.sa`` / ``.ca``, ``fc``,
``bn``) so the official checkpoint loads strictly.

Each head re-weights the trunk map by an unnormalised spatial map (a channel sum), pools it
and gates the channels; the 4 head vectors go through a log-softmax across heads and are
summed. That sum feeds the classifier and is the embedding; the logits come after the final
BatchNorm1d. The spatial branches are added as ``(3x3 + 1x3) + 3x1``: the official order,
which matters for bit-exact results because the map is large.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from affectpipe.extract.backbones import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec
from affectpipe.extract.backbones.ddamfn import AFFECTNET_CLASSES_8, AFFECTNET_TO_ABAW
from affectpipe.extract.weights import load_strict

INPUT_SIZE = 224
EMBEDDING_DIM = 512
NUM_HEADS = 4


class BasicBlock(nn.Module):
    """ResNet basic block; `downsample` (1x1 conv + BN) where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


def resnet18_trunk() -> nn.Sequential:
    """ResNet-18 without pooling and fc: (N, 3, 224, 224) -> (N, 512, 7, 7)."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
        cin = cout
    return nn.Sequential(*layers)


def conv_bn(cin: int, cout: int, kernel: int | tuple[int, int], padding) -> nn.Sequential:
    """Conv with bias + BatchNorm, no activation (keys ``<name>.0.*`` and ``<name>.1.*``)."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=padding), nn.BatchNorm2d(cout))


class SpatialAttention(nn.Module):
    """Multiply the map by the channel sum of ReLU(3x3 + 1x3 + 3x1 branches) of a 1x1 squeeze."""

    def __init__(self, channels: int = EMBEDDING_DIM):
        super().__init__()
        self.conv1x1 = conv_bn(channels, channels // 2, 1, 0)
        self.conv_3x3 = conv_bn(channels // 2, channels, 3, 1)
        self.conv_1x3 = conv_bn(channels // 2, channels, (1, 3), (0, 1))
        self.conv_3x1 = conv_bn(channels // 2, channels, (3, 1), (1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = self.conv1x1(x)
        branches = (self.conv_3x3(squeezed) + self.conv_1x3(squeezed)) + self.conv_3x1(squeezed)
        return x * F.relu(branches).sum(dim=1, keepdim=True)


class ChannelAttention(nn.Module):
    """Pool the map, then gate its channels with a 512-32-512 sigmoid bottleneck."""

    def __init__(self, channels: int = EMBEDDING_DIM, hidden: int = 32):
        super().__init__()
        self.attention = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return pooled * self.attention(pooled)


class CrossAttentionHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.sa = SpatialAttention()
        self.ca = ChannelAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ca(self.sa(x))


class DAN(nn.Module):
    """(N, 3, 224, 224) -> (embedding (N, 512), logits (N, num_classes) after the final BN)."""

    def __init__(self, num_classes: int = 8, num_heads: int = NUM_HEADS):
        super().__init__()
        if num_heads < 2:
            raise ValueError("DAN fuses its heads with a softmax across them: use >= 2 heads")
        self.num_heads = num_heads
        self.features = resnet18_trunk()
        for i in range(num_heads):
            setattr(self, f"cat_head{i}", CrossAttentionHead())
        self.fc = nn.Linear(EMBEDDING_DIM, num_classes)
        self.bn = nn.BatchNorm1d(num_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The ResNet-18 trunk's last map (N, 512, 7, 7), before the attention heads."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        trunk = self.features(x)
        heads = torch.stack(
            [getattr(self, f"cat_head{i}")(trunk) for i in range(self.num_heads)], dim=1
        )
        embedding = F.log_softmax(heads, dim=1).sum(dim=1)
        return embedding, self.bn(self.fc(embedding))


def load_dan(path: Path) -> DAN:
    """DAN with the weights of an official checkpoint (`model_state_dict`) or a state_dict."""
    return load_strict(DAN(), path, "a DAN AffectNet-8 checkpoint")


SPEC = BackboneSpec(
    name="dan",
    input_size=INPUT_SIZE,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    embedding_dim=EMBEDDING_DIM,
    logit_names=AFFECTNET_CLASSES_8,
    abaw_expr_index=AFFECTNET_TO_ABAW,
    builder=DAN,
    loader=load_dan,
    description="DAN (4 cross-attention heads) trained on AffectNet-8 (AffectNet order)",
)

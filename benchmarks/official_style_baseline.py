"""Time the official code paths' computation on this machine, for docs/benchmarks.md.

The official packages cannot be installed here (their weights download at import/run time and
the pickled MT-EmotiEffNet breaks under timm 1.x), so this reproduces what they compute, step
for step: per-image PIL -> Resize -> ToTensor -> Normalize, `torch.stack`, an eager forward
with autograd left on (as EmotiEffLib's `extract_features` and DDAMFN's test script run), and
for MT-EmotiEffNet the numpy classifier. Usage:

    python benchmarks/official_style_baseline.py IMAGES_DIR [--repeat 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from affectpipe.extract.backbones import get_backbone

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def official_module(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode with trainable parameters: the official code leaves autograd on."""
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model.eval()


def emotieffnet_official(files: list[Path], batch: int = 32) -> float:
    spec = get_backbone("mt-emotieffnet")
    body = official_module(spec.build()).net  # the timm model; weight values don't change speed
    tf = transforms.Compose(
        [transforms.Resize((224, 224)), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )
    w = np.random.default_rng(0).standard_normal((10, 1280)).astype(np.float32)
    start = time.perf_counter()
    for i in range(0, len(files), batch):
        faces = [np.asarray(Image.open(f).convert("RGB")) for f in files[i : i + batch]]
        x = torch.stack([tf(Image.fromarray(face)) for face in faces])
        features = body.forward_head(body.forward_features(x), pre_logits=True)
        _ = features.data.cpu().numpy() @ w.T
    return len(files) / (time.perf_counter() - start)


def ddamfn_official(files: list[Path], batch: int = 64) -> float:
    spec = get_backbone("ddamfn")
    net = official_module(spec.build())
    tf = transforms.Compose(
        [transforms.Resize((112, 112)), transforms.ToTensor(), transforms.Normalize(MEAN, STD)]
    )
    start = time.perf_counter()
    for i in range(0, len(files), batch):
        x = torch.stack([tf(Image.open(f).convert("RGB")) for f in files[i : i + batch]])
        _ = net(x)
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("images", type=Path)
    parser.add_argument("--repeat", type=int, default=4)
    args = parser.parse_args()
    files = sorted(args.images.glob("*.jpg")) * args.repeat
    torch.set_num_threads(2)
    print(f"torch threads {torch.get_num_threads()}, {len(files)} images")
    print(f"mt-emotieffnet official-style: {emotieffnet_official(files):.1f} images/s")
    print(f"ddamfn official-style: {ddamfn_official(files):.1f} images/s")


if __name__ == "__main__":
    main()

"""What share of this CPU's compute the CNN backbones use, for docs/benchmarks.md.

Measures the machine's fp32 matmul peak (a large torch matmul at torch's thread count),
counts each backbone's forward FLOPs per image once (`torch.utils.flop_counter`: convolutions
and matrix products, a multiply-add counted as 2), and, given the JSON of `pipeline bench
extract --json`, prints each row's achieved GFLOP/s (FLOPs per image x images/s) and its share
of the peak. Usage:

    python benchmarks/cnn_flops.py [--bench bench.json] [--size 2048] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from affectpipe.extract import build_model
from affectpipe.extract.backbones import backbone_names, get_backbone
from affectpipe.extract.engine import probe_batch


def matmul_peak(size: int, seconds: float) -> float:
    """GFLOP/s of an fp32 ``size x size`` matmul, repeated for about `seconds`."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    torch.matmul(a, b, out=out)  # warm-up
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        torch.matmul(a, b, out=out)
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - started) / 1e9


def forward_gflop(name: str) -> float:
    """GFLOP of one image's forward pass (random init: the count does not depend on values)."""
    spec = get_backbone(name)
    model = build_model(spec, None)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(probe_batch(spec, 1))
    return counter.get_total_flops() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, help="JSON of `pipeline bench extract --json`")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    peak = matmul_peak(args.size, args.seconds)
    load = os.getloadavg()[0]
    print(f"fp32 matmul {args.size}x{args.size}, {threads} torch threads: {peak:.1f} GFLOP/s "
          f"(load average {load:.1f})")  # fmt: skip
    flops = {name: forward_gflop(name) for name in backbone_names()}
    print("\n| backbone | GFLOP per image |\n|---|---|")
    for name, gflop in flops.items():
        print(f"| {name} | {gflop:.3f} |")
    if args.bench is None:
        return
    rows = json.loads(args.bench.read_text())["rows"]
    print("\n| backbone | runtime | whole path img/s | achieved GFLOP/s | share of peak "
          "| forward only img/s | achieved GFLOP/s | share of peak |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        gflop = flops.get(row["backbone"])
        if gflop is None:
            continue  # a descriptor: no convolutions to count
        whole, forward = row["whole_path_images_per_s"], row["forward_images_per_s"]
        print(f"| {row['backbone']} | {row['runtime']} | {whole:.1f} | {whole * gflop:.1f} "
              f"| {whole * gflop / peak:.0%} | {forward:.1f} | {forward * gflop:.1f} "
              f"| {forward * gflop / peak:.0%} |")  # fmt: skip


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""EfficientViT backbone latency: the exact fused path (``fuse()``, the seed's arithmetic) against the fast path
(``fuse(fast=True)``), timed interleaved in the same process so machine load affects both alike.

    python benchmarks/backbone_speed.py --variants m0 m5 --batch 1 8 --imgsz 640 --runs 20

Prints one Markdown row per (variant, batch): medians in ms, the median of per-run ratios exact/fast, and the largest
relative output difference between the two paths (float32, weights from the default init with BN statistics
perturbed so no branch is trivially zero).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models import efficientvit as ev  # noqa: E402


def _perturb_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine terms (freshly built BNs are identity-like and zero some branches)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.4 + 0.1 * torch.randn(n, generator=g))
                m.bias.copy_(0.05 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.05 * torch.randn(n, generator=g))
                m.running_var.copy_(0.75 + 0.5 * torch.rand(n, generator=g))


def _time(model: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.inference_mode():
        t = time.perf_counter()
        model(x)
        return time.perf_counter() - t


def bench(variant: str, batch: int, imgsz: int, runs: int) -> dict:
    """Median latencies (ms) of both paths, median ratio exact/fast and max relative output difference."""
    base = getattr(ev, f'EfficientViT_{variant.upper()}')().eval()
    _perturb_bn(base)
    exact, fast = copy.deepcopy(base).fuse(), copy.deepcopy(base).fuse(fast=True)
    x = torch.randn(batch, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        diff = max(((a - b).abs().max() / a.abs().max()).item() for a, b in zip(exact(x), fast(x)))
    for _ in range(2):
        _time(exact, x), _time(fast, x)
    te, tf = [], []
    for _ in range(runs):
        te.append(_time(exact, x))
        tf.append(_time(fast, x))
    ratio = statistics.median(a / b for a, b in zip(te, tf))
    return dict(exact=statistics.median(te) * 1e3, fast=statistics.median(tf) * 1e3, ratio=ratio, diff=diff)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--variants', nargs='+', default=['m0', 'm5'], choices=sorted(ev.VARIANTS))
    ap.add_argument('--batch', nargs='+', type=int, default=[1])
    ap.add_argument('--imgsz', type=int, default=640)
    ap.add_argument('--runs', type=int, default=20)
    ap.add_argument('--threads', type=int, default=0, help='torch threads (0: leave the default)')
    opt = ap.parse_args()
    if opt.threads:
        torch.set_num_threads(opt.threads)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, {opt.imgsz}x{opt.imgsz}, {opt.runs} runs\n')
    print('| variant | batch | exact fused (ms) | fast (ms) | speed-up exact/fast | max rel. diff |')
    print('|---|---|---|---|---|---|')
    for v in opt.variants:
        for b in opt.batch:
            r = bench(v, b, opt.imgsz, opt.runs)
            print(f"| {v.upper()} | {b} | {r['exact']:.1f} | {r['fast']:.1f} | {r['ratio']:.2f}x | {r['diff']:.1e} |",
                  flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())

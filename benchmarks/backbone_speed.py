#!/usr/bin/env python3
"""EfficientViT backbone latency: the exact fused path (``fuse(exact=True)``, the seed's arithmetic) against the fast
path (``fuse()``, the default), timed interleaved in the same process so machine load affects both alike.

    python benchmarks/backbone_speed.py --variants m0 m5 --batch 1 8 --imgsz 640 --runs 20
    python benchmarks/backbone_speed.py --conditioning      # also: why compare_seed.py can only pass bit for bit

The speed table has one Markdown row per (variant, batch): medians in ms, the median of per-run ratios exact/fast,
and the largest relative output difference between the two paths (float32, weights from the default init with BN
statistics perturbed so no branch is trivially zero).

``--conditioning`` adds a second table on chaotic weights (``randn * 0.2`` for every kernel, whatever its fan-in:
what ``compare_seed.py`` drew until it moved to well-conditioned weights). The exact path is the seed's arithmetic
bit for bit, so what it shows holds for the seed too: (1) how far the exact path's own float32 result is from its
float64 result — the rounding error of the reference itself; beyond a 1e-4 tolerance only code that rounds exactly
like the seed could pass a check on such weights; (2) the fast path against the exact path in float64, where
rounding no longer hides the math; (3) the share of the exact path's time spent inside convolution kernels — code
that must round like the seed has to run those same kernels, so ``1 / share`` bounds its speed-up.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.speed import cpu_name  # noqa: E402
from models import efficientvit as ev  # noqa: E402

# compare_seed.py's four comparison sizes (height x width)
COMPARE_SIZES = ((640, 640), (480, 640), (224, 224), (256, 320))
# aten dispatch wrappers around the convolution kernels: their self time is bookkeeping, not the kernel
_CONV_WRAPPERS = {'aten::conv2d', 'aten::convolution', 'aten::_convolution'}


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


def chaotic_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The weights ``compare_seed.py`` used to draw: ``randn * 0.2`` for every kernel whatever its fan-in,
    ``randn * 0.5`` for vectors, random BN statistics. Activations grow to ~1e5 (M0) - 1e15 (M5): ill-conditioned."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.dim() > 1 else 0.5))
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
    return model


def rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest per-output ``max|a - b| / max|a|`` — compare_seed.py's measure."""
    return max(((x.double() - y.double()).abs().max() / (x.double().abs().max() + 1e-30)).item()
               for x, y in zip(a, b))


def _time(model: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.inference_mode():
        t = time.perf_counter()
        model(x)
        return time.perf_counter() - t


def bench(variant: str, batch: int, imgsz: int, runs: int) -> dict:
    """Median latencies (ms) of both paths, median ratio exact/fast and max relative output difference."""
    base = getattr(ev, f'EfficientViT_{variant.upper()}')().eval()
    _perturb_bn(base)
    exact, fast = copy.deepcopy(base).fuse(exact=True), copy.deepcopy(base).fuse()
    x = torch.randn(batch, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        diff = rel_diff(exact(x), fast(x))
    for _ in range(2):
        _time(exact, x), _time(fast, x)
    te, tf = [], []
    for _ in range(runs):
        te.append(_time(exact, x))
        tf.append(_time(fast, x))
    ratio = statistics.median(a / b for a, b in zip(te, tf))
    return dict(exact=statistics.median(te) * 1e3, fast=statistics.median(tf) * 1e3, ratio=ratio, diff=diff)


def conv_share(model: torch.nn.Module, x: torch.Tensor, runs: int = 3) -> float:
    """Fraction of the model's operator self-time (torch.profiler, CPU) spent inside convolution kernels."""
    with torch.inference_mode():
        model(x)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                model(x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if 'conv' in e.key and e.key not in _CONV_WRAPPERS)
    return conv / total if total else float('nan')


def conditioning(variant: str, sizes: tuple[tuple[int, int], ...] = COMPARE_SIZES, imgsz: int = 640) -> dict:
    """On chaotic weights: the exact path's float32-vs-float64 error (per output, worst size), the fast
    path vs the exact path in float64, and the exact path's convolution share of time at ``imgsz`` (batch 1)."""
    base = chaotic_weights(getattr(ev, f'EfficientViT_{variant.upper()}')()).eval()
    # fuse AFTER the cast: fusing in float32 would round the folded weights, which this net amplifies
    exact32 = copy.deepcopy(base).fuse(exact=True)
    exact64, fast64 = copy.deepcopy(base).double().fuse(exact=True), copy.deepcopy(base).double().fuse()
    g = torch.Generator().manual_seed(1)
    ref_err, fast_err, peak = [0.0, 0.0, 0.0], 0.0, 0.0
    for h, w in sizes:
        x = torch.randn(2, 3, h, w, generator=g)
        with torch.inference_mode():
            y32, y64, f64 = exact32(x), exact64(x.double()), fast64(x.double())
        ref_err = [max(e, rel_diff([b], [a])) for e, a, b in zip(ref_err, y32, y64)]
        fast_err = max(fast_err, rel_diff(y64, f64))
        peak = max(peak, max(y.abs().max().item() for y in y64))
    share = conv_share(exact32, torch.randn(1, 3, imgsz, imgsz, generator=g))
    return dict(ref_err=ref_err, fast_err=fast_err, peak=peak, conv_share=share)


def _size(text: str) -> tuple[int, int]:
    """argparse type for 'HxW' (e.g. 480x640)."""
    parts = text.lower().split('x')
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f'expected HxW with positive integers (e.g. 480x640), got {text!r}')
    return int(parts[0]), int(parts[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--variants', nargs='+', default=['m0', 'm5'], choices=sorted(ev.VARIANTS))
    ap.add_argument('--batch', nargs='+', type=int, default=[1])
    ap.add_argument('--imgsz', type=int, default=640)
    ap.add_argument('--runs', type=int, default=20)
    ap.add_argument('--threads', type=int, default=0, help='torch threads (0: leave the default)')
    ap.add_argument('--conditioning', action='store_true',
                    help='also the table on chaotic weights (reference rounding error, bit-exact bound)')
    ap.add_argument('--compare-sizes', nargs='+', type=_size, default=list(COMPARE_SIZES), metavar='HxW',
                    help="input sizes (HxW) of the conditioning table, default compare_seed.py's")
    opt = ap.parse_args(argv)
    if opt.threads:
        torch.set_num_threads(opt.threads)
    load = ', '.join(f'{x:.2f}' for x in os.getloadavg()) if hasattr(os, 'getloadavg') else 'n/a'
    print(f'{time.strftime("%Y-%m-%d %H:%M")}, {cpu_name()}, torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads, load average {load}; {opt.imgsz}x{opt.imgsz}, {opt.runs} runs\n')
    print('| variant | batch | exact fused (ms) | fast (ms) | speed-up exact/fast | max rel. diff |')
    print('|---|---|---|---|---|---|')
    for v in opt.variants:
        for b in opt.batch:
            r = bench(v, b, opt.imgsz, opt.runs)
            print(f"| {v.upper()} | {b} | {r['exact']:.1f} | {r['fast']:.1f} | {r['ratio']:.2f}x | {r['diff']:.1e} |",
                  flush=True)
    if opt.conditioning:
        sizes = tuple(opt.compare_sizes)
        print(f"\nOn chaotic weights (compare_seed.py's old ones), batch 2 at {', '.join(f'{h}x{w}' for h, w in sizes)}"
              f' (worst size); conv share at {opt.imgsz}x{opt.imgsz}, batch 1:\n')
        print('| variant | largest activation | exact f32 vs f64: P3 / P4 / P5 | fast vs exact, f64 '
              '| conv kernels\' share of exact time | bit-exact speed-up bound |')
        print('|---|---|---|---|---|---|')
        for v in opt.variants:
            c = conditioning(v, sizes, imgsz=opt.imgsz)
            errs = ' / '.join(f'{e:.1e}' for e in c['ref_err'])
            print(f"| {v.upper()} | {c['peak']:.1e} | {errs} | {c['fast_err']:.1e} | {c['conv_share']:.0%} "
                  f"| {1 / c['conv_share']:.2f}x |", flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""Where a training step's time goes: data wait, forward, loss (targets included), backward, optimizer, EMA.

Builds the real Trainer from train.py's options (the dataset's ``train_defaults`` unless flags say otherwise), runs its
setup, then times ``--steps`` steps of its training loop phase by phase (after ``--warmup`` steps), with the same
calls the loop makes. Data wait is the time the main process blocks on the loader (the workers' augmentation that is
not hidden behind compute). Writes a Markdown table (ms per step, share, images/s) to ``--out`` and prints it.

Usage:
    python benchmarks/train_profile.py                                   # quick start: M0, 256 px, batch 16
    python benchmarks/train_profile.py --cfg models/yolov5n.yaml --img 320 --out benchmarks/results/train_profile.md
Run it alone on an idle machine: every figure is a wall-clock median over the timed steps.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # entry point: make the repository importable when run as a script

PHASES = ('data', 'forward', 'loss', 'backward', 'optimizer', 'ema')


def build_trainer(argv: list[str], save_dir: Path):
    """The Trainer train.py would build for ``argv`` (its options built once, as train.py builds them), set up."""
    import torch

    import train
    from utils.core.torch_utils import select_device
    from utils.engine.options import build_options
    from utils.engine.trainer import Trainer

    options = build_options(train.parse_opt(args=argv)).with_run(save_dir)
    device = select_device(options.device, options.batch_size)
    trainer = Trainer(options, device)
    trainer.setup()
    torch.set_grad_enabled(True)
    return trainer


def timed_steps(trainer, steps: int, warmup: int) -> dict[str, list[float]]:
    """Run warmup + steps training steps the way Trainer.train_one_epoch does, timing each phase (seconds)."""
    import torch

    times: dict[str, list[float]] = defaultdict(list)
    model = trainer.train_model
    model.train()
    trainer.optimizer.zero_grad()
    it, clock = iter(trainer.train_loader), time.perf_counter
    for i in range(warmup + steps):
        marks = [clock()]
        try:
            imgs, targets, _, _ = next(it)
        except StopIteration:
            it = iter(trainer.train_loader)
            imgs, targets, _, _ = next(it)
        imgs = (imgs.to(trainer.device).float() / 255).contiguous(memory_format=trainer.memory_format)
        marks.append(clock())
        pred = model(imgs)
        marks.append(clock())
        loss, _ = trainer.compute_loss(pred, targets.to(trainer.device))
        marks.append(clock())
        loss.backward()
        marks.append(clock())
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), max_norm=10.0)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        marks.append(clock())
        trainer.ema.update(trainer.model)
        marks.append(clock())
        if i >= warmup:
            for name, a, b in zip(PHASES, marks, marks[1:]):
                times[name].append(b - a)
    return times


def report(times: dict[str, list[float]], batch: int, title: str, argv: list[str]) -> str:
    """Markdown: median ms per phase, share of the summed medians, and images/s from the median step."""
    import torch

    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    steps = [sum(t) for t in zip(*(times[k] for k in PHASES))]
    step = statistics.median(steps) * 1e3
    total = sum(med.values())
    cpu = torch.backends.cpu.get_cpu_capability()
    lines = [f'### {title}', '',
             f'`python benchmarks/train_profile.py {" ".join(argv)}` — {platform.processor() or platform.machine()}, '
             f'{len(os.sched_getaffinity(0))} cores available, torch {torch.__version__} ({cpu}), '
             f'{torch.get_num_threads()} threads, {len(steps)} timed steps', '',
             '| phase | ms/step (median) | share |', '|---|---:|---:|']
    lines += [f'| {k} | {med[k]:.1f} | {med[k] / total:.0%} |' for k in PHASES]
    lines += [f'| **step** | **{step:.1f}** | |', '', f'Throughput: **{batch / step * 1e3:.1f} images/s** '
              f'(batch {batch}, median step).', '']
    return '\n'.join(lines)


def main(args: argparse.Namespace, train_argv: list[str]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(train_argv, Path(tmp) / 'run')
        times = timed_steps(trainer, args.steps, args.warmup)
        text = report(times, trainer.batch_size, args.title or ' '.join(train_argv) or 'quick start', train_argv)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open('a') as f:
            f.write(text + '\n')
    return text


def parse_opt(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Own flags (--steps, --warmup, --out, --title); every other flag goes to train.py's parser."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--steps', type=int, default=20, help='timed training steps')
    p.add_argument('--warmup', type=int, default=3, help='untimed steps first')
    p.add_argument('--out', default='', help='append the Markdown table to this file')
    p.add_argument('--title', default='', help='table heading')
    return p.parse_known_args(argv)


if __name__ == '__main__':
    main(*parse_opt())

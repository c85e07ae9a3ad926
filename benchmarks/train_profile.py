"""Where a training step's time goes: data wait, forward, loss (targets included), backward, optimizer, EMA.

Trains with train.py's options (the dataset's ``train_defaults`` unless flags say otherwise) for one epoch, whose
training loop is replaced by ``--steps`` timed steps (after ``--warmup`` untimed ones) that make the same calls the
loop makes, phase by phase. Data wait is the time the main process blocks on the loader (augmentation in the workers
that is not hidden behind compute). ``--baseline DIR`` profiles another checkout of this project the same way (its
own Trainer, in its own process), e.g. a checkout of an older main for a before/after table. Writes Markdown (ms per
step, share, images/s) to ``--out`` and prints it.

Usage:
    python benchmarks/train_profile.py                                   # quick start: M0, 224 px, batch 16
    python benchmarks/train_profile.py --baseline ../old-main --out benchmarks/results/train_profile.md
    python benchmarks/train_profile.py --baseline ../old-main -- --weights v5n.pt --img 320 --batch-size 16
Arguments after ``--`` go to train.py. Run alone on an idle machine: figures are medians over the timed steps.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PHASES = ('data', 'forward', 'loss', 'backward', 'optimizer', 'ema')


def find_trainer() -> type:
    """The Trainer class of the checkout on ``sys.path[0]``, wherever its version keeps it (also used by
    train_throughput.py's child process, which loads this file by path)."""
    for name in ('utils.engine.trainer', 'utils.trainer'):
        try:
            return importlib.import_module(name).Trainer
        except ImportError:
            continue
    raise ImportError('no Trainer in utils.engine.trainer or utils.trainer')


def profile_in_this_process(train_argv: list[str], steps: int, warmup: int) -> dict:
    """Run train.py's one-epoch training in the checkout on ``sys.path[0]`` with its loop replaced by timed steps."""
    trainer_cls = find_trainer()
    result = {}

    def timed_epoch(self, epoch):
        result['times'] = timed_steps(self, steps, warmup)
        result['batch'] = self.batch_size
        result['precision'] = str(getattr(self, 'autocast_dtype', None) or 'float32').replace('torch.', '')
        self.mloss, self.lr = __import__('torch').zeros(3), [0.0] * 3

    plain, trainer_cls.train_one_epoch = trainer_cls.train_one_epoch, timed_epoch
    import train
    try:
        with tempfile.TemporaryDirectory() as tmp:
            train.main(train.parse_opt(args=[*train_argv, '--epochs', '1', '--noval', '--nosave', '--noplots',
                                             '--project', tmp, '--name', 'run']))
    finally:
        trainer_cls.train_one_epoch = plain
    return result


def timed_steps(trainer, steps: int, warmup: int) -> dict[str, list[float]]:
    """Run warmup + steps training steps the way Trainer.train_one_epoch does, timing each phase (seconds)."""
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
        if hasattr(trainer, 'prepare_images'):  # the checkout's own conversion, where it has one
            imgs = trainer.prepare_images(imgs)
        else:
            imgs = (imgs.to(trainer.device).float() / 255).contiguous(memory_format=trainer.memory_format)
        marks.append(clock())
        pred = trainer.predict(model, imgs) if hasattr(trainer, 'predict') else model(imgs)  # its own precision
        marks.append(clock())
        with trainer.autocast() if hasattr(trainer, 'autocast') else contextlib.nullcontext():
            loss, _ = trainer.compute_loss(pred, targets.to(trainer.device))
        marks.append(clock())
        loss.backward()
        marks.append(clock())
        ema, trainer.ema = trainer.ema, None  # the checkout's own step (clip, step, zero_grad), EMA timed apart
        try:
            trainer.optimizer_step()
        finally:
            trainer.ema = ema
        marks.append(clock())
        ema.update(trainer.model)
        marks.append(clock())
        if i >= warmup:
            for name, a, b in zip(PHASES, marks, marks[1:]):
                times[name].append(b - a)
    return times


def report(result: dict, title: str, cmd: str) -> str:
    """Markdown: median ms per phase, share of the summed medians, and images/s from the median step."""
    import torch

    times, batch = result['times'], result['batch']
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    steps = [sum(t) for t in zip(*(times[k] for k in PHASES))]
    step = statistics.median(steps) * 1e3
    total = sum(med.values())
    cpu = torch.backends.cpu.get_cpu_capability()
    lines = [f'### {title}', '',
             f'`{cmd}` — {platform.processor() or platform.machine()}, '
             f'{len(os.sched_getaffinity(0))} cores available, torch {torch.__version__} ({cpu}), '
             f'{torch.get_num_threads()} threads, {result.get("precision", "float32")}, {len(steps)} timed steps', '',
             '| phase | ms/step (median) | share |', '|---|---:|---:|']
    lines += [f'| {k} | {med[k]:.1f} | {med[k] / total:.0%} |' for k in PHASES]
    lines += [f'| **step** | **{step:.1f}** | |', '', f'Throughput: **{batch / step * 1e3:.1f} images/s** '
              f'(batch {batch}, median step).', '']
    return '\n'.join(lines)


def profile_checkout(repo: Path, args: argparse.Namespace, train_argv: list[str]) -> dict:
    """The profile of ``repo`` measured in a fresh process whose imports resolve inside ``repo``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), '--child', '--steps', str(args.steps), '--warmup',
           str(args.warmup), '--', *train_argv]
    out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    lines = [x for x in out.stdout.splitlines() if x.startswith('PROFILE ')]
    if out.returncode or not lines:
        raise RuntimeError(f'{repo}: profiling failed (exit {out.returncode}): {out.stderr.strip()[-800:]}')
    return json.loads(lines[-1][len('PROFILE '):])


def main(args: argparse.Namespace, train_argv: list[str]) -> str:
    if args.child:
        sys.path.insert(0, os.getcwd())
        print('PROFILE ' + json.dumps(profile_in_this_process(train_argv, args.steps, args.warmup)))
        return ''
    title = args.title or ' '.join(train_argv) or 'quick start'
    checkouts = {'this checkout': ROOT} | ({'baseline': Path(args.baseline).resolve()} if args.baseline else {})
    cmd = 'python benchmarks/train_profile.py' + (f' --baseline {args.baseline}' if args.baseline else '') \
        + (f' -- {" ".join(train_argv)}' if train_argv else '')
    text = '\n'.join(report(profile_checkout(repo, args, train_argv), f'{title}: {name} ({repo.name})', cmd)
                     for name, repo in checkouts.items())
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open('a') as f:
            f.write(text + '\n')
    return text


def parse_opt(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Own flags before ``--``; what follows ``--`` goes to train.py's parser."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--steps', type=int, default=20, help='timed training steps')
    p.add_argument('--warmup', type=int, default=3, help='untimed steps first')
    p.add_argument('--out', default='', help='append the Markdown table to this file')
    p.add_argument('--title', default='', help='table heading')
    p.add_argument('--baseline', default='', help='also profile this other checkout of the project')
    p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index('--') if '--' in argv else len(argv)
    return p.parse_args(argv[:split]), argv[split + 1:]


if __name__ == '__main__':
    main(*parse_opt())

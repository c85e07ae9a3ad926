"""Training throughput, this checkout against another (e.g. a checkout of an older main), interleaved.

Each run is a fresh process that trains ``--epoch K`` + 1 epochs with train.py's options and times only the last
epoch's training loop (``Trainer.train_one_epoch``: data, forward, loss, backward, optimizer, EMA; not the
setup, validation or saving), so startup and validation do not dilute the ratio. Runs alternate A B A B ... and the
table gives the median images/s of each checkout and the median of the per-pair ratios, with a distribution-free
interval for that median (``timing.median_interval``: on a noisy host, how far apart two medians must be to differ).
Epoch 0 (the default, as all our tables until 2026-12-07) also pays one-off costs: the dataloader workers' start-up
(forking them, their first batches) and kernel selection. That is fair between two checkouts that start the same
workers, not between runs with different worker counts: ``--epoch 1`` times a steady epoch (a 1.12x of epoch 0 was
1.04x there).

Usage:
    python benchmarks/train_throughput.py --baseline ../main-old --runs 3                        # the quick start
    python benchmarks/train_throughput.py --baseline ../main-old --runs 3 -- --cfg models/yolov5n.yaml \\
        --weights yolov5n-shapes.pt --img 320 --batch-size 16 --hyp data/hyps/hyp.scratch-low.yaml
Arguments after ``--`` go to train.run (as ``--flag value`` pairs); both checkouts get the same ones, and the image
and batch size default to this checkout's quick start for both (224 px, batch 16; the quick start trained at 256 px
until 2026-12-06, when both checkouts defaulted to it: ``-- --img 256`` repeats those runs).
Run alone on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # entry point: make the repository importable when run as a script

from benchmarks import timing  # noqa: E402
from utils.engine import options  # noqa: E402

# Runs inside the checkout being measured (its own train.py and Trainer, wherever its version keeps them).
CHILD = r'''
import json, sys, time, importlib.util
sys.path.insert(0, '.')
kwargs = json.loads(sys.argv[1])
spec = importlib.util.spec_from_file_location('train_profile', sys.argv[2])
train_profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_profile)
Trainer = train_profile.find_trainer()
seconds = []
plain = Trainer.train_one_epoch
def timed(self, epoch):
    t = time.perf_counter()
    plain(self, epoch)
    seconds.append(time.perf_counter() - t)
    images.append(len(self.dataset) if hasattr(self, 'dataset') else len(self.train_loader.dataset))
images = []
Trainer.train_one_epoch = timed
import train
train.run(**kwargs)
print('THROUGHPUT ' + json.dumps({'seconds': seconds[-1], 'images': images[-1]}))
'''


def train_kwargs(extra: list[str], project: str, epoch: int = 0) -> dict:
    """``--flag value`` pairs (and bare ``--flag`` switches) -> train.run keyword arguments, plus ``epoch`` + 1
    epochs (the last one is timed), no validation, no saving, no plots, into ``project``; image size and batch size
    default to this checkout's (the data's ``train_defaults``) and are passed to both checkouts, so they train the
    same batches."""
    kwargs, i = {}, 0
    while i < len(extra):
        key = extra[i].lstrip('-').replace('-', '_')
        if i + 1 < len(extra) and not extra[i + 1].startswith('--'):
            value = extra[i + 1]
            kwargs[key] = int(value) if value.isdigit() else value
            i += 2
        else:
            kwargs[key] = True
            i += 1
    kwargs.update(epochs=epoch + 1, noval=True, nosave=True, noplots=True, project=project, name='run', exist_ok=True)
    if 'img' in kwargs:
        kwargs['imgsz'] = kwargs.pop('img')
    rec = options.dataset_train_defaults(kwargs.get('data', options.DEFAULT_DATA))
    for key in ('imgsz', 'batch_size'):  # this checkout's defaults, pinned: the other may default differently
        kwargs.setdefault(key, rec.get(key, options.YOLOV5_DEFAULTS[key]))
    return kwargs


def one_run(repo: Path, kwargs: dict) -> float:
    """Images per second of one epoch's training loop in a fresh process inside ``repo``."""
    helper = Path(__file__).resolve().with_name('train_profile.py')  # find_trainer(), loaded by path in the child
    out = subprocess.run([sys.executable, '-c', CHILD, json.dumps(kwargs), str(helper)], cwd=repo,
                         capture_output=True, text=True)
    lines = [x for x in out.stdout.splitlines() if x.startswith('THROUGHPUT ')]
    if out.returncode or not lines:
        raise RuntimeError(f'{repo}: run failed (exit {out.returncode}): {out.stderr.strip()[-800:]}')
    r = json.loads(lines[-1][len('THROUGHPUT '):])
    return r['images'] / r['seconds']


def main(args: argparse.Namespace, extra: list[str]) -> str:
    repos = {'this checkout': ROOT, 'baseline': Path(args.baseline).resolve()}
    speeds: dict[str, list[float]] = {k: [] for k in repos}
    with tempfile.TemporaryDirectory() as tmp:
        kwargs = train_kwargs(extra, tmp, args.epoch)
        for r in range(args.runs):
            for name, repo in repos.items():
                speeds[name].append(one_run(repo, kwargs))
                print(f'run {r + 1}/{args.runs} {name}: {speeds[name][-1]:.2f} images/s', flush=True)
    ratios = [a / b for a, b in zip(speeds['this checkout'], speeds['baseline'])]
    import torch
    lines = [f'`python benchmarks/train_throughput.py --baseline {args.baseline} --runs {args.runs}'
             + (f' --epoch {args.epoch}' if args.epoch else '')
             + (f' -- {" ".join(extra)}`' if extra else '`'),
             f'({platform.machine()}, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__} '
             f'({torch.backends.cpu.get_cpu_capability()}); the training loop of epoch {args.epoch} per run, '
             f'A B interleaved; both at {kwargs["imgsz"]} px, batch {kwargs["batch_size"]})', '',
             '| checkout | images/s (median) | runs |', '|---|---:|---|']
    for name in repos:
        lines.append(f'| {name} | {statistics.median(speeds[name]):.2f} | '
                     + ', '.join(f'{s:.2f}' for s in speeds[name]) + ' |')
    lo, hi, cover = timing.median_interval(ratios)
    lines += ['', f'Ratio this/baseline (median of pairs): **{statistics.median(ratios):.2f}x**, '
                  f'{cover:.0%} interval {lo:.2f}-{hi:.2f} (pairs: {", ".join(f"{x:.2f}" for x in ratios)})', '']
    text = '\n'.join(lines)
    print(text)
    if args.out:
        with open(args.out, 'a') as f:
            f.write(text + '\n')
    return text


def parse_opt(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index('--') + 1:] if '--' in argv else []
    own = argv[:argv.index('--')] if '--' in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--baseline', required=True, help='another checkout of this project to compare against')
    p.add_argument('--runs', type=int, default=3, help='runs of each checkout (interleaved)')
    p.add_argument('--epoch', type=int, default=0, help='time epoch K (K + 1 epochs per run; 1: a steady epoch)')
    p.add_argument('--out', default='', help='append the Markdown table to this file')
    return p.parse_args(own), extra


if __name__ == '__main__':
    main(*parse_opt())

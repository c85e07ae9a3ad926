"""Learning benchmark: does training learn? EfficientViT-M0 and yolov5n trained under the same budget on shapes.

Trains each model with train.run(...) on the embedded dataset (data/shapes.yaml, generated on first use) under the same
budget — by default exactly what ``python train.py`` uses (the dataset's ``train_defaults``: epochs, image size, batch
size, hyperparameters, optimizer), each flag overridable — reads each run's results.csv and writes
benchmarks/results/learning.md (mAP50 and mAP50-95 per epoch for every model, wall time, final and best numbers)
and learning.png (mAP against epoch). This is a benchmark to run by hand (minutes to hours on CPU), not a test.

Usage:
    python benchmarks/learning.py                                 # the quick start's budget (data/shapes.yaml)
    python benchmarks/learning.py --epochs 1 --imgsz 128 --batch-size 8 --out /tmp/learning   # smoke run
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # entry point: make the repository importable when run as a script

from train import OPTIMIZERS  # noqa: E402  (train.py imports no torch at module level)

MODELS = ['models/yolov5-efficientvit.yaml', 'models/yolov5n.yaml']
MAP50, MAP = 'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95'


class ResultsError(ValueError):
    """A results.csv that is missing or lacks the mAP columns."""


def read_results(file: str | Path) -> dict[str, list[float]]:
    """results.csv -> {column: values}, read by the run log's one reader (utils.engine.runlog.read_results_csv)."""
    from utils.engine.runlog import read_results_csv

    file = Path(file)
    if not file.is_file():
        raise ResultsError(f'{file}: results.csv not found')
    try:
        head, rows = read_results_csv(file)
    except ValueError as e:
        raise ResultsError(f'{file}: {e}') from None
    missing = [k for k in ('epoch', MAP50, MAP) if k not in head]
    if missing:
        raise ResultsError(f'{file}: results.csv lacks column(s) {missing}')
    return {k: rows[:, j].tolist() for j, k in enumerate(head)}


def summary(res: dict[str, list[float]]) -> dict[str, float]:
    """Final-epoch and best mAP50 / mAP50-95 (best by YOLOv5 fitness 0.1*mAP50 + 0.9*mAP50-95)."""
    m50, m = res[MAP50], res[MAP]
    if not m:
        return {}
    best = max(range(len(m)), key=lambda i: 0.1 * m50[i] + 0.9 * m[i])
    return {'epochs': len(m), 'final_map50': m50[-1], 'final_map': m[-1], 'best_epoch': int(res['epoch'][best]),
            'best_map50': m50[best], 'best_map': m[best]}


def format_summary(runs: dict[str, dict]) -> str:
    """Markdown table: one row per model with wall time and final/best numbers."""
    lines = ['| Model | Epochs | Wall time | Final mAP50 | Final mAP50-95 | Best epoch | Best mAP50 | Best mAP50-95 |',
             '|---|---:|---:|---:|---:|---:|---:|---:|']
    for name, r in runs.items():
        s = summary(r['results']) if 'results' in r else {}
        if not s:
            lines.append(f"| {name} | - | - | {r.get('error', 'no results')} | | | | |")
            continue
        lines.append(f"| {name} | {s['epochs']} | {fmt_time(r.get('wall_s'))} | {s['final_map50']:.3f} | "
                     f"{s['final_map']:.3f} | {s['best_epoch']} | {s['best_map50']:.3f} | {s['best_map']:.3f} |")
    return '\n'.join(lines)


def fmt_time(s: float | None) -> str:
    """Seconds as 'Xm Ys' (or '-')."""
    if s is None:
        return '-'
    s = round(s)
    return f'{s // 60}m {s % 60:02d}s'


def format_epochs(runs: dict[str, dict]) -> str:
    """Markdown table: per epoch, mAP50 and mAP50-95 of every model side by side."""
    ok = {n: r['results'] for n, r in runs.items() if 'results' in r}
    head = ['Epoch'] + [f'{n} {k}' for n in ok for k in ('mAP50', 'mAP50-95')]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '|'.join(['---:'] * len(head)) + '|']
    epochs = sorted({int(e) for res in ok.values() for e in res['epoch']})
    for e in epochs:
        row = [str(e)]
        for res in ok.values():
            idx = [i for i, x in enumerate(res['epoch']) if int(x) == e]
            row += [f'{res[MAP50][idx[-1]]:.3f}', f'{res[MAP][idx[-1]]:.3f}'] if idx else ['-', '-']
        lines.append('| ' + ' | '.join(row) + ' |')
    return '\n'.join(lines)


def format_report(runs: dict[str, dict], opts: dict) -> str:
    """learning.md: setup, summary table, per-epoch table."""
    return '\n'.join([
        '# Learning benchmark', '',
        f"Measured {opts.get('date', '')} on {opts.get('machine', '')}. Same budget for every model: "
        + (f"{opts['time']} h of wall clock per run (`--time`: each model trains the epochs that fit, decided after "
           "its epoch 0 and revised if the pace changes; the table says how many), " if opts.get('time')
           else f"{opts.get('epochs')} epochs, ")
        + f"{opts.get('imgsz')} px, batch {opts.get('batch_size')}, "
        f"optimizer {opts.get('optimizer')}, data `{opts.get('data')}`, hyp: {opts.get('hyp')}, from scratch.", '',
        f"Command: `{opts.get('command', '')}`", '',
        format_summary(runs), '',
        'mAP is measured by the per-epoch validation of the training run (EMA weights, val split). '
        'Best = highest YOLOv5 fitness (0.1 mAP50 + 0.9 mAP50-95).', '',
        '## Per epoch', '', format_epochs(runs), ''])


def plot_learning(runs: dict[str, dict], file: str | Path) -> Path | None:
    """mAP50 (solid) and mAP50-95 (dashed) against epoch for every model; None when there is nothing to plot."""
    from matplotlib.figure import Figure

    ok = {n: r['results'] for n, r in runs.items() if r.get('results') and r['results']['epoch']}
    if not ok:
        return None
    fig = Figure(figsize=(8, 5), tight_layout=True)
    ax = fig.add_subplot()
    for i, (n, res) in enumerate(ok.items()):
        c = f'C{i}'
        ax.plot(res['epoch'], res[MAP50], '-', color=c, marker='.', label=f'{n} mAP50')
        ax.plot(res['epoch'], res[MAP], '--', color=c, marker='.', label=f'{n} mAP50-95')
    ax.set_xlabel('epoch')
    ax.set_ylabel('mAP (val)')
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title('Learning curves under the same budget')
    fig.savefig(file, dpi=120)
    return Path(file)


def train_one(cfg: str, data: str, project: Path, **flags) -> dict:
    """train.run(...) for one model; returns {'run_dir', 'wall_s', 'results', 'opt'} or {'error'} when it failed.

    ``flags`` left at None are filled by train.py exactly as on its command line (dataset train_defaults, then
    YOLOv5's defaults); ``opt`` is the run's opt.yaml, so the report states what was actually used.
    """
    import yaml

    import train

    name = Path(cfg).stem
    t0 = time.time()
    try:
        run_dir = train.run(cfg=cfg, data=data, project=str(project), name=name,
                            **{k: v for k, v in flags.items() if v is not None})
        wall = time.time() - t0
        opt = yaml.safe_load((Path(run_dir) / 'opt.yaml').read_text()) or {}
        return {'run_dir': str(run_dir), 'wall_s': wall, 'results': read_results(Path(run_dir) / 'results.csv'),
                'opt': opt}
    except Exception as e:  # report the failure of one model and still train the others
        msg = ' '.join(str(e).split())[:120]
        return {'error': f'error: {type(e).__name__}: {msg}'.replace('|', '/'), 'wall_s': time.time() - t0}


def machine() -> str:
    """CPU model and core count, for the report."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.lower().startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    from utils.core.precision import cpu_bf16_unit, training_autocast_dtype
    precision = 'float32' if training_autocast_dtype('cpu') is None else f'bf16 autocast ({cpu_bf16_unit()})'
    return f'{cpu} ({os.cpu_count()} logical CPUs; CPU training precision: {precision})'


def budget(runs: dict[str, dict]) -> dict:
    """The budget actually used (from the first finished run's opt.yaml): epochs (or time), imgsz, batch, optimizer,
    hyp."""
    for r in runs.values():
        if r.get('opt'):
            o = r['opt']
            hyp = o.get('hyp')
            keys = ('lr0', 'momentum', 'warmup_epochs', 'nbs', 'mosaic')
            hyp_s = ', '.join(f'{k} {hyp[k]}' for k in keys if k in hyp) if isinstance(hyp, dict) else str(hyp)
            return {'epochs': o.get('epochs'), 'time': o.get('time'), 'imgsz': o.get('imgsz'),
                    'batch_size': o.get('batch_size'), 'optimizer': o.get('optimizer'), 'hyp': hyp_s}
    return {}


def run(models: list[str] | None = None, epochs: int | None = None, time_h: float | None = None,
        imgsz: int | None = None, batch_size: int | None = None, data: str = str(ROOT / 'data/shapes.yaml'),
        hyp: str | None = None, optimizer: str | None = None, device: str = '', workers: int = 2,
        project: str | Path = ROOT / 'runs/learning', out: str | Path = ROOT / 'benchmarks/results',
        command: str = '') -> dict[str, dict]:
    """Train every model under the same budget and write learning.md / learning.png into ``out``.

    Flags left at None take train.py's defaults for ``data`` (for shapes.yaml: the quick start's budget).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    flags = {'epochs': epochs, 'time': time_h, 'imgsz': imgsz, 'batch_size': batch_size, 'hyp': hyp or None,
             'optimizer': optimizer, 'device': device, 'workers': workers}
    shown = Path(data).resolve()
    opts = {'data': shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else data,
            'command': command or 'benchmarks.learning.run()', 'machine': machine(),
            'date': datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}
    runs: dict[str, dict] = {}
    for cfg in models or MODELS:
        cfg_path = cfg if Path(cfg).is_absolute() else str(ROOT / cfg)
        runs[Path(cfg).stem] = train_one(cfg_path, data, Path(project), **flags)
        opts.update(budget(runs))
        (out / 'learning.md').write_text(format_report(runs, opts))  # after every model: partial runs leave a report
        plot_learning(runs, out / 'learning.png')
    return runs


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', nargs='+', default=MODELS, help='model YAMLs trained under the same budget')
    p.add_argument('--epochs', type=int, default=None, help="default: train.py's (the data's train_defaults)")
    p.add_argument('--time', type=float, default=None, help="hours per run (train.py --time; default: train.py's)")
    p.add_argument('--imgsz', '--img', type=int, default=None, help="default: train.py's")
    p.add_argument('--batch-size', type=int, default=None, help="default: train.py's")
    p.add_argument('--data', default=str(ROOT / 'data/shapes.yaml'))
    p.add_argument('--hyp', default=None, help="hyperparameter YAML (default: train.py's)")
    p.add_argument('--optimizer', default=None, choices=OPTIMIZERS, help="default: train.py's")
    p.add_argument('--device', default='', help="'' (GPU if any), 'cpu', '0', ...")
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--project', default=str(ROOT / 'runs/learning'), help='where the training runs go')
    p.add_argument('--out', default=str(ROOT / 'benchmarks/results'), help='where learning.md/.png go')
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> dict[str, dict]:
    command = ('python benchmarks/learning.py ' + ' '.join(sys.argv[1:])).strip()
    runs = run(models=opt.models, epochs=opt.epochs, time_h=opt.time, imgsz=opt.imgsz, batch_size=opt.batch_size,
               data=opt.data, hyp=opt.hyp, optimizer=opt.optimizer, device=opt.device, workers=opt.workers,
               project=opt.project, out=opt.out, command=command)
    print((Path(opt.out) / 'learning.md').read_text())
    return runs


if __name__ == '__main__':
    main(parse_opt())

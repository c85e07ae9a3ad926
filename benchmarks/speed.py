"""Speed benchmark: parameters, GFLOPs and latency of every model YAML, plus the images/s of one training step.

Columns (each a median of ``--runs`` timed runs after ``--warmup`` untimed ones, the models interleaved run by run so
that a change of machine load hits all of them alike, ``--pause-ms`` of sleep before every run): PyTorch eager,
BN-fused, fp32 under ``torch.inference_mode`` on CPU at each ``--batch-sizes``; ONNX Runtime (CPU provider) at batch 1
on the graph ``export.py`` writes, each session in its own process; fp16 on a CUDA GPU at ``--gpu-batch-sizes`` ("no
GPU" without one); one SGD training step (forward + ComputeLoss + backward + step) on CPU with random images and
targets. All on the same threads (the physical cores); ORT's threads do not spin (benchmarks/timing.py). Every
timing also appears as a ratio to yolov5n from the same run: compare those.
A model or backend that fails is reported in its cell as "error: <reason>"; the others are still measured.

Usage: ``python benchmarks/speed.py`` (every model, writes benchmarks/results/speed.*), or e.g.
``python benchmarks/speed.py --models yolov5n yolov5-efficientvit --runs 5 --no-train``.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # entry point: make the repository importable when run as a script

HYP = ROOT / 'data/hyps/hyp.scratch-low.yaml'

from benchmarks import timing  # noqa: E402
from benchmarks.speed_report import MODELS, load_previous, merge_report, new_report, write_results  # noqa: E402
from benchmarks.timing import cpu_isa, cpu_name, physical_cores  # noqa: E402, F401  (cpu_name: backbone_speed.py)


# ----------------------------------------------------------------------------------------------------------------
# Results: one cell per (model, column), either timing samples in ms or an error/absence text; the report made of
# them (merged across invocations, speed.md, speed.json, speed.png) is benchmarks/speed_report.py.
# ----------------------------------------------------------------------------------------------------------------
def short_error(e: BaseException, n: int = 60) -> str:
    """'error: <Type>: <first line>' cut to n characters, safe inside a Markdown table cell."""
    return 'error: ' + timing.shorten(timing.reason(e, None).replace('|', '/'), n)


def model_path(name: str) -> Path:
    """A model name ('yolov5n') or YAML path -> the YAML path (relative names resolve under ROOT/models)."""
    p = Path(name)
    if p.suffix in ('.yaml', '.yml'):
        return p if p.is_absolute() or p.exists() else ROOT / p
    return ROOT / 'models' / f'{name}.yaml'


# ----------------------------------------------------------------------------------------------------------------
# Models and the things timed
# ----------------------------------------------------------------------------------------------------------------
def build_models(names: list[str], imgsz: int) -> tuple[dict, dict]:
    """Build every model once: returns ({name: model or error text}, {name: {'params': int, 'gflops': float}})."""
    from models.yolo import DetectionModel
    from utils.core.torch_utils import flops

    models, info = {}, {}
    for name in names:
        try:
            path = model_path(name)
            if not path.is_file():
                raise FileNotFoundError(f'no {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}')
            m = DetectionModel(path, verbose=False)
            nonzero_attention_biases(m)
            models[name] = m
            info[name] = {'params': sum(p.numel() for p in m.parameters()), 'gflops': flops(m, imgsz)}
        except Exception as e:
            models[name] = short_error(e)
            info[name] = {}
        print(f'built {name}: {info[name] or models[name]}', flush=True)
    return models, info


@torch.no_grad()
def nonzero_attention_biases(model: torch.nn.Module, seed: int = 0) -> None:
    """Draw EfficientViT's attention-bias tables (zeros in a fresh model; never zero once trained): an Add of constant
    zeros is folded away by onnxslim, which would make an untrained model's ONNX graph faster than a trained one's."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith('attention_biases'):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))


def fused_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode, BN-fused copy without gradients, whose Detect returns only the decoded tensor."""
    from models.yolo import Detect

    m = copy.deepcopy(model).eval()
    m.fuse()
    for p in m.parameters():
        p.requires_grad_(False)
    for d in m.modules():
        if isinstance(d, Detect):
            d.export = True
    return m


def eager_task(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One inference-mode forward of x."""
    def fn() -> None:
        with torch.inference_mode():
            model(x)
    return fn


def export_onnx_file(model: torch.nn.Module, im: torch.Tensor, file: Path, opset: int = 12) -> Path:
    """ONNX of the fused export-mode model through export.py's exporter, at its default opset (with EfficientViT's
    export form and slimming, as users get it; plain torch.onnx.export if export.py is unavailable)."""
    try:
        from export import export_onnx
    except ImportError:
        export_onnx = None
    if export_onnx is not None:
        return export_onnx(model, im, file, {'stride': int(model.stride.max())}, opset, False, False)
    torch.onnx.export(model, im, str(file), opset_version=opset, input_names=['images'], output_names=['output0'],
                      dynamo=False)
    return file


def random_targets(batch: int, nc: int, per_image: int = 4, seed: int = 0) -> torch.Tensor:
    """(batch*per_image, 6) targets [image, class, cx, cy, w, h], normalised, boxes inside the image."""
    g = torch.Generator().manual_seed(seed)
    n = batch * per_image
    wh = torch.rand(n, 2, generator=g) * 0.45 + 0.05
    cxy = wh / 2 + torch.rand(n, 2, generator=g) * (1 - wh)
    img = torch.arange(batch).repeat_interleave(per_image).float()[:, None]
    cls = torch.randint(0, nc, (n, 1), generator=g).float()
    return torch.cat((img, cls, cxy, wh), 1)


def train_task(model: torch.nn.Module, batch: int, imgsz: int, hyp: dict) -> Callable[[], None]:
    """One optimizer step on random data: zero_grad, forward, ComputeLoss, backward, SGD step (YOLOv5's SGD), in the
    memory format train.py uses on the CPU (channels-last)."""
    from utils.core.torch_utils import training_memory_format
    from utils.ops.loss import ComputeLoss

    fmt = training_memory_format('cpu')
    model.to(memory_format=fmt).train()
    model.hyp = dict(hyp)
    loss_fn = ComputeLoss(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=hyp.get('lr0', 0.01),
                          momentum=hyp.get('momentum', 0.937), nesterov=True)
    x = torch.rand(batch, 3, imgsz, imgsz).contiguous(memory_format=fmt)
    targets = random_targets(batch, int(model.nc))

    def fn() -> None:
        opt.zero_grad(set_to_none=True)
        loss, _ = loss_fn(model(x), targets)
        loss.backward()
        opt.step()
    return fn


def load_hyp() -> dict:
    """The default training hyperparameters (hyp.scratch-low.yaml), or YOLOv5's loss gains if it cannot be read."""
    try:
        from utils.data.config import load_hyp as _load
        return _load(HYP)
    except Exception:
        return {'lr0': 0.01, 'momentum': 0.937, 'box': 0.05, 'cls': 0.5, 'cls_pw': 1.0, 'obj': 1.0, 'obj_pw': 1.0,
                'anchor_t': 4.0, 'fl_gamma': 0.0, 'label_smoothing': 0.0}


# ----------------------------------------------------------------------------------------------------------------
# Stages: each returns {column key: {model name: ms samples or text}}
# ----------------------------------------------------------------------------------------------------------------
def safe_name(name: str) -> str:
    """A model name or YAML path as one file-name component."""
    return Path(name).stem or 'model'


def bench(models: dict, make: Callable[[str, torch.nn.Module], Callable[[], None]], runs: int, warmup: int,
          sync: Callable[[], None] | None = None, pause: float = timing.PAUSE_S,
          per_turn: int = timing.INFERENCE_PER_TURN) -> dict[str, list[float] | str]:
    """Set up one task per usable model (a failing setup becomes that model's error), then time them interleaved."""
    cells: dict[str, list[float] | str] = {}
    tasks = {}
    for name, m in models.items():
        if isinstance(m, str):
            cells[name] = m
            continue
        try:
            tasks[name] = make(name, m)
        except Exception as e:
            cells[name] = short_error(e)
    cells.update(timing.interleaved(tasks, runs, warmup, sync, pause, short_error, per_turn=per_turn))
    return {name: cells[name] for name in models}


def column(key: str, title: str, batch: int, unit: str = 'ms') -> dict:
    """A table column: key in the results, header title, batch size, unit ('ms' latency or 'img/s' throughput)."""
    return {'key': key, 'title': title, 'batch': batch, 'unit': unit}


def plan_columns(batch_sizes: list[int], gpu_batch_sizes: list[int], onnx: bool, train: bool,
                 train_batch: int) -> list[dict]:
    """The table's timing columns in order."""
    cols = [column(f'cpu_b{b}', f'CPU eager b{b} ms', b) for b in batch_sizes]
    if onnx:
        cols.append(column('ort_b1', 'ORT CPU b1 ms', 1))
    cols += [column(f'gpu_b{b}', f'GPU fp16 b{b} ms', b) for b in gpu_batch_sizes]
    if train:
        cols.append(column(f'train_b{train_batch}', f'Train step b{train_batch} img/s', train_batch, 'img/s'))
    return cols


def stage_cpu(fused: dict, batch_sizes: list[int], imgsz: int, runs: int, warmup: int,
              pause: float = timing.PAUSE_S) -> dict:
    """PyTorch eager fp32 latency on CPU at each batch size."""
    res = {}
    for b in batch_sizes:
        x = torch.rand(b, 3, imgsz, imgsz)
        print(f'CPU eager batch {b} ...', flush=True)
        res[f'cpu_b{b}'] = bench(fused, lambda _n, m, x=x: eager_task(m, x), runs, warmup, pause=pause)
    return res


def stage_onnx(fused: dict, imgsz: int, runs: int, warmup: int, threads: int, pause: float = timing.PAUSE_S,
               spinning: bool = False) -> dict:
    """ONNX Runtime CPU latency at batch 1, each exported model's session in its own worker process, turns interleaved
    (in this process, beside torch's threads, M0 measured 68 instead of 44 ms: Zen 4, 2026-12-07)."""
    x = torch.rand(1, 3, imgsz, imgsz)
    print('ONNX Runtime CPU batch 1 ...', flush=True)
    cells, commands = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        np.save(image := Path(tmp) / 'image.npy', x.numpy())
        for name, m in fused.items():
            if isinstance(m, str):  # the model did not build: its cell already says why
                cells[name] = m
                continue
            try:
                onnx_file = export_onnx_file(m, x, Path(tmp) / f'{safe_name(name)}.onnx')
            except Exception as e:
                cells[name] = short_error(e)
                continue
            commands[name] = [sys.executable, str(ROOT / 'benchmarks/format_worker.py'), 'onnx', str(onnx_file),
                              str(threads), str(image), *(['spinning'] if spinning else [])]
        cells.update(timing.interleaved_processes(commands, runs, warmup, pause))
    return {'ort_b1': {name: cells[name] for name in fused}}


def stage_gpu(fused: dict, batch_sizes: list[int], imgsz: int, runs: int, warmup: int,
              pause: float = timing.PAUSE_S) -> dict:
    """fp16 CUDA latency at each batch size, or 'no GPU' cells."""
    if not torch.cuda.is_available():
        return {f'gpu_b{b}': dict.fromkeys(fused, 'no GPU') for b in batch_sizes}
    res = {}
    on_gpu = {n: m if isinstance(m, str) else copy.deepcopy(m).cuda().half() for n, m in fused.items()}
    for b in batch_sizes:
        x = torch.rand(b, 3, imgsz, imgsz, device='cuda').half()
        print(f'GPU fp16 batch {b} ...', flush=True)
        res[f'gpu_b{b}'] = bench(on_gpu, lambda _n, m, x=x: eager_task(m, x), runs, max(warmup, 3),
                                 torch.cuda.synchronize, pause)
    del on_gpu
    torch.cuda.empty_cache()
    return res


def stage_train(models: dict, batch: int, imgsz: int, runs: int, warmup: int, pause: float = timing.PAUSE_S) -> dict:
    """Milliseconds of one CPU training step (reported as images/s)."""
    hyp = load_hyp()
    print(f'training step batch {batch} ...', flush=True)
    return {f'train_b{batch}': bench(models, lambda _n, m: train_task(m, batch, imgsz, hyp), runs, warmup,
                                     pause=pause, per_turn=1)}


# ----------------------------------------------------------------------------------------------------------------
# What the numbers were measured on (the report's header)
# ----------------------------------------------------------------------------------------------------------------
def system_info(threads: int) -> dict:
    """What the numbers were measured on."""
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = 'not installed'
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'
    return {'date': datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC'), 'cpu': cpu_name(),
            'isa': cpu_isa(), 'logical_cpus': os.cpu_count(), 'usable_cpus': len(timing.usable_cpus()),
            'physical_cores': physical_cores(), 'threads': threads, 'torch': torch.__version__,
            'onnxruntime': ort_version, 'python': platform.python_version(), 'gpu': gpu,
            'loadavg_start': timing.loadavg()}


# ----------------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------------
def run(models: list[str] | None = None, imgsz: int = 640, runs: int = 20, warmup: int = 1,
        batch_sizes: list[int] | tuple = (1, 8), gpu_batch_sizes: list[int] | tuple = (1, 32), onnx: bool = True,
        train: bool = True, train_batch: int = 8, train_runs: int = 3, threads: int = 0,
        out: str | Path = ROOT / 'benchmarks/results', merge: bool = False, command: str = '',
        pause_ms: float = timing.PAUSE_S * 1000, ort_spinning: bool = False) -> dict:
    """Measure every model, write the report into ``out`` (merged into the one there with merge=True); return it.
    ``threads`` 0: the physical cores this process may use, for torch and ORT alike."""
    out, names = Path(out), list(models or MODELS)
    prev = load_previous(out) if merge else None
    torch.set_num_threads(threads or physical_cores())
    pause = pause_ms / 1000
    columns = plan_columns(list(batch_sizes), list(gpu_batch_sizes), onnx, train, train_batch)
    inv = {'command': command or 'benchmarks.speed.run()', 'runs': runs, 'warmup': warmup,
           'train_runs': train_runs, 'system': system_info(torch.get_num_threads()), 'pause_ms': pause_ms,
           'ort_spinning': ort_spinning, 'per_turn': timing.INFERENCE_PER_TURN,
           'columns': [c['key'] for c in columns if not c['key'].startswith('gpu')]}
    built, info = build_models(names, imgsz)
    cells: dict = {}

    def save() -> dict:
        inv['system']['loadavg_end'] = timing.loadavg()
        rep = merge_report(prev, new_report(names, info, cells, columns, inv, imgsz))
        write_results(out, rep)
        return rep

    fused = {n: m if isinstance(m, str) else _safe(fused_copy, m) for n, m in built.items()}
    cells.update(stage_cpu(fused, list(batch_sizes), imgsz, runs, warmup, pause))
    save()
    if onnx:
        cells.update(stage_onnx(fused, imgsz, runs, warmup, torch.get_num_threads(), pause, ort_spinning))
        save()
    cells.update(stage_gpu(fused, list(gpu_batch_sizes), imgsz, runs, warmup, pause))
    del fused
    if train:
        cells.update(stage_train(built, train_batch, imgsz, train_runs, warmup, pause))
    return save()


def _safe(fn: Callable, *a: object) -> object:
    """fn(*a), or the short error text when it raises."""
    try:
        return fn(*a)
    except Exception as e:
        return short_error(e)


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', nargs='+', default=None, help=f'model names or YAML paths (default: all of {MODELS})')
    p.add_argument('--imgsz', type=int, default=640, help='square input size (pixels)')
    p.add_argument('--runs', type=int, default=20, help='timed runs per cell (median reported)')
    p.add_argument('--warmup', type=int, default=1, help='untimed runs before timing')
    p.add_argument('--batch-sizes', nargs='*', type=int, default=[1, 8], help='CPU eager batch sizes (none: skip)')
    p.add_argument('--gpu-batch-sizes', nargs='*', type=int, default=[1, 32], help='GPU fp16 batch sizes')
    p.add_argument('--no-onnx', action='store_true', help='skip the ONNX Runtime column')
    p.add_argument('--no-train', action='store_true', help='skip the training-step column')
    p.add_argument('--train-batch', type=int, default=8, help='training-step batch size')
    p.add_argument('--train-runs', type=int, default=3, help='timed training steps per model')
    p.add_argument('--threads', type=int, default=0, help='torch/ORT threads (0: the physical cores available)')
    p.add_argument('--pause-ms', type=float, default=timing.PAUSE_S * 1000, help='sleep before every run (ms)')
    p.add_argument('--ort-spinning', action='store_true',
                   help="let ORT's idle threads spin (its default; faster alone, contention when interleaved)")
    p.add_argument('--out', type=str, default=str(ROOT / 'benchmarks/results'), help='output directory')
    p.add_argument('--merge', action='store_true',
                   help="merge into out/speed.json: this run's cells replace those models' cells, others are kept")
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> dict:
    command = 'python benchmarks/speed.py ' + ' '.join(sys.argv[1:])
    try:
        rep = run(models=opt.models, imgsz=opt.imgsz, runs=opt.runs, warmup=opt.warmup, batch_sizes=opt.batch_sizes,
                  gpu_batch_sizes=opt.gpu_batch_sizes, onnx=not opt.no_onnx, train=not opt.no_train,
                  train_batch=opt.train_batch, train_runs=opt.train_runs, threads=opt.threads, out=opt.out,
                  merge=opt.merge, command=command.strip(), pause_ms=opt.pause_ms, ort_spinning=opt.ort_spinning)
    except ValueError as e:
        sys.exit(f'speed.py: {e}')
    print((Path(opt.out) / 'speed.md').read_text())
    return rep


if __name__ == '__main__':
    main(parse_opt())

#!/usr/bin/env python3
"""Where exported models spend their time in ONNX Runtime: per-node kernel times aggregated by op type.

    python benchmarks/ort_profile.py                                        # yolov5n and EfficientViT-M0, 640 px
    python benchmarks/ort_profile.py --models yolov5n yolov5-efficientvit --before --out benchmarks/results
    python benchmarks/ort_profile.py --models yolov5-efficientvit-m5 --runs 10 --no-timing

For every model: build it with random weights for ``--nc`` classes (EfficientViT's attention biases drawn non-zero,
as trained ones are), save it as a checkpoint in train.py's format, export it with ``export.run`` (the graph a user
gets, at export.py's default opset), run it ``--runs`` times in an ORT session with profiling on, take each node's
median kernel time over the runs and sum them by op type. ``--before`` adds the graph export.py wrote before
EfficientViT had an export form (the fused fast path traced as is). Unless ``--no-timing``: wall-clock medians of
ORT (spinning off, and on as ORT's default) and of PyTorch eager (fused), each in its own process, interleaved by the
method of benchmarks/timing.py, with ratios to the first model. Writes ``ort_profile.md`` into ``--out`` when given.
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import speed, speed_report, timing  # noqa: E402
from benchmarks.formats import worker_command  # noqa: E402

ATTENTION = re.compile(r'stages\.\d/stages\.\d\.\d+/stages\.\d\.\d+\.2/')  # the mixer of a block in the export form


def build_checkpoint(name: str, nc: int, path: Path) -> Path:
    """A random-weight model of YAML ``name`` for ``nc`` classes, saved as train.py saves checkpoints."""
    from models.yolo import DetectionModel
    from utils.checkpoint.format import FORMAT, FORMAT_VERSION, save_checkpoint

    model = DetectionModel(speed.model_path(name), nc=nc, verbose=False)
    speed.nonzero_attention_biases(model)
    names = {i: f'class{i}' for i in range(nc)}
    ckpt = {'format': FORMAT, 'format_version': FORMAT_VERSION, 'model': model.state_dict(), 'ema': None,
            'updates': 0, 'optimizer': None, 'model_yaml': model.yaml, 'names': names, 'nc': nc, 'epoch': -1,
            'best_fitness': 0.0, 'opt': {}, 'hyp': {}, 'date': '', 'train_state': None}
    return save_checkpoint(ckpt, path)


def eager_model(ckpt: Path) -> torch.nn.Module:
    """The checkpoint fused as detect.py runs it, Detect returning the decoded tensor only (as exported)."""
    from models.yolo import Detect
    from utils.checkpoint.model import load_model

    model = load_model(ckpt).requires_grad_(False)
    for m in model.modules():
        if isinstance(m, Detect):
            m.export = True
    return model


def export_before(model: torch.nn.Module, imgsz: int, f: Path, opset: int) -> Path:
    """The graph export.py wrote before the export form: the fused model's own forward traced, not slimmed."""
    import warnings

    im = torch.zeros(1, 3, imgsz, imgsz)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')
        torch.onnx.export(copy.deepcopy(model), im, str(f), opset_version=opset, do_constant_folding=True,
                          input_names=['images'], output_names=['output0'], dynamo=False)
    return f


def profile(f: Path, imgsz: int, threads: int, runs: int, tmp: Path) -> dict[str, tuple[str, float]]:
    """{node: (op type, median kernel µs over the runs after one warm-up)} from ORT's profiler."""
    import numpy as np

    sess = timing.ort_session(f, threads, profile=tmp / f'{f.stem}_')
    feed = {sess.get_inputs()[0].name: np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)}
    for _ in range(runs + 1):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    durs, ops = collections.defaultdict(list), {}
    for e in events:
        if e.get('cat') == 'Node' and e.get('name', '').endswith('_kernel_time'):
            name = e['name'][:-len('_kernel_time')]
            durs[name].append(e['dur'])
            ops[name] = e['args']['op_name']
    return {n: (ops[n], statistics.median(d[1:] or d)) for n, d in durs.items()}


def by_op(nodes: dict[str, tuple[str, float]]) -> dict[str, tuple[float, int]]:
    """{op type: (µs, node count)}, largest first."""
    acc: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    for op, us in nodes.values():
        acc[op][0] += us
        acc[op][1] += 1
    return dict(sorted(((k, tuple(v)) for k, v in acc.items()), key=lambda kv: -kv[1][0]))


def region(name: str, op: str) -> str:
    """Which part of an EfficientViT detector a node of the export form belongs to."""
    if op.startswith('Reorder'):
        return 'NCHWc layout reorders'
    if 'export_form/patch_embed' in name:
        return 'backbone: patch embedding'
    if ATTENTION.search(name):
        return 'backbone: window attention'
    if '/model.0/' in name:
        return 'backbone: FFN, depthwise, PatchMerging'
    return 'neck + Detect'


def op_table(graphs: dict[str, dict], top: int) -> str:
    """Markdown: one row per op type (the ``top`` largest of any graph), per graph its ms per run, share, nodes."""
    tables = {g: by_op(n) for g, n in graphs.items()}
    totals = {g: sum(us for _, us in n.values()) for g, n in graphs.items()}
    rank = collections.Counter()
    for t in tables.values():
        for op, (us, _) in t.items():
            rank[op] = max(rank[op], us)
    ops = [op for op, _ in rank.most_common(top)]
    head = '| op type | ' + ' | '.join(f'{g}: ms (share, nodes)' for g in graphs) + ' |'
    lines = [head, '|---|' + '---:|' * len(graphs)]
    for op in ops:
        cells = []
        for g, t in tables.items():
            us, n = t.get(op, (0.0, 0))
            cells.append(f'{us / 1000:.2f} ({100 * us / totals[g]:.0f} %, {n})' if n else '-')
        lines.append(f'| {op} | ' + ' | '.join(cells) + ' |')
    lines.append('| **all** | ' + ' | '.join(f'**{totals[g] / 1000:.1f}** ({len(graphs[g])} nodes)'
                                           for g in graphs) + ' |')
    return '\n'.join(lines)


def region_table(label: str, nodes: dict[str, tuple[str, float]]) -> str:
    """Markdown: an export-form graph's kernel time by part of the model."""
    acc = collections.Counter()
    for name, (op, us) in nodes.items():
        acc[region(name, op)] += us
    total = sum(acc.values())
    rows = [f'| {r} | {us / 1000:.2f} | {100 * us / total:.0f} % |' for r, us in acc.most_common()]
    return '\n'.join([f'| {label}: part | ms | share |', '|---|---:|---:|', *rows])


def conv_shapes(f: Path) -> dict[str, tuple[str, int]]:
    """{tensor name: (kind, multiply-adds)} for every Conv of an ONNX file, by its output and by the output of an
    activation or Add reading it (what ORT names the fused node after), shapes from ONNX shape inference."""
    import onnx
    from onnx import shape_inference

    g = shape_inference.infer_shapes(onnx.load(str(f))).graph
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*g.value_info, *g.output)}
    weights = {t.name: list(t.dims) for t in g.initializer}
    out = {}
    for n in g.node:
        if n.op_type != 'Conv':
            continue
        w, y = weights.get(n.input[1]), dims.get(n.output[0])
        if not w or not y or 0 in y:
            continue
        groups = next((a.i for a in n.attribute if a.name == 'group'), 1)
        k = f'{w[2]}×{w[3]}'
        kind = f'depthwise {k}' if groups > 1 and groups == y[1] else f'grouped {k}' if groups > 1 else k
        out[n.output[0]] = (kind, int(np.prod(y)) * int(np.prod(w[1:])))
    for n in g.node:
        if n.op_type in ('Relu', 'Sigmoid', 'Mul', 'Add') and n.input[0] in out and n.output[0] not in out:
            out[n.output[0]] = out[n.input[0]]
    return out


def conv_table(label: str, nodes: dict[str, tuple[str, float]], shapes: dict[str, tuple[str, int]]) -> str:
    """Markdown: a graph's Conv kernel time by kind of convolution, with the arithmetic rate each kind reaches
    (GFLOP/s = 2 x multiply-adds / kernel time) and the fastest single Conv node's rate."""
    acc: dict[str, list] = collections.defaultdict(lambda: [0.0, 0, 0])
    best = 0.0
    for name, (op, us) in nodes.items():
        key = name.removesuffix('_nchwc')
        if 'Conv' not in op or key not in shapes or us <= 0:
            continue
        kind, macs = shapes[key]
        a = acc[kind]
        a[0], a[1], a[2] = a[0] + us, a[1] + macs, a[2] + 1
        best = max(best, 2 * macs / us / 1e3)
    rows = [f'| {k} | {n} | {us / 1000:.2f} | {macs / 1e9:.3f} | {2 * macs / us / 1e3:.0f} |'
            for k, (us, macs, n) in sorted(acc.items(), key=lambda kv: -kv[1][0])]
    us, macs = sum(a[0] for a in acc.values()), sum(a[1] for a in acc.values())
    rows.append(f'| **all** | {sum(a[2] for a in acc.values())} | **{us / 1000:.2f}** | {macs / 1e9:.3f} | '
                f'{2 * macs / max(us, 1e-9) / 1e3:.0f} (fastest node {best:.0f}) |')
    return '\n'.join([f'| {label}: conv kind | nodes | ms | GMAC | GFLOP/s |', '|---|---:|---:|---:|---:|', *rows])


def wall_table(tasks: dict[str, dict[str, list[str]]], runs: int, base: str) -> str:
    """Markdown: per model the wall-clock medians of its runtimes (worker commands), each in its own process,
    interleaved in warm turns (benchmarks/timing.py); ratios to ``base``."""
    flat = {f'{m}|{r}': argv for m, rt in tasks.items() for r, argv in rt.items()}
    res = timing.interleaved_processes(flat, runs, warmup=2)
    cols = list(next(iter(tasks.values())))
    med = {k: statistics.median(v) if isinstance(v, list) else None for k, v in res.items()}
    lines = ['| model | ' + ' | '.join(f'{c} ms' for c in cols) + ' |', '|---|' + '---:|' * len(cols)]
    for m in tasks:
        cells = []
        for c in cols:
            v, b = med.get(f'{m}|{c}'), med.get(f'{base}|{c}')
            cells.append('error' if v is None else f'{v:.1f} ({v / b:.2f}×)' if b else f'{v:.1f}')
        lines.append(f'| {m} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def _has_efficientvit(model: torch.nn.Module) -> bool:
    from models.efficientvit import EfficientViT

    return any(isinstance(m, EfficientViT) for m in model.modules())


def _runtimes(f: Path, ckpt: Path, image: Path, threads: int) -> dict[str, list[str]]:
    """The timing workers of one model: its ONNX graph in ORT (spinning off, on) and its fused eager forward."""
    return {'ORT': worker_command('onnx', f, threads, image),
            'ORT spinning': worker_command('onnx', f, threads, image, spinning=True),
            'eager': worker_command('pytorch', ckpt, threads, image)}


def run(models: list[str], imgsz: int = 640, nc: int = 6, runs: int = 20, threads: int = 0, before: bool = False,
        wall: bool = True, top: int = 14, note: str = '', command: str = '', prof: bool = True) -> str:
    """Profile (and time) every model; returns the Markdown report."""
    import export

    threads = threads or timing.physical_cores()
    torch.set_num_threads(threads)
    load0 = timing.loadavg()
    graphs, regions, convs, tasks = {}, [], [], {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        image = tmp / 'image.npy'
        np.save(image, np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32))
        for name in models:
            label = speed_report.model_label(name)
            ckpt = build_checkpoint(name, nc, tmp / f'{label}.pt')
            f = export.run(weights=ckpt, imgsz=[imgsz], include=['onnx'])[0]
            model = eager_model(ckpt)
            if prof and before and _has_efficientvit(model):
                fb = export_before(model, imgsz, tmp / f'{label}_before.onnx', opset=12)
                graphs[f'{label} (before)'] = profile(fb, imgsz, threads, runs, tmp)
            if prof:
                graphs[label] = profile(f, imgsz, threads, runs, tmp)
                convs.append(conv_table(label, graphs[label], conv_shapes(f)))
                print(f'profiled {label}', flush=True)
            if prof and _has_efficientvit(model):
                regions.append(region_table(label, graphs[label]))
            if wall:
                tasks[label] = _runtimes(f, ckpt, image, threads)
        timed = wall_table(tasks, runs, speed_report.model_label(models[0])) if tasks else ''
    s = speed.system_info(threads)
    lines = [
        '# ONNX Runtime profile', '',
        f"`{command or 'benchmarks.ort_profile.run()'}` — {s['date']}. {s['cpu']}, instruction sets: {s['isa']}; "
        f"{threads} thread(s); onnxruntime {s['onnxruntime']}, torch {s['torch']}; {imgsz}x{imgsz}, batch 1, "
        f"nc={nc}, random weights. Load average {speed_report.loadavg_text(load0)} at start, "
        f"{speed_report.loadavg_text(timing.loadavg())} at end"
        + (f'. {note}' if note else '') + '.', '',
    ]
    if graphs:
        lines += [
            '## Kernel time by op type', '', op_table(graphs, top), '',
            f"Each node's ORT kernel time (profiling on, intra-op spinning off), median over {runs} runs after one "
            'warm-up, summed by op type; a node of the optimised graph is what ORT runs (Conv+ReLU, Conv+Add fused, '
            'NCHWc Reorders inserted). "(before)": the graph export.py wrote before EfficientViT had an export form.']
    if regions:
        lines += ['', '## EfficientViT by part of the model', '', *[r + '\n' for r in regions]]
    if convs:
        lines += ['', '## Convolutions: time and arithmetic rate by kind', '', *[c + '\n' for c in convs],
                  'Multiply-adds from ONNX shape inference on the exported graph; a Conv fused with its activation or '
                  'residual Add counts once. The fastest node bounds what this CPU and ORT reach on a convolution.']
    if timed:
        lines += ['', '## Wall clock', '', timed, '',
                  f'Medians of {runs} turns, every model and runtime in its own process, interleaved, '
                  f'{timing.PAUSE_S * 1000:.0f} ms pause before each turn, a turn timing the last of '
                  f'{timing.INFERENCE_PER_TURN} back-to-back runs (benchmarks/timing.py); ratios to the first '
                  'model in the same column. "ORT": intra-op spinning off (the benchmark method); "ORT spinning": '
                  "ORT's default, what a single-runtime deployment gets; eager: the fused PyTorch model."]
    return '\n'.join(lines) + '\n'


def profile_files(files: list[Path], imgsz: int = 640, runs: int = 20, threads: int = 0, top: int = 14,
                  command: str = '') -> str:
    """Kernel time by op type of existing ONNX files (e.g. an FP32 export next to its INT8 file); Markdown."""
    threads = threads or timing.physical_cores()
    with tempfile.TemporaryDirectory() as d:
        graphs = {Path(f).name: profile(Path(f), imgsz, threads, runs, Path(d)) for f in files}
    s = speed.system_info(threads)
    return '\n'.join([
        '# ONNX Runtime profile of existing files', '',
        f"`{command or 'benchmarks.ort_profile.profile_files()'}` — {s['date']}. {s['cpu']}, instruction sets: "
        f"{s['isa']}; {threads} thread(s); onnxruntime {s['onnxruntime']}; {imgsz}x{imgsz}, batch 1.", '',
        op_table(graphs, top), '',
        f"Each node's ORT kernel time (profiling on, intra-op spinning off), median over {runs} runs after one "
        'warm-up, summed by op type.']) + '\n'


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--models', nargs='+', default=['yolov5n', 'yolov5-efficientvit'], help='model names or YAMLs')
    p.add_argument('--imgsz', type=int, default=640, help='square input size (pixels)')
    p.add_argument('--nc', type=int, default=6, help='classes (data/shapes.yaml has 6)')
    p.add_argument('--runs', type=int, default=20, help='profiled and timed runs per model')
    p.add_argument('--threads', type=int, default=0, help='torch/ORT threads (0: the physical cores available)')
    p.add_argument('--before', action='store_true', help="also profile EfficientViT's graph before the export form")
    p.add_argument('--no-timing', action='store_true', help='profile only, no wall-clock table')
    p.add_argument('--no-profile', action='store_true', help='wall-clock table only')
    p.add_argument('--top', type=int, default=14, help='op types listed')
    p.add_argument('--note', default='', help='a sentence for the header (e.g. how loaded the machine was)')
    p.add_argument('--files', nargs='+', default=None, help='profile these ONNX files instead of --models')
    p.add_argument('--out', default='', help='directory for ort_profile.md (default: print only)')
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opt = parse_opt(argv)
    if opt.runs < 1 or opt.imgsz < 32 or opt.nc < 1:
        sys.exit('ort_profile.py: --runs and --nc must be >= 1 and --imgsz >= 32')
    if opt.no_timing and opt.no_profile:
        sys.exit('ort_profile.py: --no-timing and --no-profile leave nothing to do')
    if opt.files:
        missing = [f for f in opt.files if not Path(f).is_file()]
        if missing:
            sys.exit(f'ort_profile.py: no such ONNX file {missing[0]}')
        md = profile_files([Path(f) for f in opt.files], opt.imgsz, opt.runs, opt.threads, opt.top,
                           'python benchmarks/ort_profile.py ' + ' '.join(sys.argv[1:] if argv is None else argv))
        print(md)
        if opt.out:
            Path(opt.out).mkdir(parents=True, exist_ok=True)
            (Path(opt.out) / 'ort_profile_files.md').write_text(md)
        return 0
    missing = [m for m in opt.models if not speed.model_path(m).is_file()]
    if missing:
        sys.exit(f'ort_profile.py: no model YAML for {missing}')
    command = 'python benchmarks/ort_profile.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    md = run(opt.models, opt.imgsz, opt.nc, opt.runs, opt.threads, opt.before, not opt.no_timing, opt.top, opt.note,
             command.strip(), prof=not opt.no_profile)
    print(md)
    if opt.out:
        Path(opt.out).mkdir(parents=True, exist_ok=True)
        (Path(opt.out) / 'ort_profile.md').write_text(md)
    return 0


if __name__ == '__main__':
    sys.exit(main())

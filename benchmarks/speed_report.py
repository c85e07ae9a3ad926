"""The report of benchmarks/speed.py: one JSON-able dict per invocation, several invocations merged into one
(each cell keeping the baseline samples of the run that measured it, so every ratio stays a same-run ratio),
rendered as speed.md (a Markdown table of medians and ratios) and speed.png (latency against parameters).
Measuring is speed.py; this module only reads the cells.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

MODELS = ['yolov5n', 'yolov5s', 'yolov5m', 'yolov5l', 'yolov5x', 'yolov5-efficientvit'] + [
    f'yolov5-efficientvit-m{i}' for i in range(1, 6)] + [
    f'yolov5-timm-{n}' for n in ('mobilenetv3', 'efficientnet_b0', 'resnet18')]
BASELINE = 'yolov5n'  # every ratio is to this model, measured in the same invocation
KIND_ORDER = {'cpu': 0, 'ort': 1, 'gpu': 2, 'train': 3}  # column order: kind, then batch size


def model_label(name: str) -> str:
    """Row label: the YAML stem."""
    return Path(name).stem


def short_label(name: str) -> str:
    """Plot label: 'yolov5-efficientvit' -> 'EffViT-M0', 'yolov5-efficientvit-m3' -> 'EffViT-M3',
    'yolov5-timm-resnet18' -> 'timm-resnet18', else the stem."""
    stem = model_label(name)
    if stem.startswith('yolov5-efficientvit'):
        return 'EffViT-' + (stem.rsplit('-', 1)[1].upper() if stem.count('-') == 2 else 'M0')
    return stem.removeprefix('yolov5-')


def median(cell: list[float] | str | None) -> float | None:
    """Median of the samples, or None for an error/absent cell."""
    return statistics.median(cell) if isinstance(cell, list) and cell else None


def spread(cell: list[float] | str | None) -> float | None:
    """(max - min) / median of the samples: how noisy this cell was (None below two samples)."""
    m = median(cell)
    return (max(cell) - min(cell)) / m if m and len(cell) > 1 else None


def _order(names: list[str]) -> list[str]:
    """Known models in MODELS order, then the others as given."""
    known = [n for n in MODELS if n in names]
    return known + [n for n in names if n not in known]


def merge_report(prev: dict | None, cur: dict) -> dict:
    """Cells of ``cur`` replace those of ``prev`` model by model; columns and model rows are the union.

    Each cell keeps the baseline samples of the invocation that measured it, so its ratio stays a same-run ratio.
    """
    if not prev:
        return cur
    if prev['imgsz'] != cur['imgsz']:
        raise ValueError(f"--merge: the existing speed.json was measured at {prev['imgsz']} px, this run at "
                         f"{cur['imgsz']} px")
    rep = {'imgsz': cur['imgsz'], 'names': _order(list(dict.fromkeys(prev['names'] + cur['names']))),
           'info': {**prev['info'], **cur['info']}, 'cells': {}, 'bases': {}, 'origin': {},
           'invocations': prev['invocations'] + cur['invocations']}
    shift = len(prev['invocations'])
    cur = {**cur, 'origin': {k: {n: i + shift for n, i in col.items()} for k, col in cur['origin'].items()}}
    cols = {c['key']: c for c in prev['columns'] + cur['columns']}
    rep['columns'] = sorted(cols.values(), key=lambda c: (KIND_ORDER.get(c['key'].split('_')[0], 9), c['batch']))
    for part in ('cells', 'bases', 'origin'):
        for k in cols:
            rep[part][k] = {**prev[part].get(k, {}), **cur[part].get(k, {})}
    return rep


def new_report(names: list[str], info: dict, cells: dict, columns: list[dict], invocation: dict,
               imgsz: int) -> dict:
    """The report of one invocation; bases[col][model] = the baseline's samples of that column in this run,
    origin[col][model] = index of the invocation that measured the cell."""
    bases = {k: dict.fromkeys(col, col.get(BASELINE)) for k, col in cells.items()}
    origin = {k: dict.fromkeys(col, 0) for k, col in cells.items()}
    return {'imgsz': imgsz, 'names': _order(names), 'info': info, 'cells': cells, 'bases': bases,
            'origin': origin, 'columns': columns, 'invocations': [invocation]}


def format_cell(cell: list[float] | str | None, base: list[float] | str | None, col: dict) -> str:
    """'value (ratio×)': latency in ms or throughput in img/s; ratio = time / baseline time (lower is faster)."""
    if cell is None:
        return 'not run'
    if isinstance(cell, str):
        return cell
    m, b = median(cell), median(base)
    value = col['batch'] * 1000 / m if col['unit'] == 'img/s' else m
    text = f'{value:.2f}' if value < 10 else f'{value:.1f}' if value < 1000 else f'{value:.0f}'
    return f'{text} ({m / b:.2f}×)' if b else text


def format_table(rep: dict) -> str:
    """The Markdown table: one row per model, one column per measurement, ratios against the baseline."""
    head = ['Model', 'Params (M)', f"GFLOPs@{rep['imgsz']}"] + [c['title'] for c in rep['columns']]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '|'.join(['---'] + ['---:'] * (len(head) - 1)) + '|']
    for n in rep['names']:
        i = rep['info'].get(n) or {}
        row = [model_label(n), f"{i['params'] / 1e6:.2f}" if 'params' in i else '-',
               f"{i['gflops']:.3g}" if i.get('gflops') else '-']
        for c in rep['columns']:
            k = c['key']
            cell = rep['cells'].get(k, {}).get(n)
            text = format_cell(cell, rep['bases'].get(k, {}).get(n), c)
            if isinstance(cell, list) and len(rep['invocations']) > 1:
                text += f" [{rep['origin'][k][n] + 1}]"  # which invocation measured it
            row.append('(same)' if text.startswith('error') and text in row else text)
        lines.append('| ' + ' | '.join(row) + ' |')
    return '\n'.join(lines)


def noise_line(rep: dict) -> str:
    """Per column, the median over models of (max - min) / median of the timed runs."""
    parts = []
    for c in rep['columns']:
        s = [v for v in (spread(x) for x in rep['cells'].get(c['key'], {}).values()) if v is not None]
        if s:
            parts.append(f"{c['title'].rsplit(' ', 1)[0]} {100 * statistics.median(s):.0f} %")
    return ', '.join(parts) if parts else 'n/a'


def loadavg_text(la: list[float] | None) -> str:
    """A load average triple as '1.0/2.0/3.0' ('n/a' when not recorded)."""
    return '/'.join(f'{x:.1f}' for x in la) if la else 'n/a'


def format_invocation(inv: dict) -> str:
    """One bullet: command, date, threads, runs and load of one invocation."""
    s, cols = inv['system'], inv.get('columns')
    runs = []
    if cols is None or any(not k.startswith('train') for k in cols):
        runs.append(f"median of {inv['runs']} run(s)")
    if cols is None or any(k.startswith('train') for k in cols):
        runs.append(f"train: median of {inv['train_runs']} step(s)")
    if 'pause_ms' in inv:
        spin, turn = 'on' if inv.get('ort_spinning') else 'off', inv.get('per_turn', 1)
        how = (f"{inv['pause_ms']:g} ms pause before each run, ORT spinning {spin}"
               + (f', inference: the last of {turn} back-to-back runs' if turn > 1 else ''))
    else:  # invocations before benchmarks/timing.py
        how = 'no pause, ORT threads spinning (its default; contention between runtimes)'
    return (f"- `{inv['command']}` — {s['date']}, {s['threads']} thread(s), {', '.join(runs)} after {inv['warmup']} "
            f"warm-up, {how}; load average {loadavg_text(s.get('loadavg_start'))} at start, "
            f"{loadavg_text(s.get('loadavg_end'))} at end" + (f" ({inv['note']})" if inv.get('note') else ''))


def format_report(rep: dict) -> str:
    """speed.md: machine, invocations, the table, how to read it."""
    s = rep['invocations'][-1]['system']
    return '\n'.join([
        '# Speed benchmark', '',
        f"Machine: {s['cpu']} ({s['logical_cpus']} logical CPUs"
        + (f", {s['physical_cores']} physical core(s) usable" if 'physical_cores' in s else '')
        + f"; instruction sets: {s.get('isa', 'not recorded')}), torch {s['torch']}, onnxruntime "
        f"{s['onnxruntime']}, Python {s['python']}, GPU: {s['gpu']}. Made by:", '',
        *[f'{i}. ' + format_invocation(inv)[2:] for i, inv in enumerate(rep['invocations'], 1)], '',
        format_table(rep), '',
        f"Input {rep['imgsz']}x{rep['imgsz']}, random data. Each cell: median of the timed runs after warm-up, "
        'models interleaved run by run, one process, a pause before every turn so that no runtime\'s idle threads '
        'still hold the cores when the next task starts; an inference turn times the last of back-to-back runs '
        '(caches warm, as in a video stream). PyTorch columns: BN-fused fp32 model under '
        'torch.inference_mode, ms per batch. ORT: the same fused model exported by export.py (default opset; '
        'EfficientViT in its export form, slimmed; decoded output, no NMS), each session in its own worker process '
        '(since 2026-12-07; before, in this process), CPUExecutionProvider, graph '
        'optimisation level ALL, intra-op threads = the thread count above, 1 inter-op thread, spinning as stated '
        '(off: each parallel op wakes its threads, which costs graphs of many small ops most). Train step: forward '
        '+ ComputeLoss + backward + SGD step on random targets in float32, as images/s (train.py trains under bf16 '
        'autocast on CPUs with AMX or AVX-512 BF16, unless --no-amp: README "Training speed"). The instruction sets '
        'matter: the same models compare differently on AVX2 and AVX-512 CPUs.',
        f'(n.nn×) is the time relative to {BASELINE} measured in the same invocation (lower is faster; for the '
        'train column the ratio of step times); [i] names that invocation. "not run": not measured by any invocation.',
        f'Run-to-run spread (max-min)/median, median over models: {noise_line(rep)}. A load average above '
        'the thread count at start means other work shared the CPU: compare ratios, not absolute ms across runs.',
        ''])


def plot_speed(rep: dict, file: Path) -> Path | None:
    """Latency of the first column against parameters, one labelled point per model; None when nothing to plot."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    if not rep['columns']:
        return None
    col = rep['columns'][0]
    cells, info = rep['cells'].get(col['key'], {}), rep['info']
    pts = [(n, info[n]['params'] / 1e6, median(cells.get(n))) for n in rep['names'] if info.get(n)]
    pts = [p for p in pts if p[2] is not None]
    if not pts:
        return None
    fig = Figure(figsize=(8, 5.5), tight_layout=True)
    ax = fig.add_subplot()
    for n, p, t in pts:
        evit = 'efficientvit' in n
        ax.scatter(p, t, marker='o' if evit else 's', color='tab:orange' if evit else 'tab:blue', s=40)
        ax.annotate(short_label(n), (p, t), textcoords='offset points', xytext=(5, 4), fontsize=8)
    ax.scatter([], [], marker='s', color='tab:blue', label='YOLOv5 (CSP-Darknet)')
    ax.scatter([], [], marker='o', color='tab:orange', label='YOLOv5 + EfficientViT backbone')
    ax.set_xscale('log')
    ax.set_yscale('log')
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(ScalarFormatter())
    ax.margins(0.15)
    ax.set_xlabel('parameters (M)')
    ax.set_ylabel(f"{col['title']} (median)")
    ax.set_title(f"Latency vs size at {rep['imgsz']}x{rep['imgsz']}: {col['title']}")
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(loc='upper left')
    fig.savefig(file, dpi=120)
    return file


def write_results(out: Path, rep: dict) -> None:
    """Write speed.md, speed.json and speed.png into out."""
    out.mkdir(parents=True, exist_ok=True)
    (out / 'speed.md').write_text(format_report(rep))
    (out / 'speed.json').write_text(json.dumps(rep, indent=1))
    plot_speed(rep, out / 'speed.png')


def load_previous(out: Path) -> dict | None:
    """The speed.json already in out (for --merge), or None."""
    f = out / 'speed.json'
    if not f.is_file():
        return None
    try:
        rep = json.loads(f.read_text())
        assert {'imgsz', 'names', 'info', 'cells', 'bases', 'columns', 'invocations'} <= set(rep)
        rep.setdefault('origin', {k: dict.fromkeys(c, 0) for k, c in rep['cells'].items()})  # files before 'origin'
        return rep
    except (ValueError, AssertionError):
        raise ValueError(f'--merge: {f} is not a speed.json written by this script') from None

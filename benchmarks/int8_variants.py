"""INT8 ONNX variants of one model side by side: accuracy (mAP on a dataset) and ONNX Runtime latency, to choose
utils.export.int8_onnx.Int8Config's default (the fastest variant at equal accuracy).

Variants: QDQ and QOperator formats x per-channel and per-tensor weights, each with the FP32 groups of ``--keep``
(``none``, ``softmax``, ``softmax,attn_matmul``, ...; the Detect decode is always FP32), all calibrated on the same
images. Every file is validated on the val split (batch 1, as val.py runs .onnx files) and, unless ``--runs 0``,
timed at batch 1 with benchmarks/timing.py's method (one worker process per file, same threads, spinning off, pauses,
interleaved, medians) next to the FP32 ONNX file; ratios are to the FP32 file in the same run. Writes
``int8_variants.md`` in the run dir.

``--self-labels CONF`` validates instead against the FP32 file's own detections (confidence >= CONF) on the val
images: an agreement score (FP32 scores ~1 on it) that isolates what quantization changes, usable with weights
trained too briefly for their real-label mAP to tell variants apart.

Usage:
    python benchmarks/int8_variants.py --weights best.pt --data data/shapes.yaml --img 256 --runs 0   # accuracy
    python benchmarks/int8_variants.py --weights best.pt --data data/shapes.yaml --img 640 --runs 20  # + timing
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # entry point: make the repository importable when run as a script

from benchmarks import timing  # noqa: E402
from benchmarks.formats import (  # noqa: E402
    add_timing_and_run_dir,
    model_parser,
    run_with_one_line_errors,
    sample_image,
    size_mb,
    time_all,
    validate,
)
from utils.core.logging import LOGGER, increment_path  # noqa: E402


def variants(keeps: list[str], formats: list[str], granularity: list[str],
             methods: tuple[str, ...] = ('minmax',)) -> list:
    """Int8Config for every (format, per-channel?, keep, calibration method) combination asked for."""
    from utils.export.int8_onnx import Int8Config

    out = []
    for keep in keeps:
        groups = tuple(k for k in keep.split(',') if k and k != 'none')
        for fmt in formats:
            for g in granularity:
                out += [Int8Config(fmt=fmt, per_channel=g == 'per-channel', keep_fp32=groups, method=m)
                        for m in methods]
    return out


def table(rows: list[dict]) -> str:
    """Markdown: variant, size, mAP50, mAP50-95, change from FP32, ms and ratio to the FP32 ONNX file."""
    ref = rows[0]
    lines = ['| Variant | Size (MB) | mAP50 | mAP50-95 | Δ mAP50-95 (points) | ms/img b1 | vs ONNX FP32 |',
             '|---|---|---|---|---|---|---|']
    for r in rows:
        ms, ref_ms = r.get('ms'), ref.get('ms')
        t = f'{ms:.1f}' if isinstance(ms, float) else (ms or 'not timed')
        ratio = f'{ms / ref_ms:.2f}×' if isinstance(ms, float) and isinstance(ref_ms, float) else '-'
        delta = f"{100 * (r['map'] - ref['map']):+.1f}"
        lines.append(f"| {r['name']} | {r['size']:.1f} | {r['map50']:.3f} | {r['map']:.3f} | {delta} | {t} | {ratio} |")
    return '\n'.join(lines)


def self_labelled(fp32: Path, data: str, imgsz: int, save_dir: Path, conf: float) -> Path:
    """A dataset YAML whose val images are ``data``'s and whose labels are ``fp32``'s own detections."""
    import detect
    from utils.data.config import check_dataset
    from utils.export.calibration import split_files

    files, _ = split_files(check_dataset(data), 'val')
    root = save_dir / 'self_labels'
    (root / 'images').mkdir(parents=True, exist_ok=True)
    (root / 'labels').mkdir(exist_ok=True)
    for f in files:
        shutil.copy(f, root / 'images' / f.name)
    out = detect.run(weights=fp32, source=root / 'images', imgsz=[imgsz], conf_thres=conf, save_txt=True,
                     nosave=True, project=save_dir, name='self_detect', exist_ok=True)
    for f in (out / 'labels').glob('*.txt'):
        shutil.copy(f, root / 'labels' / f.name)
    yaml_file = root / 'data.yaml'
    names = check_dataset(data)['names']
    yaml_file.write_text(yaml.safe_dump({'path': str(root), 'train': 'images', 'val': 'images', 'names': names}))
    return yaml_file


def run(opt: argparse.Namespace) -> Path:
    import export
    from utils.export.calibration import CalibrationSet
    from utils.export.int8_onnx import quantize_onnx

    save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok)
    save_dir.mkdir(parents=True, exist_ok=True)
    pt = save_dir / Path(opt.weights).name
    shutil.copy(opt.weights, pt)
    fp32 = export.run(weights=pt, imgsz=[opt.img], include=['onnx'], opset=13)[0]
    calib = CalibrationSet(opt.data, (opt.img, opt.img), n=opt.calib_images)
    files = {'ONNX FP32': fp32}
    for cfg in variants(opt.keep, opt.formats, opt.granularity, opt.methods):
        files[cfg.tag] = quantize_onnx(fp32, calib, cfg, out=save_dir / f'{pt.stem}-{cfg.tag}.onnx')
    val_data = self_labelled(fp32, opt.data, opt.img, save_dir, opt.self_labels) if opt.self_labels else opt.data
    rows = []
    for name, f in files.items():
        m50, m = validate(f, val_data, opt.img, save_dir / 'val', name)
        rows.append({'name': name, 'size': size_mb(f), 'map50': m50, 'map': m})
        LOGGER.info(f'{name}: mAP50 {m50:.4f} mAP50-95 {m:.4f}')
    threads = opt.threads or timing.physical_cores()
    if opt.runs:
        times = time_all({n: f for n, f in files.items()}, sample_image(opt.data, opt.img), threads, opt.runs,
                         opt.warmup, kinds={n: 'onnx' for n in files})
        for r in rows:
            r['ms'] = times[r['name']]
    against = f" against the FP32 file's detections at conf >= {opt.self_labels}" if opt.self_labels else ''
    how = (f'{threads} threads, one process per file (ORT spinning off, medians of {opt.runs} interleaved turns, '
           f'each the last of {timing.INFERENCE_PER_TURN} back-to-back runs)' if opt.runs else 'not timed')
    text = (f'Model `{Path(opt.weights).name}` on `{opt.data}`{against} at {opt.img}×{opt.img}, {len(calib)} '
            f'calibration images, batch 1, {how}.\n'
            f'CPU: {timing.cpu_name()} ({timing.cpu_isa()}); load average at the end {timing.loadavg()}.\n'
            f'Command: `python benchmarks/int8_variants.py {" ".join(sys.argv[1:])}`\n\n{table(rows)}\n')
    (save_dir / 'int8_variants.md').write_text(text)
    LOGGER.info('\n' + text + f'\nResults saved to {save_dir}')
    return save_dir


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = model_parser(__doc__)
    p.add_argument('--formats', nargs='+', default=['qdq', 'qoperator'], choices=['qdq', 'qoperator'])
    p.add_argument('--granularity', nargs='+', default=['per-channel', 'per-tensor'],
                   choices=['per-channel', 'per-tensor'])
    p.add_argument('--keep', nargs='+', default=['softmax'],
                   help="FP32 groups per variant set: 'none', 'softmax', 'softmax,attn_matmul', 'head_conv', ...")
    p.add_argument('--methods', nargs='+', default=['minmax'], choices=['minmax', 'entropy', 'percentile'],
                   help='calibration methods (ranges from min/max, KL entropy, or the 99.999th percentile)')
    p.add_argument('--calib-images', type=int, default=300, help='calibration images (train split)')
    p.add_argument('--self-labels', type=float, default=0.0, metavar='CONF',
                   help="validate against the FP32 file's own detections at this confidence (0: the real labels)")
    add_timing_and_run_dir(p, 'variant', 'ORT intra-op threads', 'int8')
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> None:
    run_with_one_line_errors('int8_variants.py', run, opt)


if __name__ == '__main__':
    main(parse_opt())

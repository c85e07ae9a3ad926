"""Every export format of one model: file size, mAP50-95 on a dataset and CPU latency, in one table (YOLOv5's
benchmarks.py for this project's formats).

The checkpoint is copied into the run directory and exported there to every format this machine can run: PyTorch
(the fused .pt), TorchScript, ONNX, ONNX INT8, OpenVINO FP32 and INT8 (when ``openvino``/``nncf`` are installed;
otherwise their rows say so). Each file is validated by val.py's ``run`` on the dataset's val split at ``--img``
(batch 1, square images, as every exported format runs) and timed at batch 1 on one letterboxed val image with
benchmarks/timing.py's method: every format in its own worker process (runtimes in one process slow each other
down), all on the same threads (the physical cores), ONNX Runtime spinning off, ``PAUSE_S`` of sleep before every
run, the formats interleaved run by run, medians. The ratio column
divides by PyTorch's median from the same run: compare ratios, not milliseconds across runs or machines. The table
is printed and written as ``formats.md`` (with the CPU and its instruction sets) in the run directory.

Usage:
    python benchmarks/formats.py --weights runs/train/exp/weights/best.pt --data data/shapes.yaml --img 640
    python benchmarks/formats.py --weights best.pt --data data/shapes.yaml --img 256 --formats pytorch onnx onnx-int8
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # entry point: make the repository importable when run as a script

from benchmarks import timing  # noqa: E402
from utils.core.logging import LOGGER, increment_path  # noqa: E402

FORMATS = ('pytorch', 'torchscript', 'onnx', 'onnx-int8', 'openvino', 'openvino-int8')
LABELS = {'pytorch': 'PyTorch', 'torchscript': 'TorchScript', 'onnx': 'ONNX', 'onnx-int8': 'ONNX INT8',
          'openvino': 'OpenVINO', 'openvino-int8': 'OpenVINO INT8'}


def size_mb(path: Path) -> float:
    """Size of a file, or of everything in a directory (OpenVINO), in MB."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob('*') if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def failure(e: BaseException) -> str:
    """One table cell for a format that failed: the error's type and the first line of its message, shortened."""
    return f'failed: {timing.reason(e)}'


def export_all(pt: Path, data: str, imgsz: int, formats: list[str]) -> dict[str, Path | str]:
    """Each format's file exported from ``pt`` (next to it), or the one-line reason it is absent (a format that
    fails to export is a row saying so, not the end of the table)."""
    import export
    from utils.core.optional import MissingPackageError, require

    out: dict[str, Path | str] = {'pytorch': pt}

    def attempt(keys: tuple[str, ...], make: Callable[[], list[Path]]) -> None:
        try:
            files = make()
            out.update(zip(keys, files[-len(keys):]))
        except (Exception, SystemExit) as e:  # SystemExit: export.py's own one-line exits
            LOGGER.warning(f'formats: {", ".join(LABELS[k] for k in keys)}: {failure(e)}')
            out.update(dict.fromkeys(keys, failure(e)))

    if 'torchscript' in formats:
        attempt(('torchscript',), lambda: export.run(weights=pt, imgsz=[imgsz], include=['torchscript']))
    if 'onnx-int8' in formats:  # one export writes both files (the INT8 graph is quantized from the FP32 one)
        attempt(('onnx', 'onnx-int8'), lambda: export.run(weights=pt, imgsz=[imgsz], include=['onnx'], opset=13,
                                                          data=data, int8=True))
    if 'onnx' in formats and not isinstance(out.get('onnx'), Path):
        attempt(('onnx',), lambda: export.run(weights=pt, imgsz=[imgsz], include=['onnx'], opset=13)[:1])
    for fmt, int8 in (('openvino', False), ('openvino-int8', True)):
        if fmt not in formats:
            continue
        try:
            require(fmt, 'openvino', *(['nncf'] if int8 else []))
        except MissingPackageError as e:
            out[fmt] = f'not installed ({str(e).split(" package")[0].split("the ")[-1]})'
            continue
        attempt((fmt,), lambda int8=int8: export.run(weights=pt, imgsz=[imgsz], include=['openvino'], opset=13,
                                                     data=data, int8=int8))
    return {k: out[k] for k in formats if k in out}


def validate(path: Path, data: str, imgsz: int, project: Path, name: str) -> tuple[float, float]:
    """(mAP50, mAP50-95) of one file on the val split, batch 1 (val.py's run)."""
    import val

    r = val.run(data=data, weights=path, imgsz=imgsz, batch_size=1, plots=False, project=project, name=name,
                exist_ok=True, trust_weights=True, rect=False)[0]  # our own TorchScript export: trusted
    return float(r[2]), float(r[3])


def runner(fmt: str, path: Path, threads: int, spinning: bool = False) -> Callable[[np.ndarray], object]:
    """A batch-1 callable for timing ``path`` in ``fmt`` on ``threads`` threads (ORT: spinning only if asked)."""
    if fmt == 'pytorch':
        from utils.checkpoint.model import load_model

        model = load_model(path, device=torch.device('cpu'), fuse=True).eval()

        def run_pt(x: np.ndarray):
            with torch.inference_mode():
                return model(torch.from_numpy(x))
        return run_pt
    if fmt == 'torchscript':
        model = torch.jit.load(str(path), map_location='cpu').eval()

        def run_ts(x: np.ndarray):
            with torch.inference_mode():
                return model(torch.from_numpy(x))
        return run_ts
    if fmt.startswith('onnx'):
        sess = timing.ort_session(path, threads, spinning)
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})
    from utils.inference.openvino_runner import OpenVINORunner

    return OpenVINORunner(path, threads=threads)


def sample_image(data: str, imgsz: int) -> np.ndarray:
    """The first val image, letterboxed to (1, 3, imgsz, imgsz) float32 as the exports take it."""
    from utils.data.config import check_dataset
    from utils.data.images import read_image_or_none
    from utils.export.calibration import prepare, split_files

    files, where = split_files(check_dataset(data), 'val')
    im = next((x for x in map(read_image_or_none, files) if x is not None), None)
    if im is None:
        raise FileNotFoundError(f'{where}: no readable image to time with')
    return prepare(im, (imgsz, imgsz), 32)


def worker_command(fmt: str, path: Path, threads: int, image: Path, spinning: bool = False) -> list[str]:
    """The argv of a timing worker (benchmarks/format_worker.py) running ``path`` in ``fmt`` on the saved ``image``."""
    worker = str(Path(__file__).with_name('format_worker.py'))
    return [sys.executable, worker, fmt, str(path), str(threads), str(image)] + (['spinning'] if spinning else [])


def time_all(files: dict[str, Path], im: np.ndarray, threads: int, runs: int, warmup: int,
             kinds: dict[str, str] | None = None) -> dict[str, float | str]:
    """Median ms per entry of ``files`` (or an error text), each file in its own worker process
    (benchmarks/format_worker.py), interleaved run by run; ``kinds`` maps an entry to its format when the key is not
    one (default: the key)."""
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / 'image.npy'
        np.save(image, im)
        commands = {k: worker_command((kinds or {}).get(k, k), path, threads, image) for k, path in files.items()}
        res = timing.interleaved_processes(commands, runs=runs, warmup=warmup)
    return {k: statistics.median(v) if isinstance(v, list) and v else str(v or '-') for k, v in res.items()}


def format_table(rows: list[dict], base: str = 'pytorch') -> str:
    """Markdown: format, size, mAP50, mAP50-95, ms at batch 1 and the ratio to ``base``'s ms (same run)."""
    ref = next((r['ms'] for r in rows if r['key'] == base and isinstance(r.get('ms'), float)), None)
    lines = ['| Format | Size (MB) | mAP50 | mAP50-95 | ms/img b1 | vs PyTorch |', '|---|---|---|---|---|---|']
    for r in rows:
        if 'absent' in r:
            lines.append(f"| {r['label']} | - | - | - | {r['absent']} | - |")
            continue
        ms = r.get('ms')
        t = f'{ms:.1f}' if isinstance(ms, float) else (ms or 'not timed')
        ratio = f'{ms / ref:.2f}×' if isinstance(ms, float) and ref else '-'
        lines.append(f"| {r['label']} | {r['size']:.1f} | {r['map50']:.3f} | {r['map']:.3f} | {t} | {ratio} |")
    return '\n'.join(lines)


def header(opt: argparse.Namespace, threads: int) -> str:
    """What was measured, on what, by which command."""
    isa = timing.cpu_isa()
    how = (f'{threads} threads, one process per format (ORT spinning off, {int(timing.PAUSE_S * 1000)} ms pauses, '
           f'medians of {opt.runs} interleaved turns, each the last of {timing.INFERENCE_PER_TURN} back-to-back runs)'
           if opt.runs else 'not timed')
    return (f'Model `{Path(opt.weights).name}` on `{opt.data}` at {opt.img}×{opt.img}, batch 1, {how}.\n'
            f'CPU: {timing.cpu_name()} ({isa}); load average at the end {timing.loadavg()}.\n'
            f'Command: `python benchmarks/formats.py {" ".join(sys.argv[1:])}`\n')


def run(opt: argparse.Namespace) -> Path:
    """Export, validate and time; returns the run directory holding formats.md."""
    save_dir = increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok)
    save_dir.mkdir(parents=True, exist_ok=True)
    pt = save_dir / Path(opt.weights).name
    shutil.copy(opt.weights, pt)
    files = export_all(pt, opt.data, opt.img, opt.formats)
    present = {k: v for k, v in files.items() if isinstance(v, Path)}
    rows = []
    for fmt, path in files.items():
        row = {'key': fmt, 'label': LABELS[fmt]}
        if not isinstance(path, Path):
            rows.append({**row, 'absent': path})
            continue
        try:
            row['map50'], row['map'] = validate(path, opt.data, opt.img, save_dir / 'val', fmt)
        except (Exception, SystemExit) as e:  # e.g. a runtime that cannot compile this model on this CPU
            LOGGER.warning(f'formats: {LABELS[fmt]}: validation {failure(e)}')
            rows.append({**row, 'absent': f'validation {failure(e)}'})
            present.pop(fmt)
            continue
        rows.append({**row, 'size': size_mb(path)})
    threads = opt.threads or timing.physical_cores()
    if opt.runs:
        times = time_all(present, sample_image(opt.data, opt.img), threads, opt.runs, opt.warmup)
        for r in rows:
            r['ms'] = times.get(r['key'])
    text = header(opt, threads) + '\n' + format_table(rows) + '\n'
    (save_dir / 'formats.md').write_text(text)
    LOGGER.info('\n' + text + f'\nResults saved to {save_dir}')
    return save_dir


def model_parser(doc: str) -> argparse.ArgumentParser:
    """The options every per-model export benchmark takes first: --weights, --data, --img."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--weights', required=True, help='a .pt checkpoint')
    p.add_argument('--data', default=str(ROOT / 'data/shapes.yaml'), help='dataset.yaml: val split and calibration')
    p.add_argument('--img', '--imgsz', type=int, default=640, help='square inference size (pixels)')
    return p


def add_timing_and_run_dir(p: argparse.ArgumentParser, what: str, threads_help: str, name: str) -> None:
    """--runs/--warmup/--threads (timing of each ``what``) and --project/--name/--exist-ok (the run directory)."""
    p.add_argument('--runs', type=int, default=20, help=f'timed runs per {what} (0: accuracy only)')
    p.add_argument('--warmup', type=int, default=3, help=f'untimed runs per {what} first')
    p.add_argument('--threads', type=int, default=0, help=f'{threads_help} (0: the physical cores)')
    p.add_argument('--project', default=str(ROOT / 'runs/benchmarks'), help='save to project/name')
    p.add_argument('--name', default=name, help='save to project/name')
    p.add_argument('--exist-ok', action='store_true', help='existing project/name ok, do not increment')


def run_with_one_line_errors(script: str, run_fn: Callable[[argparse.Namespace], Path],
                             opt: argparse.Namespace) -> None:
    """``run_fn(opt)``, with export and user errors printed as one line naming ``script``."""
    from export import ExportError
    from utils.cli import one_line_errors

    with one_line_errors(script, own=(ExportError,)):
        run_fn(opt)


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    p = model_parser(__doc__)
    p.add_argument('--formats', nargs='+', default=list(FORMATS), choices=FORMATS, help='formats to include')
    add_timing_and_run_dir(p, 'format', 'threads for every runtime', 'formats')
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> None:
    run_with_one_line_errors('formats.py', run, opt)


if __name__ == '__main__':
    main(parse_opt())

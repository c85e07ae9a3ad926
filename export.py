"""Export a trained detector to ONNX and TorchScript (YOLOv5 v7.0 export.py flags and file layout).

The exported graph is the fused model with the decoded (B, N, 5+nc) output; NMS stays outside, in detect.py and
val.py. ``stride`` and ``names`` travel as metadata (ONNX ``metadata_props``, TorchScript ``config.txt``), so
utils.backends.DetectBackend runs the files without the training code.

Usage:
    python export.py --weights best.pt --include onnx torchscript --imgsz 640
    python export.py --weights best.pt --include onnx --dynamic --simplify
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.argtypes import positive_int  # noqa: E402
from utils.backends import check_img_size  # noqa: E402
from utils.logging import LOGGER, colorstr  # noqa: E402
from utils.torch_utils import select_device  # noqa: E402

FORMATS = {'torchscript': '.torchscript', 'onnx': '.onnx'}


class ExportError(Exception):
    """An export request that cannot be honoured (bad flags, unknown format, failed export)."""


def file_size(path: str | Path) -> float:
    """Size in MB."""
    return Path(path).stat().st_size / 1e6


def export_torchscript(model: torch.nn.Module, im: torch.Tensor, file: Path, metadata: dict) -> Path:
    """torch.jit.trace with ``config.txt`` (input shape, stride, names) as an extra file."""
    prefix = colorstr('TorchScript:')
    LOGGER.info(f'\n{prefix} starting export with torch {torch.__version__}...')
    f = file.with_suffix('.torchscript')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit deprecation notice
        ts = torch.jit.trace(model, im, strict=False)
    extra = {'config.txt': json.dumps({'shape': list(im.shape), **metadata})}
    ts.save(str(f), _extra_files=extra)
    LOGGER.info(f'{prefix} export success, saved as {f} ({file_size(f):.1f} MB)')
    return f


def export_onnx(model: torch.nn.Module, im: torch.Tensor, file: Path, metadata: dict, opset: int, dynamic: bool,
                simplify: bool) -> Path:
    """ONNX with input ``images``, output ``output0``, optional dynamic batch/height/width, metadata_props."""
    import onnx

    prefix = colorstr('ONNX:')
    LOGGER.info(f'\n{prefix} starting export with onnx {onnx.__version__} opset {opset}...')
    f = file.with_suffix('.onnx')
    axes = None
    if dynamic:
        axes = {'images': {0: 'batch', 2: 'height', 3: 'width'}, 'output0': {0: 'batch', 1: 'anchors'}}
    from models.efficientvit_onnx import onnx_export_form

    model = model.cpu() if dynamic else model
    # EfficientViT traces its export form (graph for ORT, models/efficientvit_onnx.py), slimmed by default: the trace
    # of its window arithmetic leaves ~1300 shape nodes, and slimming also merges the crop Slices (~3 % faster in ORT)
    with warnings.catch_warnings(), onnx_export_form(model, dynamic) as forms:
        warnings.simplefilter('ignore')  # tracer and deprecation warnings of the TorchScript-based exporter
        torch.onnx.export(model, im.cpu() if dynamic else im, str(f), verbose=False,
                          opset_version=opset, do_constant_folding=True, input_names=['images'],
                          output_names=['output0'], dynamic_axes=axes, dynamo=False)
    model_onnx = onnx.load(str(f))
    onnx.checker.check_model(model_onnx)
    for k, v in metadata.items():
        meta = model_onnx.metadata_props.add()
        meta.key, meta.value = k, json.dumps(v) if not isinstance(v, str) else v
    if simplify or forms:
        model_onnx = _slim(model_onnx, prefix, required=simplify)
    onnx.save(model_onnx, str(f))
    LOGGER.info(f'{prefix} export success, saved as {f} ({file_size(f):.1f} MB)')
    return f


def _slim(model_onnx, prefix: str, required: bool):
    """The graph slimmed by onnxslim, metadata kept; when not ``required`` (the EfficientViT default) a failure
    warns and keeps the graph as exported."""
    import onnx
    import onnxslim

    LOGGER.info(f'{prefix} slimming with onnxslim {onnxslim.__version__}...')
    try:
        slim = onnxslim.slim(model_onnx)
        onnx.checker.check_model(slim)
    except Exception as e:
        if required:
            raise
        LOGGER.warning(f'WARNING ⚠️ {prefix} onnxslim failed ({type(e).__name__}: {e}); the graph stays unslimmed')
        return model_onnx
    del slim.metadata_props[:]
    slim.metadata_props.extend(model_onnx.metadata_props)
    return slim


def _window_maps(model: torch.nn.Module, im: torch.Tensor) -> list[tuple[int, int, int, float]]:
    """(h, w, window, input/map scale) of every window-attention layer for input ``im`` (EfficientViT)."""
    found, hooks = [], []
    for m in model.modules():
        if isinstance(getattr(m, 'window', None), int) and hasattr(m, 'attn'):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, args: found.append((*args[0].shape[2:], mod.window, im.shape[2] / args[0].shape[2]))))
    try:
        model(im)
    finally:
        for h in hooks:
            h.remove()
    return found


def _dynamic_min_size(model: torch.nn.Module, im: torch.Tensor, gs: int) -> int:
    """Smallest input side a --dynamic export stays exact for (0: any), warning when the trace is too small.

    Window attention takes one branch for maps that fit in a single window and another for larger maps; tracing
    records the branch taken at the export size. Traced on windowed maps everywhere, the graph is exact for every
    input whose attention maps are all larger than one window, i.e. at least ``min_size`` px on some side.
    """
    maps = _window_maps(model, im)
    if not maps:
        return 0
    need = max(int(math.ceil((r + 1) * scale / gs) * gs) for _, _, r, scale in maps)
    small = [(h, w, r) for h, w, r, _ in maps if h <= r and w <= r]
    if small:
        h, w, r = small[0]
        LOGGER.warning(f'WARNING ⚠️ --dynamic: window attention traced on a {h}x{w} map (one {r}x{r} window); this '
                       f'ONNX file is exact only for inputs of this size class. Export with --imgsz {need} or larger '
                       f'to serve every input with a side of at least {need} px')
        return 0
    return need


def _prepare(weights: Path, device: torch.device, imgsz: list[int], batch_size: int, half: bool, inplace: bool,
             dynamic: bool):
    """Fused eval model in export mode (Detect returns the decoded tensor only), a dummy input and metadata."""
    from models.yolo import Detect, ModelConfigError
    from utils.checkpoints import CheckpointError, load_model

    try:
        model = load_model(weights, device=device, fuse=False)
    except (CheckpointError, ModelConfigError) as e:
        raise ExportError(str(e)) from None
    model.fuse(exact=dynamic).eval()  # --dynamic: the exact path, whose layers the window check below can observe
    for p in model.parameters():
        p.requires_grad_(False)
    gs = max(int(model.stride.max()), 32)
    imgsz = check_img_size(imgsz, s=gs)
    for m in model.modules():
        if isinstance(m, Detect):
            m.inplace, m.dynamic, m.export = inplace, dynamic, True
    im = torch.zeros(batch_size, 3, *imgsz, device=device)
    for _ in range(2):
        y = model(im)  # dry runs build the grids
    metadata = {'stride': gs, 'names': {int(k): str(v) for k, v in model.names.items()}, 'imgsz': list(imgsz)}
    if dynamic:
        min_size = _dynamic_min_size(model, im, gs)
        if min_size:
            metadata['min_size'] = min_size
    if half:
        im, model = im.half(), model.half()
    shape = tuple((y[0] if isinstance(y, (tuple, list)) else y).shape)
    return model, im, shape, metadata


def run(weights: str | Path | list = 'yolov5s.pt', imgsz: int | tuple | list = (640, 640), batch_size: int = 1,
        device: str = 'cpu', include: tuple | list = ('torchscript',), half: bool = False, inplace: bool = False,
        dynamic: bool = False, simplify: bool = False, opset: int = 12, data: str | None = None) -> list[Path]:
    """Export ``weights`` to each format in ``include``; returns the written files."""
    t = time.time()
    include = [x.lower() for x in ([include] if isinstance(include, str) else include)]
    bad = [x for x in include if x not in FORMATS]
    if bad:
        raise ExportError(f'--include {bad} invalid: supported formats are {list(FORMATS)}')
    weights = Path(str(weights[0] if isinstance(weights, (list, tuple)) else weights))
    if not weights.is_file():
        raise ExportError(f'{weights} does not exist')
    imgsz = [imgsz] * 2 if isinstance(imgsz, int) else list(imgsz) * (2 if len(imgsz) == 1 else 1)
    device = select_device(device)
    if half and device.type == 'cpu':
        raise ExportError('--half only compatible with GPU export, i.e. use --device 0')
    if half and dynamic:
        raise ExportError('--half not compatible with --dynamic, i.e. use either --half or --dynamic but not both')
    model, im, shape, metadata = _prepare(weights, device, imgsz, batch_size, half, inplace, dynamic)
    LOGGER.info(f"\n{colorstr('PyTorch:')} starting from {weights} with output shape {shape} "
                f'({file_size(weights):.1f} MB)')
    files = []
    for fmt in ('torchscript', 'onnx'):  # YOLOv5's order
        if fmt not in include:
            continue
        try:
            files.append(export_torchscript(model, im, weights, metadata) if fmt == 'torchscript' else
                         export_onnx(model, im, weights, metadata, opset, dynamic, simplify))
        except Exception as e:  # exporter tracebacks are pages long: one line naming the file and the cause
            msg = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            hint = f' (this model needs a newer opset than {opset}: try --opset 13)' if 'opset' in msg else ''
            raise ExportError(f'{fmt} export of {weights} failed: {type(e).__name__}: {msg[:200]}{hint}') from None
    h = '--half' if half else ''
    LOGGER.info(f'\nExport complete ({time.time() - t:.1f}s)'
                f"\nResults saved to {colorstr('bold', str(weights.parent.resolve()))}"
                f"\nDetect:          python detect.py --weights {files[-1]} {h}"
                f"\nValidate:        python val.py --weights {files[-1]} {h}")
    return files


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """YOLOv5 v7.0 export.py flags (formats: onnx, torchscript)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', type=str, default=None, help='dataset.yaml path (unused; accepted for compatibility)')
    p.add_argument('--weights', nargs='+', type=str, default='yolov5s.pt', help='model.pt path(s)')
    p.add_argument('--imgsz', '--img', '--img-size', nargs='+', type=positive_int, default=[640, 640],
                   help='image (h, w)')
    p.add_argument('--batch-size', type=positive_int, default=1, help='batch size')
    p.add_argument('--device', default='cpu', help='cuda device, i.e. 0 or 0,1,2,3 or cpu')
    p.add_argument('--half', action='store_true', help='FP16 half-precision export (GPU only)')
    p.add_argument('--inplace', action='store_true', help='set YOLOv5 Detect() inplace=True')
    p.add_argument('--dynamic', action='store_true', help='ONNX: dynamic batch, height and width axes')
    p.add_argument('--simplify', action='store_true', help='ONNX: slim the graph with onnxslim (EfficientViT: always)')
    p.add_argument('--opset', type=positive_int, default=12, help='ONNX: opset version')
    p.add_argument('--include', nargs='+', default=['torchscript'], help='torchscript, onnx')
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> None:
    from utils.cli import one_line_errors

    weights = opt.weights if isinstance(opt.weights, list) else [opt.weights]
    with one_line_errors('export.py', own=(ExportError,)):
        for w in weights:
            run(**{**vars(opt), 'weights': w})


if __name__ == '__main__':
    main(parse_opt())

"""Export a trained detector to ONNX, TorchScript and OpenVINO, FP32 or INT8 (YOLOv5 v7.0 export.py flags and layout).

The exported graph is the fused model with the decoded (B, N, 5+nc) output; NMS stays outside, in detect.py and
val.py. ``stride`` and ``names`` travel as metadata (ONNX ``metadata_props``, TorchScript ``config.txt``), so
utils.inference.backend.DetectBackend runs the files without the training code.

``--int8`` (with ``--data``: the calibration images) adds ``X-int8.onnx`` next to ``X.onnx`` (ONNX Runtime static
quantization, utils/export/int8_onnx.py) and makes ``--include openvino`` write ``X_int8_openvino_model/`` (NNCF,
utils/export/openvino.py; ``openvino`` and ``nncf`` from requirements-openvino.txt). Every file is written under a
temporary name and renamed when complete: a failed export leaves nothing behind.

Usage:
    python export.py --weights best.pt --include onnx torchscript --imgsz 640
    python export.py --weights best.pt --include onnx --dynamic --simplify
    python export.py --weights best.pt --include onnx openvino --int8 --data data/shapes.yaml --imgsz 256
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.checkpoint.file_kind import export_name  # noqa: E402
from utils.core.argtypes import positive_int  # noqa: E402
from utils.core.logging import LOGGER, colorstr  # noqa: E402
from utils.core.safety import names_dict  # noqa: E402
from utils.core.sizes import check_img_size  # noqa: E402
from utils.core.torch_utils import select_device  # noqa: E402
from utils.export.calibration import CalibrationError, CalibrationSet  # noqa: E402
from utils.export.files import atomic_output  # noqa: E402
from utils.export.int8_onnx import MIN_OPSET, Int8Config, quantize_onnx  # noqa: E402
from utils.export.openvino import MissingPackageError, export_openvino, require  # noqa: E402

FORMATS = {'torchscript': '.torchscript', 'onnx': '.onnx', 'openvino': '_openvino_model'}


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
    with atomic_output(f) as tmp:
        ts.save(str(tmp), _extra_files=extra)
    LOGGER.info(f'{prefix} export success, saved as {f} ({file_size(f):.1f} MB)')
    return f


def export_onnx(model: torch.nn.Module, im: torch.Tensor, file: Path, metadata: dict, opset: int, dynamic: bool,
                simplify: bool) -> Path:
    """ONNX with input ``images``, output ``output0``, optional dynamic batch/height/width, metadata_props."""
    import onnx

    prefix = colorstr('ONNX:')
    LOGGER.info(f'\n{prefix} starting export with onnx {onnx.__version__} opset {opset}...')
    f = file.with_suffix('.onnx')
    with atomic_output(f) as tmp:
        _export_onnx(model, im, tmp, metadata, opset, dynamic, simplify, prefix)
    LOGGER.info(f'{prefix} export success, saved as {f} ({file_size(f):.1f} MB)')
    return f


def _export_onnx(model: torch.nn.Module, im: torch.Tensor, f: Path, metadata: dict, opset: int, dynamic: bool,
                 simplify: bool, prefix: str) -> None:
    import onnx

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


def _dynamic_size_range(model: torch.nn.Module, im: torch.Tensor, gs: int) -> tuple[int, int]:
    """(min, max) input side a --dynamic export is exact for (0: unbounded), warning when the trace is too small.

    Window attention takes one branch for maps that fit in a single window and another for larger maps; tracing
    records the branch taken at the export size. A map traced larger than its window keeps the windowed branch for
    inputs with a side of at least ``min``; a map traced inside one window keeps the single-window branch only while
    both sides stay at most ``max`` (beyond it the graph indexes past its bias table and ONNX Runtime stops with a
    Gather error, so the runtime refuses such inputs first).
    """
    def windowed_from(r: int, scale: float) -> int:  # smallest stride-multiple side whose map exceeds one window
        return int(math.ceil((r + 1) * scale / gs) * gs)

    maps = _window_maps(model, im)
    if not maps:
        return 0, 0
    need = max(windowed_from(r, scale) for _, _, r, scale in maps)
    small = [(h, w, r, scale) for h, w, r, scale in maps if h <= r and w <= r]
    lo = max((windowed_from(r, scale) for h, w, r, scale in maps if h > r or w > r), default=0)
    if not small:
        return lo, 0
    hi = min(int(r * scale) for _, _, r, scale in small)
    h, w, r, _ = small[0]
    LOGGER.warning(f'WARNING ⚠️ --dynamic: window attention traced on a {h}x{w} map (one {r}x{r} window); this '
                   f'ONNX file is exact only for inputs with sides of at most {hi} px. Export with --imgsz {need} or '
                   f'larger to serve every input with a side of at least {need} px')
    return lo, hi


def _prepare(weights: Path, device: torch.device, imgsz: list[int], batch_size: int, half: bool, inplace: bool,
             dynamic: bool):
    """Fused eval model in export mode (Detect returns the decoded tensor only), a dummy input and metadata."""
    from models.yolo import Detect, ModelConfigError
    from utils.checkpoint.format import CheckpointError
    from utils.checkpoint.model import load_model

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
    metadata = {'stride': gs, 'names': names_dict(model.names), 'imgsz': list(imgsz)}
    if dynamic:
        lo, hi = _dynamic_size_range(model, im, gs)
        metadata.update({k: v for k, v in (('min_size', lo), ('max_size', hi)) if v})
    if half:
        im, model = im.half(), model.half()
    shape = tuple((y[0] if isinstance(y, (tuple, list)) else y).shape)
    return model, im, shape, metadata


def _check_int8(include: list[str], int8: bool, data, opset: int) -> int:
    """One-line errors for --int8 requests that cannot be honoured; the opset the ONNX export needs."""
    if not int8:
        return opset
    if 'torchscript' in include:
        raise ExportError('--int8 applies to onnx and openvino, not torchscript: drop --int8 or torchscript from '
                          '--include')
    if not data:
        raise ExportError('--int8 needs --data: a dataset YAML whose images calibrate the INT8 ranges')
    if opset < MIN_OPSET:
        LOGGER.info(f'--int8: ONNX opset {opset} raised to {MIN_OPSET} (per-channel quantization needs it)')
    return max(opset, MIN_OPSET)


def _guarded(fmt: str, weights: Path, opset: int, export: Callable[[], Path]) -> Path:
    """Run one export, turning its failure into one ExportError line naming the file and the cause."""
    try:
        return export()
    except (ExportError, CalibrationError):
        raise
    except MissingPackageError as e:
        raise ExportError(str(e)) from None
    except Exception as e:  # exporter tracebacks are pages long: one line naming the file and the cause
        msg = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        hint = f' (this model needs a newer opset than {opset}: try --opset 13)' if 'opset' in msg else ''
        raise ExportError(f'{fmt} export of {weights} failed: {type(e).__name__}: {msg[:200]}{hint}') from None


def run(weights: str | Path | list = 'yolov5s.pt', imgsz: int | tuple | list = (640, 640), batch_size: int = 1,
        device: str = 'cpu', include: tuple | list = ('torchscript',), half: bool = False, inplace: bool = False,
        dynamic: bool = False, simplify: bool = False, opset: int = 12, data: str | None = None,
        int8: bool = False, int8_config: Int8Config | None = None) -> list[Path]:
    """Export ``weights`` to each format in ``include``; returns the written files. ``int8`` (with ``data``) adds
    the INT8 ONNX file and makes OpenVINO INT8, quantized as ``int8_config`` says (default: Int8Config())."""
    t = time.time()
    include = [x.lower() for x in ([include] if isinstance(include, str) else include)]
    bad = [x for x in include if x not in FORMATS]
    if bad:
        raise ExportError(f'--include {bad} invalid: supported formats are {list(FORMATS)}')
    opset = _check_int8(include, int8, data, opset)
    if 'openvino' in include:
        try:
            require('--include openvino' + (' --int8' if int8 else ''), 'openvino', *(['nncf'] if int8 else []))
        except MissingPackageError as e:
            raise ExportError(str(e)) from None
    weights = Path(str(weights[0] if isinstance(weights, (list, tuple)) else weights))
    kind = export_name(weights)
    if kind:
        raise ExportError(f'{weights} is {kind}: export.py starts from PyTorch .pt weights')
    if not weights.is_file():
        raise ExportError(f'{weights} is a directory, not a .pt file' if weights.is_dir() else
                          f'{weights} does not exist')
    imgsz = [imgsz] * 2 if isinstance(imgsz, int) else list(imgsz) * (2 if len(imgsz) == 1 else 1)
    device = select_device(device)
    if half and device.type == 'cpu':
        raise ExportError('--half only compatible with GPU export, i.e. use --device 0')
    if half and dynamic:
        raise ExportError('--half not compatible with --dynamic, i.e. use either --half or --dynamic but not both')
    if half and int8:
        raise ExportError('--half not compatible with --int8: INT8 quantizes the FP32 graph')
    model, im, shape, metadata = _prepare(weights, device, imgsz, batch_size, half, inplace, dynamic)
    cfg = int8_config or Int8Config()
    calib = CalibrationSet(data, im.shape[2:], metadata['stride'], cfg.calib_images, cfg.calib_split) if int8 else None
    LOGGER.info(f"\n{colorstr('PyTorch:')} starting from {weights} with output shape {shape} "
                f'({file_size(weights):.1f} MB)')
    files = []
    if 'torchscript' in include:  # YOLOv5's order: TorchScript, ONNX, OpenVINO (converted from the ONNX file)
        files.append(_guarded('torchscript', weights, opset, lambda: export_torchscript(model, im, weights, metadata)))
    if 'onnx' in include or 'openvino' in include:
        f_onnx = _guarded('onnx', weights, opset,
                          lambda: export_onnx(model, im, weights, metadata, opset, dynamic, simplify))
        files.append(f_onnx)
        if int8 and 'onnx' in include:
            files.append(_guarded('onnx --int8', weights, opset, lambda: quantize_onnx(f_onnx, calib, cfg)))
            LOGGER.info(f"{colorstr('ONNX INT8:')} saved as {files[-1]} ({file_size(files[-1]):.1f} MB)")
    if 'openvino' in include:
        files.append(_guarded('openvino', weights, opset,
                              lambda: export_openvino(f_onnx, metadata, calib, cfg.keep_fp32)))
        LOGGER.info(f"{colorstr('OpenVINO:')} saved as {files[-1]}")
    h = '--half' if half else ''
    LOGGER.info(f'\nExport complete ({time.time() - t:.1f}s)'
                f"\nResults saved to {colorstr('bold', str(weights.parent.resolve()))}"
                f"\nDetect:          python detect.py --weights {files[-1]} {h}"
                f"\nValidate:        python val.py --weights {files[-1]} {h}")
    return files


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """YOLOv5 v7.0 export.py flags (formats: torchscript, onnx, openvino)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', type=str, default=None, help='dataset.yaml path (--int8: the calibration images)')
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
    p.add_argument('--int8', action='store_true', help='ONNX/OpenVINO: INT8 post-training quantization (needs --data)')
    p.add_argument('--include', nargs='+', default=['torchscript'], help='torchscript, onnx, openvino')
    return p.parse_args(argv)


def main(opt: argparse.Namespace) -> None:
    from utils.cli import one_line_errors

    weights = opt.weights if isinstance(opt.weights, list) else [opt.weights]
    with one_line_errors('export.py', own=(ExportError,)):
        for w in weights:
            run(**{**vars(opt), 'weights': w})


if __name__ == '__main__':
    main(parse_opt())

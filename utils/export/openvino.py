"""OpenVINO export (FP32, or INT8 by NNCF post-training quantization) and the runner DetectBackend uses.

Written as YOLOv5 writes it: ``<name>_openvino_model/`` (``<name>_int8_openvino_model/`` for INT8) holding
``<name>.xml`` (the graph), ``<name>.bin`` (the weights) and ``<name>.yaml`` (stride, names, imgsz). The IR is
converted from the FP32 ONNX export (``ov.convert_model``), so it is the same graph ONNX Runtime runs. INT8 keeps
the same nodes in FP32 as the ONNX INT8 export (utils.export.int8_onnx.fp32_nodes: the Detect decode and the
attention groups) plus the MatMuls whose constant is their first operand (utils.export.int8_onnx.
constant_first_matmuls: OpenVINO's CPU plugin cannot compile those quantized), passed to NNCF as an ignored scope by
node name.

``openvino`` and ``nncf`` are optional (requirements-openvino.txt); without them the export and the runner stop with
one line naming the package.
"""
from __future__ import annotations

import logging
from pathlib import Path

import yaml

from utils.core.logging import LOGGER
from utils.core.optional import MissingPackageError, require  # noqa: F401  (export.py imports them from here)
from utils.export.calibration import CalibrationSet
from utils.export.files import atomic_output


def openvino_dir(file: str | Path, int8: bool = False) -> Path:
    """``X.pt``/``X.onnx`` -> ``X_openvino_model`` (``X_int8_openvino_model`` for INT8), next to it."""
    file = Path(file)
    return file.parent / f'{file.stem}{"_int8" if int8 else ""}_openvino_model'


def _nncf_quantize(model, onnx_file: Path, calib: CalibrationSet, keep: tuple[str, ...]):
    """NNCF post-training quantization of the OpenVINO ``model`` with the decode/attention nodes ignored."""
    import nncf
    import onnx

    from utils.export.int8_onnx import constant_first_matmuls, fp32_nodes

    graph = onnx.load(str(onnx_file))
    present = {op.get_friendly_name() for op in model.get_ordered_ops()}
    # W @ x MatMuls (EfficientViT's k and v) stay FP32: quantized, OpenVINO's CPU plugin cannot compile them
    names = [n for n in dict.fromkeys(fp32_nodes(graph, keep) + constant_first_matmuls(graph)) if n in present]
    LOGGER.info(f'NNCF: {len(names)} nodes in the ignored scope, calibrating on {len(calib)} images of '
                f'{calib.where}...')
    log = logging.getLogger('nncf')
    level = log.level
    log.setLevel(logging.WARNING)  # NNCF logs one INFO line per node it leaves unquantized
    try:
        return nncf.quantize(model, nncf.Dataset(calib), preset=nncf.QuantizationPreset.MIXED,
                             subset_size=len(calib), ignored_scope=nncf.IgnoredScope(names=names, validate=False))
    finally:
        log.setLevel(level)


def export_openvino(onnx_file: str | Path, metadata: dict, calib: CalibrationSet | None = None,
                    keep: tuple[str, ...] = ('softmax',), out: str | Path | None = None) -> Path:
    """The FP32 ONNX export ``onnx_file`` as an OpenVINO IR directory (INT8 when ``calib`` is given), atomically."""
    require('--include openvino' + (' --int8' if calib is not None else ''), 'openvino',
            *(['nncf'] if calib is not None else []))
    import openvino as ov

    onnx_file = Path(onnx_file)
    out = Path(out) if out else openvino_dir(onnx_file, int8=calib is not None)
    with atomic_output(out, is_dir=True) as tmp:
        model = ov.convert_model(str(onnx_file))
        if calib is not None:
            model = _nncf_quantize(model, onnx_file, calib, keep)
        ov.save_model(model, str(tmp / f'{onnx_file.stem}.xml'), compress_to_fp16=False)
        meta = {**metadata, 'precision': 'int8' if calib is not None else 'fp32'}
        (tmp / f'{onnx_file.stem}.yaml').write_text(yaml.safe_dump(meta, sort_keys=False))
    return out

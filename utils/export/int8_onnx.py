"""INT8 ONNX by static post-training quantization with onnxruntime.quantization.

Pipeline (``quantize_onnx``): the FP32 export -> ``quant_pre_process`` (symbolic shape inference and ORT's basic
graph optimisations, so that the quantizer sees fused, typed tensors) -> ``quantize_static`` calibrated on a
CalibrationSet -> checked -> renamed into place (``X-int8.onnx`` next to ``X.onnx``), metadata kept.

What stays FP32, by node name (``nodes_to_exclude``):
- the Detect head's decode, found structurally: every node between the graph output and the head's last Convs
  (Reshape, Transpose, Sigmoid, Split, grid/anchor Mul/Add/Pow, Concat). One INT8 scale shared by pixel
  coordinates and [0, 1] confidences is the known cause of 0 mAP for quantized YOLO models;
- in EfficientViT's attention, the groups named in ``Int8Config.keep_fp32``: ``softmax`` (the Softmax and the
  bias Add that feeds it: logits whose range one 8-bit scale cannot hold) and ``attn_matmul`` (the two MatMuls
  with no constant operand, q.k and v.attn; both in the default: FP32 MatMuls absorb the transposes that
  quantized ones need as separate nodes). Which of them stay FP32 is a measured choice
  (benchmarks/int8_variants.py); a CNN such as yolov5n has neither;
- ``head_conv``: the Detect head's three 1x1 output Convs (in the default). Their outputs mix box offsets with
  objectness and class logits in one tensor; quantized, trained yolov5n lost 8.1 mAP50-95 points at 640 px on the
  embedded dataset, 0.6 with them in FP32 (README, "INT8").

Weights are signed INT8 (per output channel or per tensor), activations unsigned INT8 (U8S8, the pair ORT's x86
kernels run with VNNI/AMX), QDQ or QOperator format. Per-channel needs opset >= 13 (the axis of QuantizeLinear).
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from utils.core.logging import LOGGER, TQDM_BAR_FORMAT
from utils.export.calibration import CALIB_IMAGES, CalibrationSet
from utils.export.files import atomic_output, scratch_dir

MIN_OPSET = 13
FORMATS = ('qdq', 'qoperator')
KEEP_FP32 = ('softmax', 'attn_matmul', 'head_conv')  # groups a config may keep in FP32 besides the decode
METHODS = ('minmax', 'entropy', 'percentile')


@dataclass(frozen=True)
class Int8Config:
    """How to quantize: format, weight granularity, what stays FP32 and how to calibrate."""

    # measured (benchmarks/int8_variants.py, README): QOperator per-tensor is the fastest at equal accuracy; the
    # attention MatMuls in FP32 saved M0 1.2 ms more (quantized, ORT needs explicit Transposes around them)
    fmt: str = 'qoperator'
    per_channel: bool = False
    keep_fp32: tuple[str, ...] = ('softmax', 'attn_matmul', 'head_conv')
    calib_images: int = CALIB_IMAGES
    calib_split: str = 'train'
    method: str = 'minmax'
    reduce_range: bool = False  # 7-bit weights: only for x86 CPUs without VNNI, where U8S8 products can saturate

    def __post_init__(self):
        if self.fmt not in FORMATS:
            raise ValueError(f'INT8 format {self.fmt!r}: expected one of {FORMATS}')
        if self.method not in METHODS:
            raise ValueError(f'calibration method {self.method!r}: expected one of {METHODS}')
        bad = [k for k in self.keep_fp32 if k not in KEEP_FP32]
        if bad:
            raise ValueError(f'keep_fp32 {bad}: expected some of {KEEP_FP32}')

    @property
    def tag(self) -> str:
        """A short name: 'qdq-pc', 'qoperator-pt', plus '+<group>' for each FP32 group beyond the decode and
        '@<method>' for a calibration other than min/max."""
        return ('-'.join([self.fmt, 'pc' if self.per_channel else 'pt']) + ''.join(f'+{k}' for k in self.keep_fp32)
                + ('' if self.method == 'minmax' else f'@{self.method}'))


# ----------------------------------------------------------------------------------------------------------------
# Which nodes stay FP32
# ----------------------------------------------------------------------------------------------------------------
def _producers(graph) -> dict[str, object]:
    return {o: n for n in graph.node for o in n.output}


def _constants(graph) -> set[str]:
    """Names of tensors that are constant: initializers and Constant node outputs."""
    return {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == 'Constant' for o in n.output}


def decode_nodes(model) -> list[str]:
    """The Detect decode: nodes reached walking back from the graph outputs without crossing a Conv."""
    graph, producers = model.graph, _producers(model.graph)
    seen, stack, out = set(), [o.name for o in graph.output], []
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen or node.op_type == 'Conv':
            continue
        seen.add(node.name)
        out.append(node.name)
        stack.extend(node.input)
    return out


def head_convs(model) -> list[str]:
    """The Convs that feed the decode (Detect's 1x1 output convs)."""
    graph, producers = model.graph, _producers(model.graph)
    decode = set(decode_nodes(model))
    return sorted({producers[i].name for n in graph.node if n.name in decode for i in n.input
                   if i in producers and producers[i].op_type == 'Conv'})


def attention_nodes(model, groups: tuple[str, ...]) -> list[str]:
    """EfficientViT attention nodes of the ``groups`` 'softmax' (Softmax + the Add feeding it) and 'attn_matmul'
    (MatMuls whose operands are both activations)."""
    graph, consts, producers = model.graph, _constants(model.graph), _producers(model.graph)
    out = []
    for n in graph.node:
        if 'softmax' in groups and n.op_type == 'Softmax':
            out.append(n.name)
            p = producers.get(n.input[0])
            if p is not None and p.op_type == 'Add':
                out.append(p.name)
        if 'attn_matmul' in groups and n.op_type == 'MatMul' and not any(i in consts for i in n.input):
            out.append(n.name)
    return out


def constant_first_matmuls(model) -> list[str]:
    """MatMuls whose FIRST operand is a constant (W @ x). OpenVINO 2026.4's CPU plugin cannot compile them quantized
    per channel (its post-op composer expects the scales along the output channels of x @ W: "Check
    'any_of(scale.size(), OC, 1U)' failed"). EfficientViT's export form computed k and v that way until 2026-12-06;
    it now computes q, k and v as x @ W, so this finds none there; kept for any graph that has them."""
    consts = _constants(model.graph)
    return [n.name for n in model.graph.node if n.op_type == 'MatMul' and n.input and n.input[0] in consts]


def fp32_nodes(model, keep: tuple[str, ...]) -> list[str]:
    """Every node to exclude from quantization: the decode, plus the ``keep`` groups."""
    names = decode_nodes(model) + attention_nodes(model, keep)
    if 'head_conv' in keep:
        names += head_convs(model)
    return list(dict.fromkeys(names))


def _name_nodes(model) -> None:
    """Give every unnamed node a unique name (exclusion lists work by name)."""
    used = {n.name for n in model.graph.node}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f'{n.op_type}_q{i}'
            while name in used:
                name += '_'
            n.name = name
            used.add(name)


# ----------------------------------------------------------------------------------------------------------------
# Quantization
# ----------------------------------------------------------------------------------------------------------------
def _reader(calib: CalibrationSet, input_name: str):
    """An onnxruntime CalibrationDataReader over ``calib`` (rewindable), with a tqdm bar per pass: calibrating on
    300 images at 640 px takes minutes on a small CPU."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.bar = None  # a pass's bar starts with its first image, not at a rewind that reads none

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.bar is None:
                self.bar = tqdm(calib, total=len(calib), desc='INT8 calibration', bar_format=TQDM_BAR_FORMAT)
                self.it = iter(self.bar)
            x = next(self.it, None)
            return None if x is None else {input_name: x}

        def rewind(self) -> None:
            if self.bar is not None:
                self.bar.close()  # a pass cut short ends its bar where it stopped
            self.bar = None

    return Reader()


def _pre_process(quant_pre_process, fp32: Path, pre: Path) -> None:
    """``quant_pre_process`` with ORT's symbolic shape inference, or without it where that cannot finish: a
    ``--dynamic`` EfficientViT graph (height and width symbolic through the window reshapes) stops it with
    "Incomplete symbolic shape inference"; ONNX's own shape inference and the graph optimisation still run."""
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
    except Exception as e:  # ORT raises a bare Exception here
        if 'symbolic shape inference' not in str(e):
            raise
        LOGGER.info('INT8: symbolic shape inference incomplete (dynamic axes), pre-processing without it')
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)


UNQUANTIZABLE_NOTE = 'Inference failed or unsupported type to quantize for tensor'


@contextmanager
def _shape_tensor_warnings_counted() -> Iterator[list[str]]:
    """ONNX Runtime's quantizer logs one multi-line root-logger warning per integer tensor it leaves alone: hundreds
    for a --dynamic graph's shape arithmetic. Count them instead of printing them; other messages pass."""
    skipped: list[str] = []

    def keep(record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(UNQUANTIZABLE_NOTE):
            skipped.append(str(record.msg))
            return False
        return True

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield skipped
    finally:
        root.removeFilter(keep)


def int8_path(fp32: str | Path) -> Path:
    """``X.onnx`` -> ``X-int8.onnx``."""
    fp32 = Path(fp32)
    return fp32.with_name(f'{fp32.stem}-int8.onnx')


def quantize_onnx(fp32: str | Path, calib: CalibrationSet, cfg: Int8Config = Int8Config(),
                  out: str | Path | None = None) -> Path:
    """Quantize the FP32 ONNX file ``fp32`` (opset >= 13) into ``out`` (default ``X-int8.onnx``), atomically."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    fp32 = Path(fp32)
    out = Path(out) if out else int8_path(fp32)
    src = onnx.load(str(fp32))
    opset = next((o.version for o in src.opset_import if o.domain in ('', 'ai.onnx')), 0)
    if opset < MIN_OPSET:
        raise ValueError(f'{fp32}: INT8 quantization needs opset >= {MIN_OPSET} (per-channel QDQ), got {opset}')
    method = {'minmax': CalibrationMethod.MinMax, 'entropy': CalibrationMethod.Entropy,
              'percentile': CalibrationMethod.Percentile}[cfg.method]
    with scratch_dir(out) as work, atomic_output(out) as tmp:
        pre = work / 'pre.onnx'
        _pre_process(quant_pre_process, fp32, pre)
        model = onnx.load(str(pre))
        _name_nodes(model)
        onnx.save(model, str(pre))
        exclude = fp32_nodes(model, cfg.keep_fp32)
        LOGGER.info(f'INT8 {cfg.tag}: {len(model.graph.node)} nodes, {len(exclude)} kept in FP32, calibrating on '
                    f'{len(calib)} images of {calib.where}...')
        with _shape_tensor_warnings_counted() as skipped:
            quantize_static(str(pre), str(tmp), _reader(calib, src.graph.input[0].name),
                            quant_format=QuantFormat.QDQ if cfg.fmt == 'qdq' else QuantFormat.QOperator,
                            per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=exclude, calibrate_method=method)
        if skipped:
            LOGGER.info(f'INT8: {len(skipped)} warnings from the quantizer about integer tensors (shape arithmetic '
                        f'of the dynamic axes, which stays unquantized) folded into this line')
        q = onnx.load(str(tmp))
        onnx.checker.check_model(q)
        del q.metadata_props[:]
        q.metadata_props.extend(src.metadata_props)
        q.metadata_props.add(key='int8', value=cfg.tag)
        onnx.save(q, str(tmp))
    return out

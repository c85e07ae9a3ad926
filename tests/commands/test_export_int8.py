"""export.py --int8: INT8 ONNX by onnxruntime static quantization (utils/export/int8_onnx.py), calibration sets
(utils/export/calibration.py), atomic outputs, and the one-line errors of every request that cannot be honoured."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

import detect
import export
import val
from tests.commands.test_export import IMGSZ, NAMES, make_checkpoint, make_model
from tests.helpers import write_dataset
from utils.export import int8_onnx
from utils.export.calibration import CalibrationError, CalibrationSet, spread
from utils.export.files import atomic_output
from utils.export.int8_onnx import (
    Int8Config,
    attention_nodes,
    constant_first_matmuls,
    decode_nodes,
    fp32_nodes,
    head_convs,
)
from utils.inference.backend import DetectBackend

CFGS = ['yolov5n.yaml', 'yolov5-efficientvit.yaml']


def leftovers(d: Path) -> list[str]:
    """Temporary names an export may have left in ``d``."""
    return sorted(p.name for p in d.iterdir() if p.name.startswith('.') or p.name.endswith(('.tmp', '.work')))


def cli_error(args: list[str]) -> str:
    """export.py's exit message for ``args`` (it must exit with one line)."""
    with pytest.raises(SystemExit) as e:
        export.main(export.parse_opt(args))
    msg = str(e.value.code)
    assert msg.startswith('export.py: ') and '\n' not in msg and 'Traceback' not in msg
    return msg


@pytest.fixture(scope='module', params=CFGS)
def int8_model(request, tmp_path_factory):
    """A checkpoint, a dataset labelled by its own detections (FP32 scores ~1 mAP on it) and its INT8 export."""
    tmp = tmp_path_factory.mktemp('int8_' + request.param.replace('.yaml', ''))
    pt = make_checkpoint(make_model(request.param), tmp / 'model.pt')
    data = write_dataset(tmp / 'ds', n_train=16, n_val=8, nc=2, imgsz=IMGSZ)
    files = export.run(weights=pt, imgsz=[IMGSZ], include=['onnx'], int8=True, data=str(data))
    # val labels: the FP32 file's own detections (conf 0.3), so FP32 scores ~1 mAP and INT8 shows what it loses
    run = detect.run(weights=files[0], source=tmp / 'ds/images/val', imgsz=[IMGSZ], conf_thres=0.3, save_txt=True,
                     project=tmp / 'detect', name='fp32')
    labels = tmp / 'ds/labels/val'
    for f in labels.glob('*.txt'):
        f.unlink()
    for f in (run / 'labels').glob('*.txt'):
        shutil.copy(f, labels / f.name)
    for f in labels.parent.glob('*.cache'):
        f.unlink()
    return {'cfg': request.param, 'tmp': tmp, 'pt': pt, 'data': data, 'onnx': files[0], 'int8': files[1],
            'n_labels': sum(len(f.read_text().splitlines()) for f in labels.glob('*.txt'))}


# ----------------------------------------------------------------------------------------------------------------
# The INT8 file
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_int8_file_layout_and_metadata(int8_model):
    assert int8_model['onnx'].name == 'model.onnx' and int8_model['int8'].name == 'model-int8.onnx'
    assert leftovers(int8_model['tmp']) == []
    q = onnx.load(str(int8_model['int8']))
    onnx.checker.check_model(q)
    meta = {p.key: p.value for p in q.metadata_props}
    assert meta['int8'] == Int8Config().tag and int(meta['stride']) == 32
    ops = [n.op_type for n in q.graph.node]
    assert Int8Config().fmt == 'qoperator'  # the default writes QLinear* kernels, not QuantizeLinear/Dequantize pairs
    assert sum(op.startswith('QLinear') for op in ops) > 10 and ops.count('QLinearConv') >= 20
    assert 0 < ops.count('QuantizeLinear') < ops.count('QLinearConv')  # only where FP32 parts hand back to INT8
    assert int8_model['int8'].stat().st_size < 0.5 * int8_model['onnx'].stat().st_size  # INT8 weights


@pytest.mark.slow
def test_int8_decode_stays_fp32(int8_model):
    """No Q/DQ inside the Detect decode: the graph output is produced by a float Concat, every Sigmoid of the head
    reads a float tensor and none of the decode's outputs is re-quantized."""
    q = onnx.load(str(int8_model['int8']))
    producers = {o: n for n in q.graph.node for o in n.output}
    consumers = {}
    for n in q.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    out = producers[q.graph.output[0].name]
    assert out.op_type == 'Concat'
    decode = [n for n in q.graph.node if n.name in set(decode_nodes(onnx.load(str(int8_model['onnx']))))]
    assert sum(n.op_type == 'Sigmoid' for n in decode) == 3
    for n in decode:
        for o in n.output:
            assert all(c.op_type != 'QuantizeLinear' for c in consumers.get(o, [])), n.name


@pytest.mark.slow
def test_int8_runs_in_backend_and_val(int8_model):
    """DetectBackend runs the INT8 file as any .onnx; its predictions stay close to FP32's and val.py scores it."""
    im = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    b32, b8 = DetectBackend(int8_model['onnx']), DetectBackend(int8_model['int8'])
    assert (b8.stride, b8.names, b8.static_shape) == (32, NAMES, (IMGSZ, IMGSZ))
    y32, y8 = b32(im), b8(im)
    assert y8.shape == y32.shape and y8.dtype == torch.float32
    obj = np.corrcoef(y32[0, :, 4].numpy(), y8[0, :, 4].numpy())[0, 1]
    assert obj > 0.9, obj  # objectness survives quantization
    assert (y8[0, :, :4] - y32[0, :, :4]).abs().median() < 2.0  # boxes move by pixels, not by the image
    r32 = val.run(data=int8_model['data'], weights=int8_model['onnx'], imgsz=IMGSZ, plots=False,
                  project=int8_model['tmp'] / 'val', name='fp32')[0]
    r8 = val.run(data=int8_model['data'], weights=int8_model['int8'], imgsz=IMGSZ, plots=False,
                 project=int8_model['tmp'] / 'val', name='int8')[0]
    assert int8_model['n_labels'] >= 8 and r32[2] > 0.5  # the reference: FP32 finds its own detections
    assert r8[3] > r32[3] - 0.15, (r32, r8)  # an untrained net loses more than a trained one (int8_variants.py)


def test_fp32_node_groups():
    """The decode is found structurally for both backbones; attention groups exist only in EfficientViT."""
    for cfg, softmax in (('yolov5n.yaml', 0), ('yolov5-efficientvit.yaml', 24)):
        model = make_model(cfg)
        m = _onnx(model)
        decode = decode_nodes(m)
        kinds = {n.op_type for n in m.graph.node if n.name in set(decode)}
        assert 'Conv' not in kinds and {'Sigmoid', 'Concat'} <= kinds, cfg
        assert len(head_convs(m)) == 3
        soft = [n for n in attention_nodes(m, ('softmax',)) if 'Softmax' in n]
        assert len(soft) == softmax, cfg
        assert len(attention_nodes(m, ('attn_matmul',))) == 2 * softmax  # q.k and v.attn per head and window set
        assert set(fp32_nodes(m, ('head_conv',))) == set(decode) | set(head_convs(m))
        # no W @ x MatMul (what OpenVINO's CPU plugin cannot compile quantized): the export form computes q, k and
        # v as x @ W; the previous form had 2 per Softmax (k and v)
        assert constant_first_matmuls(m) == [], cfg


@pytest.mark.parametrize('fmt', int8_onnx.FORMATS)
@pytest.mark.parametrize('per_channel', [False, True])
def test_every_variant_quantizes_and_runs(int8_model, fmt, per_channel, tmp_path):
    """QDQ and QOperator, per tensor and per channel (what benchmarks/int8_variants.py builds) quantize both models'
    exports: EfficientViT's q and v are ``x @ W + b`` Gemms after onnxslim, and ORT's QDQ quantizer failed with a
    numpy error on their 2-D biases (the form now stores them 1-D)."""
    cfg = Int8Config(fmt=fmt, per_channel=per_channel)
    calib = CalibrationSet(int8_model['data'], (IMGSZ, IMGSZ), stride=32, n=4)
    f = int8_onnx.quantize_onnx(int8_model['onnx'], calib, cfg, out=tmp_path / f'{cfg.tag}.onnx')
    ops = {n.op_type for n in onnx.load(str(f)).graph.node}
    assert ('QuantizeLinear' in ops) and (('QLinearConv' in ops) == (fmt == 'qoperator'))
    import onnxruntime as ort
    s = ort.InferenceSession(str(f), providers=['CPUExecutionProvider'])
    out = s.run(None, {s.get_inputs()[0].name: next(iter(calib))})[0]
    assert out.shape[0] == 1 and np.isfinite(out).all()


def _onnx(model: torch.nn.Module):
    """``model`` (fused, export mode) as an in-memory ONNX model at 64 px, opset 13 (as export.py writes it)."""
    import io
    import warnings

    from models.efficientvit_onnx import onnx_export_form
    from models.yolo import Detect

    model.fuse().eval()
    for m in model.modules():
        if isinstance(m, Detect):
            m.export = True
    im = torch.zeros(1, 3, IMGSZ, IMGSZ)
    model(im)
    buf = io.BytesIO()
    with onnx_export_form(model), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(model, im, buf, opset_version=13, input_names=['images'], output_names=['output0'],
                          dynamo=False)
    return onnx.load_from_string(buf.getvalue())


def test_int8_config_is_checked():
    assert Int8Config().tag == 'qoperator-pt+softmax+attn_matmul+head_conv'
    assert (Int8Config(fmt='qdq', per_channel=True, method='percentile', keep_fp32=('softmax', 'head_conv')).tag
            == 'qdq-pc+softmax+head_conv@percentile')
    assert Int8Config(fmt='qoperator', per_channel=False, keep_fp32=()).tag == 'qoperator-pt'
    for bad in ({'fmt': 'int4'}, {'method': 'mse'}, {'keep_fp32': ('layernorm',)}):
        with pytest.raises(ValueError):
            Int8Config(**bad)


# ----------------------------------------------------------------------------------------------------------------
# Calibration sets
# ----------------------------------------------------------------------------------------------------------------
def test_spread_is_even_and_ordered():
    assert spread(list(range(10)), 20) == list(range(10))
    assert spread(list(range(10)), 5) == [0, 2, 4, 6, 8]
    assert len(spread(list(range(1000)), 300)) == 300


def test_calibration_set_reads_letterboxed_images(tmp_path):
    data = write_dataset(tmp_path, n_train=6, n_val=2, nc=2, imgsz=48)
    calib = CalibrationSet(data, (64, 96), stride=32, n=4)
    ims = list(calib)
    assert len(calib) == 4 and len(ims) == 4
    assert all(x.shape == (1, 3, 64, 96) and x.dtype == np.float32 for x in ims)
    assert 0 <= min(x.min() for x in ims) and max(x.max() for x in ims) <= 1
    assert abs(float(ims[0][0, :, 0, 0].mean()) - 114 / 255) < 1e-6  # letterbox padding, RGB order irrelevant


def _bad_dataset(tmp_path: Path, kind: str) -> Path:
    """A dataset YAML whose train split is missing, empty, or all corrupt images."""
    root = tmp_path / kind
    data = write_dataset(root, n_train=3, n_val=2, nc=2, imgsz=32)
    train = root / 'images' / 'train'
    if kind == 'missing':
        shutil.rmtree(train)
    elif kind == 'empty':
        for f in train.iterdir():
            f.unlink()
    else:
        for f in train.iterdir():
            f.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(range(256)) * 4)  # a PNG signature, then garbage
    return data


@pytest.mark.parametrize('kind, match', [('missing', 'not found|missing|does not exist'),
                                         ('empty', 'no images|empty'),
                                         ('corrupt', 'none of its 3 images could be read')])
def test_bad_calibration_sets_are_one_line_errors(tmp_path, kind, match):
    data = _bad_dataset(tmp_path, kind)
    with pytest.raises(CalibrationError, match=match):
        CalibrationSet(data, (32, 32))
    pt = make_checkpoint(make_model('yolov5n.yaml'), tmp_path / 'w' / 'model.pt')
    msg = cli_error(['--weights', str(pt), '--include', 'onnx', '--int8', '--data', str(data), '--img', '32'])
    assert 'calibration set' in msg
    assert sorted(p.name for p in pt.parent.iterdir()) == ['model.pt']  # nothing written, not even the FP32 file


def test_int8_flag_errors(tmp_path):
    pt = make_checkpoint(make_model('yolov5n.yaml'), tmp_path / 'model.pt')
    msg = cli_error(['--weights', str(pt), '--include', 'onnx', '--int8', '--img', '32'])
    assert msg == 'export.py: --int8 needs --data: a dataset YAML whose images calibrate the INT8 ranges'
    data = write_dataset(tmp_path / 'ds', n_train=2, n_val=1, nc=2, imgsz=32)
    msg = cli_error(['--weights', str(pt), '--include', 'torchscript', '--int8', '--data', str(data)])
    assert 'not torchscript' in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ds', 'model.pt']


def test_failed_quantization_leaves_no_int8_file(tmp_path, monkeypatch):
    pt = make_checkpoint(make_model('yolov5n.yaml'), tmp_path / 'w' / 'model.pt')
    data = write_dataset(tmp_path / 'ds', n_train=2, n_val=1, nc=2, imgsz=32)

    def boom(*args, **kwargs):
        Path(args[1]).write_bytes(b'half a model')  # a partial file where quantize_static writes
        raise RuntimeError('calibration session crashed\nsecond line')

    monkeypatch.setattr('onnxruntime.quantization.quantize_static', boom)
    msg = cli_error(['--weights', str(pt), '--include', 'onnx', '--int8', '--data', str(data), '--img', '32'])
    assert msg == ('export.py: onnx --int8 export of ' + str(pt) + ' failed: RuntimeError: calibration session '
                   'crashed')
    assert sorted(p.name for p in pt.parent.iterdir()) == ['model.onnx', 'model.pt']  # the FP32 file is complete


def test_atomic_output(tmp_path):
    target = tmp_path / 'a.bin'
    target.write_bytes(b'old')
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b'partial')
        raise RuntimeError('interrupted')
    assert target.read_bytes() == b'old' and sorted(p.name for p in tmp_path.iterdir()) == ['a.bin']
    with atomic_output(target) as tmp:
        tmp.write_bytes(b'new')
    assert target.read_bytes() == b'new'
    d = tmp_path / 'm_openvino_model'
    for content in (b'1', b'2'):
        with atomic_output(d, is_dir=True) as tmp:
            (tmp / 'm.xml').write_bytes(content)
    assert (d / 'm.xml').read_bytes() == b'2' and sorted(p.name for p in tmp_path.iterdir()) == ['a.bin', d.name]
    mask = os.umask(0)
    os.umask(mask)
    assert d.stat().st_mode & 0o777 == 0o777 & ~mask  # an ordinary directory, not mkdtemp's private 0700


def test_quantize_refuses_low_opset(tmp_path):
    model = onnx.helper.make_model(onnx.helper.make_graph([], 'g', [], []), opset_imports=[
        onnx.helper.make_opsetid('', 12)])
    f = tmp_path / 'm.onnx'
    onnx.save(model, str(f))
    with pytest.raises(ValueError, match='opset >= 13'):
        int8_onnx.quantize_onnx(f, calib=None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['m.onnx']


def test_calibration_split_from_a_coco_or_voc_mapping(tmp_path):
    """A COCO JSON / VOC XML split calibrates on its images folder; a mapping without one is one clear line."""
    from utils.export.calibration import CalibrationError, split_files

    (tmp_path / 'im').mkdir()
    cv2.imwrite(str(tmp_path / 'im' / 'a.jpg'), np.zeros((8, 8, 3), np.uint8))
    files, _ = split_files({'train': {'coco': str(tmp_path / 'x.json'), 'images': str(tmp_path / 'im')}}, 'train')
    assert files == [tmp_path / 'im' / 'a.jpg']
    with pytest.raises(CalibrationError, match='no images folder given'):
        split_files({'train': {'voc': True}}, 'train')


def test_calibration_reader_passes_and_progress(capsys):
    """ORT's reader: every image once per pass (None at the end), rewind starts again; each pass shows one tqdm bar
    counting the images, and a rewind that reads nothing draws none."""
    images = [np.full((1, 3, 8, 8), i, np.float32) for i in range(3)]
    reader = int8_onnx._reader(images, 'images')
    seen = [reader.get_next() for _ in range(4)]
    assert [float(x['images'][0, 0, 0, 0]) for x in seen[:3]] == [0, 1, 2] and seen[3] is None
    err = capsys.readouterr().err
    assert err.count('INT8 calibration: 100%') == 1 and '3/3' in err
    reader.rewind()
    assert float(reader.get_next()['images'].max()) == 0
    assert capsys.readouterr().err.startswith('\rINT8 calibration:   0%')  # a second pass, a second bar
    reader.rewind()  # closes the bar of the pass cut short
    capsys.readouterr()
    reader.rewind()
    assert capsys.readouterr().err == ''


def test_pre_process_falls_back_without_symbolic_shapes(tmp_path, log_text):
    """ORT's symbolic shape inference cannot finish a --dynamic EfficientViT graph: pre-processing runs again
    without it (ONNX shape inference and graph optimisation still run); any other failure propagates."""
    calls = []

    def pre(src, dst, skip_symbolic_shape):
        calls.append(skip_symbolic_shape)
        if not skip_symbolic_shape:
            raise Exception('Incomplete symbolic shape inference')

    int8_onnx._pre_process(pre, tmp_path / 'a.onnx', tmp_path / 'b.onnx')
    assert calls == [False, True] and 'pre-processing without it' in log_text.getvalue()

    def broken(src, dst, skip_symbolic_shape):
        raise Exception('something else')

    with pytest.raises(Exception, match='something else'):
        int8_onnx._pre_process(broken, tmp_path / 'a.onnx', tmp_path / 'b.onnx')


def test_quantizer_shape_tensor_warnings_are_counted_not_printed(caplog):
    import logging

    with int8_onnx._shape_tensor_warnings_counted() as skipped:
        logging.getLogger().warning(f'{int8_onnx.UNQUANTIZABLE_NOTE} /a/Shape_output_0, type is tensor_type {{\n}}')
        logging.getLogger().warning('something the user should see')
    logging.getLogger().warning(f'{int8_onnx.UNQUANTIZABLE_NOTE} after the block')
    assert len(skipped) == 1
    assert [r.getMessage()[:40] for r in caplog.records] == ['something the user should see',
                                                             f'{int8_onnx.UNQUANTIZABLE_NOTE} after the block'[:40]]

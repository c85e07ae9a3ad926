"""OpenVINO cases (run by tests/test_openvino.py in a child process): export.py --include openvino (FP32, --int8)
and DetectBackend running the IR directories.

The OpenVINO tests skip, with the reason, when ``openvino``/``nncf`` are not installed (requirements-openvino.txt);
the missing-package error itself is tested everywhere."""
from __future__ import annotations

import importlib.util

import pytest
import torch
import yaml

import export
import val
from tests.commands.test_export import IMGSZ, NAMES, make_checkpoint, make_model
from tests.helpers import write_dataset
from utils.inference.backend import BackendError, DetectBackend

HAVE_OV = importlib.util.find_spec('openvino') is not None
HAVE_NNCF = importlib.util.find_spec('nncf') is not None
needs_ov = pytest.mark.skipif(not HAVE_OV, reason='openvino not installed (pip install -r requirements-openvino.txt)')
needs_nncf = pytest.mark.skipif(not (HAVE_OV and HAVE_NNCF),
                                reason='openvino/nncf not installed (pip install -r requirements-openvino.txt)')
CFGS = ['yolov5n.yaml', 'yolov5-efficientvit.yaml']


@pytest.fixture(scope='module', params=CFGS)
def ov_fp32(request, tmp_path_factory):
    if not HAVE_OV:
        pytest.skip('openvino not installed (pip install -r requirements-openvino.txt)')
    tmp = tmp_path_factory.mktemp('ov_' + request.param.replace('.yaml', ''))
    pt = make_checkpoint(make_model(request.param), tmp / 'model.pt')
    files = export.run(weights=pt, imgsz=[IMGSZ], include=['onnx', 'openvino'])
    return {'tmp': tmp, 'pt': pt, 'onnx': files[0], 'ov': files[1]}


@needs_ov
@pytest.mark.slow
def test_openvino_layout_and_outputs(ov_fp32):
    """YOLOv5's layout (<name>_openvino_model/ with .xml, .bin, .yaml) and FP32 outputs equal to the ONNX file's."""
    d = ov_fp32['ov']
    assert d.name == 'model_openvino_model' and sorted(p.name for p in d.iterdir()) == [
        'model.bin', 'model.xml', 'model.yaml']
    meta = yaml.safe_load((d / 'model.yaml').read_text())
    assert meta['stride'] == 32 and meta['names'] == NAMES and meta['precision'] == 'fp32'
    assert not [p for p in ov_fp32['tmp'].iterdir() if p.name.startswith('.')]  # no temporary leftovers
    im = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    ref = DetectBackend(ov_fp32['onnx'])(im)
    for w in (d, d / 'model.xml'):  # the directory or its .xml
        b = DetectBackend(w)
        assert (b.stride, b.names, b.static_shape, b.dynamic) == (32, NAMES, (IMGSZ, IMGSZ), False)
        torch.testing.assert_close(b(im), ref, atol=2e-3, rtol=1e-3)


@needs_ov
@pytest.mark.slow
def test_val_runs_openvino(ov_fp32):
    data = write_dataset(ov_fp32['tmp'] / 'ds', n_train=2, n_val=3, nc=2, imgsz=IMGSZ)
    r_onnx = val.run(data=data, weights=ov_fp32['onnx'], imgsz=IMGSZ, plots=False, project=ov_fp32['tmp'] / 'v',
                     name='onnx')[0]
    r_ov = val.run(data=data, weights=ov_fp32['ov'], imgsz=IMGSZ, plots=False, project=ov_fp32['tmp'] / 'v',
                   name='ov')[0]
    assert r_ov[:4] == pytest.approx(r_onnx[:4], abs=1e-3)


@needs_nncf
@pytest.mark.slow
@pytest.mark.parametrize('cfg', CFGS)
def test_openvino_int8(tmp_path, cfg):
    """--include openvino --int8: an INT8 IR (FakeQuantize nodes) whose decode stays FP32 and whose objectness
    follows FP32's."""
    import numpy as np

    pt = make_checkpoint(make_model(cfg), tmp_path / 'model.pt')
    data = write_dataset(tmp_path / 'ds', n_train=16, n_val=2, nc=2, imgsz=IMGSZ)
    files = export.run(weights=pt, imgsz=[IMGSZ], include=['openvino'], int8=True, data=str(data))
    d = files[-1]
    assert d.name == 'model_int8_openvino_model' and (d / 'model.bin').stat().st_size > 0
    assert yaml.safe_load((d / 'model.yaml').read_text())['precision'] == 'int8'
    xml = (d / 'model.xml').read_text()
    assert 'FakeQuantize' in xml
    im = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    y32, y8 = DetectBackend(files[0])(im), DetectBackend(d)(im)
    assert y8.shape == y32.shape
    assert np.corrcoef(y32[0, :, 4].numpy(), y8[0, :, 4].numpy())[0, 1] > 0.9


@needs_nncf
def test_nncf_ignores_decode_head_and_w_at_x_matmuls(ov_fp32, monkeypatch):
    """The ignored scope NNCF gets: the ONNX INT8 export's FP32 nodes plus every W @ x MatMul (EfficientViT's k and v:
    quantized, OpenVINO 2026.4's CPU plugin refused to compile the trained quick-start M0)."""
    import nncf
    import onnx
    import openvino as ov

    from utils.export import openvino as ov_export
    from utils.export.int8_onnx import Int8Config, constant_first_matmuls, fp32_nodes, head_convs

    seen = {}
    monkeypatch.setattr(nncf, 'quantize', lambda model, data, **kw: seen.update(kw) or model)
    graph = onnx.load(str(ov_fp32['onnx']))
    keep = Int8Config().keep_fp32
    calib = type('Calib', (list,), {'where': 'no images'})()
    ov_export._nncf_quantize(ov.convert_model(str(ov_fp32['onnx'])), ov_fp32['onnx'], calib, keep)
    names = set(seen['ignored_scope'].names)
    wx = constant_first_matmuls(graph)
    assert names <= set(fp32_nodes(graph, keep)) | set(wx)  # those the IR still has (its constants are folded)
    assert set(wx) | set(head_convs(graph)) <= names
    assert wx == []  # EfficientViT's export form computes q, k and v as x @ W (the previous form's k, v: 48 W @ x)


def test_missing_openvino_is_one_line(tmp_path, monkeypatch):
    """Without the packages: export.py names the package and writes nothing; DetectBackend says so too."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name in ('openvino', 'nncf')
                        else real(name, *a))
    pt = make_checkpoint(make_model('yolov5n.yaml'), tmp_path / 'model.pt')
    with pytest.raises(SystemExit) as e:
        export.main(export.parse_opt(['--weights', str(pt), '--include', 'openvino', '--img', '32']))
    msg = str(e.value.code)
    assert msg == ("export.py: --include openvino needs the 'openvino' package, which is not installed: "
                   'pip install -r requirements-openvino.txt')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['model.pt']
    d = tmp_path / 'x_openvino_model'
    d.mkdir()
    (d / 'x.xml').write_text('<net/>')
    with pytest.raises(BackendError, match="needs the 'openvino' package"):
        DetectBackend(d)


@needs_ov
def test_bad_openvino_dirs_are_one_line(tmp_path):
    d = tmp_path / 'empty_openvino_model'
    d.mkdir()
    with pytest.raises(BackendError, match='expected one OpenVINO .xml file inside, found 0'):
        DetectBackend(d)
    (d / 'm.xml').write_text('not xml at all')
    with pytest.raises(BackendError, match='cannot load openvino model'):
        DetectBackend(d)
    with pytest.raises(BackendError, match='does not exist'):
        DetectBackend(tmp_path / 'missing_openvino_model')

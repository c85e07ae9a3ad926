"""export.py: ONNX and TorchScript files carry stride/names, reproduce the .pt outputs, and run through detect.py and
val.py with the same detections and mAP as the .pt they came from (for yolov5n and the EfficientViT model)."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
import yaml

import detect
import export
import val
from models.yolo import DetectionModel
from tests.helpers import draw_image
from utils.checkpoint.format import FORMAT, FORMAT_VERSION, save_checkpoint
from utils.inference.backend import BackendError, DetectBackend

CFGS = ['yolov5n.yaml', 'yolov5-efficientvit.yaml']
NAMES = {0: 'square', 1: 'box'}
IMGSZ = 64


def make_model(cfg: str, nc: int = 2, seed: int = 0) -> DetectionModel:
    """An untrained but well-conditioned model that makes varied detections worth comparing.

    Default initialisation gives near-constant outputs in eval mode (and EfficientViT zero-initialises BN weights that
    silence its attention), so: conv weights randn/sqrt(fan_in), conv biases 0.5*randn, BN weight 0.4+0.1*randn, BN
    bias/mean 0.05*randn, var U(0.75, 1.25) (small float reorderings stay small, unlike a calibrated-BN net); the
    head's weights x40 with objectness bias -1 and class biases 0, so some predictions pass conf 0.3.
    """
    torch.manual_seed(seed)
    model = DetectionModel(Path(__file__).resolve().parents[2] / "models" / cfg, nc=nc, verbose=False)
    g = torch.Generator().manual_seed(seed)
    det = model.model[-1]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.weight[0].numel() ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.4 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
                m.running_var.uniform_(0.75, 1.25, generator=g)
        for conv in det.m:
            conv.weight *= 40
            conv.bias.view(det.na, -1)[:, 4] = -1.0
            conv.bias.view(det.na, -1)[:, 5:] = 0.0
    return model.eval()


def make_checkpoint(model: DetectionModel, path: Path, names: dict = NAMES) -> Path:
    """Save ``model`` in this project's checkpoint format."""
    ckpt = {'format': FORMAT, 'format_version': FORMAT_VERSION, 'model': model.state_dict(), 'ema': None,
            'updates': 0, 'optimizer': None, 'model_yaml': model.yaml, 'names': dict(names), 'nc': len(names),
            'epoch': -1, 'best_fitness': 0.0, 'opt': {}, 'hyp': {}, 'date': '', 'train_state': None}
    return save_checkpoint(ckpt, path)


def write_images(d: Path, n: int = 3, seed: int = 0) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        im, _ = draw_image(rng, IMGSZ, 2)
        cv2.imwrite(str(d / f'im{i}.png'), im)
    return d


def read_labels(d: Path) -> dict:
    """{file name: rows sorted} of a labels/ directory (cls cx cy w h conf)."""
    out = {}
    for f in sorted(d.glob('*.txt')):
        rows = np.loadtxt(f, ndmin=2)
        out[f.name] = rows[np.lexsort(rows.T[::-1])]
    return out


@pytest.fixture(scope='module', params=CFGS)
def exported(request, tmp_path_factory):
    """Checkpoint, its static ONNX + TorchScript exports, images, and a dataset labelled by the .pt's detections."""
    tmp = tmp_path_factory.mktemp(request.param.replace('.yaml', ''))
    pt = make_checkpoint(make_model(request.param), tmp / 'model.pt')
    opset = 12  # YOLOv5's default export opset, for both backbones
    files = export.run(weights=pt, imgsz=[IMGSZ], include=['onnx', 'torchscript'], opset=opset)
    images = write_images(tmp / 'images')
    run = detect.run(weights=pt, source=images, imgsz=[IMGSZ], conf_thres=0.3, save_txt=True, save_conf=True,
                     project=tmp / 'detect', name='pt')
    # a dataset whose labels are the .pt's own detections: a correct pipeline scores a high mAP on it
    ds = tmp / 'ds'
    shutil.copytree(images, ds / 'images')
    (ds / 'labels').mkdir()
    for f in (run / 'labels').glob('*.txt'):
        rows = np.loadtxt(f, ndmin=2)[:, :5]
        lines = [f'{int(r[0])} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}\n' for r in rows]
        (ds / 'labels' / f.name).write_text(''.join(lines))
    data = tmp / 'data.yaml'
    data.write_text(yaml.safe_dump({'path': str(ds), 'train': 'images', 'val': 'images', 'names': NAMES}))
    return {'cfg': request.param, 'tmp': tmp, 'opset': opset, 'pt': pt, 'onnx': files[1], 'torchscript': files[0],
            'images': images, 'pt_labels': read_labels(run / 'labels'), 'data': data}


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore::FutureWarning')
def test_files_and_metadata(exported):
    assert exported['onnx'].suffix == '.onnx' and exported['torchscript'].suffix == '.torchscript'
    m = onnx.load(str(exported['onnx']))
    onnx.checker.check_model(m)
    assert [i.name for i in m.graph.input] == ['images'] and [o.name for o in m.graph.output] == ['output0']
    meta = {p.key: p.value for p in m.metadata_props}
    assert int(meta['stride']) == 32 and json.loads(meta['names']) == {'0': 'square', '1': 'box'}
    extra = {'config.txt': ''}
    torch.jit.load(str(exported['torchscript']), _extra_files=extra)
    cfg = json.loads(extra['config.txt'])
    assert cfg['shape'] == [1, 3, IMGSZ, IMGSZ] and cfg['stride'] == 32 and cfg['names'] == {'0': 'square', '1': 'box'}


@pytest.mark.slow
def test_backends_reproduce_pt_outputs(exported):
    im = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    ref = DetectBackend(exported['pt'])(im)
    n = 3 * sum((IMGSZ // s) ** 2 for s in (8, 16, 32))
    assert ref.shape == (1, n, 5 + 2)
    for fmt in ('onnx', 'torchscript'):
        b = DetectBackend(exported[fmt], trust_weights=True)  # our own export: trusted
        assert (b.stride, b.names, b.dynamic) == (32, NAMES, False)
        torch.testing.assert_close(b(im), ref, atol=1e-3, rtol=1e-3)


@pytest.mark.slow
def test_detect_with_exports_matches_pt(exported):
    pt_labels = exported['pt_labels']
    assert sum(len(v) for v in pt_labels.values()) >= 2  # the comparison is about real detections
    for fmt in ('onnx', 'torchscript'):
        run = detect.run(weights=exported[fmt], source=exported['images'], imgsz=[IMGSZ], conf_thres=0.3,
                         save_txt=True, save_conf=True, project=exported['tmp'] / 'detect', name=fmt,
                         trust_weights=True)
        got = read_labels(run / 'labels')
        assert got.keys() == pt_labels.keys()
        for k in got:
            np.testing.assert_allclose(got[k], pt_labels[k], atol=1e-4)
        assert sorted(p.name for p in run.glob('*.png')) == ['im0.png', 'im1.png', 'im2.png']


@pytest.mark.slow
def test_val_with_exports_matches_pt(exported):
    kw = dict(data=exported['data'], imgsz=IMGSZ, batch_size=1, workers=0, plots=False, project=exported['tmp'] / 'v')
    (_, _, map50, map_, *_), maps, _ = val.run(weights=exported['pt'], rect=False, **kw)  # square, as the exports
    # labels are the .pt's own detections at conf 0.3, so boxes map back right; val's multi-label low-conf
    # predictions add confident wrong-class boxes, hence not 1.0
    assert map50 > 0.5 and map_ > 0.4
    for fmt in ('onnx', 'torchscript'):
        (_, _, m50, m, *_), mp, _ = val.run(weights=exported[fmt], trust_weights=True, **kw)
        # fp32 tolerance: among the thousands of conf >= 0.001 predictions a few near-tied confidences (gaps ~1e-6)
        # may swap rank between backends, moving AP by < 1e-3
        assert m50 == pytest.approx(map50, abs=2e-3) and m == pytest.approx(map_, abs=2e-3)
        np.testing.assert_allclose(mp, maps, atol=2e-3)


@pytest.mark.slow
def test_dynamic_onnx_serves_several_sizes(exported, monkeypatch):
    if exported['cfg'] != 'yolov5-efficientvit.yaml':
        pytest.skip('dynamic axes matter for window attention; YOLOv5 layers take the same path (checked by hand)')
    # traced with every attention map larger than one 7x7 window (P5 map 8x8), the graph is exact for any input
    # with a side >= 256 px
    f = export.run(weights=exported['pt'], imgsz=[256], include=['onnx'], dynamic=True, simplify=True,
                   opset=exported['opset'])[0]
    b, ref = DetectBackend(f), DetectBackend(exported['pt'])
    assert b.dynamic and b.static_shape is None and (b.min_size, b.max_size) == (256, 0)
    for shape in ((1, 3, 256, 256), (2, 3, 256, 320), (1, 3, 320, 288)):
        im = torch.rand(*shape, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(b(im), ref(im), atol=1e-3, rtol=1e-3)
    with pytest.raises(BackendError, match=r'exact for inputs with a side of at least 256 px'):
        b(torch.zeros(1, 3, 64, 64))
    # rectangular validation exactly as the .pt (val.py's default for any-size models)
    kw = dict(data=exported['data'], imgsz=256, batch_size=1, workers=0, plots=False, project=exported['tmp'] / 'd')
    (_, _, a50, a, *_), _, _ = val.run(weights=exported['pt'], **kw)
    (_, _, b50, bb, *_), _, _ = val.run(weights=f, **kw)
    assert (b50, bb) == pytest.approx((a50, a), abs=2e-3)
    # traced at 64 px (a 4x4 map inside one 7x7 window at stride 16): exact from 64 up to 7 * 16 = 112 px; a
    # larger input is refused in one line (ONNX Runtime stopped with a Gather error from inside the graph). Not
    # slimmed (16 of this export's 21 s; slimming the dynamic graph is checked above and changes no value)
    monkeypatch.setattr(export, '_slim', lambda model_onnx, prefix, required: model_onnx)
    small = export.run(weights=exported['pt'], imgsz=[64], include=['onnx'], dynamic=True,
                       opset=exported['opset'])[0]
    b = DetectBackend(small)
    assert (b.min_size, b.max_size) == (64, 112)
    for shape in ((1, 3, 64, 64), (1, 3, 96, 64), (1, 3, 96, 96)):
        im = torch.rand(*shape, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(b(im), ref(im), atol=1e-3, rtol=1e-3)
    with pytest.raises(BackendError, match=r'exact for inputs with sides of at most 112 px .* got \(128, 64\)\. '
                                           r'Use --imgsz 96 or less'):
        b(torch.zeros(1, 3, 128, 64))


@pytest.mark.parametrize('cfg, size, sides', [
    ('yolov5-efficientvit.yaml', 64, (64, 112)),  # stride-8 map 8x8 windowed, stride-16 map 4x4 in one window
    ('yolov5-efficientvit.yaml', 128, (128, 224)),  # stride 8 and 16 windowed, stride-32 map 4x4 in one window
    ('yolov5-efficientvit.yaml', 256, (256, 0)), ('yolov5n.yaml', 64, (0, 0))])
def test_dynamic_size_range(cfg, size, sides, log_text):
    model = make_model(cfg)  # unfused: the exact path, as export.py uses for --dynamic
    assert export._dynamic_size_range(model, torch.zeros(1, 3, size, size), 32) == sides
    warned = 'window attention traced on a 4x4 map (one 7x7 window)' in log_text.getvalue()
    assert warned == (sides[1] > 0)
    if warned:
        assert (f'exact only for inputs with sides of at most {sides[1]} px. Export with --imgsz 256 or larger'
                in log_text.getvalue())




def test_export_errors(tmp_path):
    with pytest.raises(export.ExportError, match=r'nothere\.pt does not exist'):
        export.run(weights=tmp_path / 'nothere.pt')
    pt = tmp_path / 'x.pt'
    pt.write_bytes(b'')
    with pytest.raises(export.ExportError, match='--half only compatible with GPU export'):
        export.run(weights=pt, half=True, device='cpu')
    with pytest.raises(export.ExportError, match=r"--include \['tflite'\] invalid"):
        export.run(weights=pt, include=['tflite'])
    pt.write_bytes(b'junk')  # was a traceback from export.py's CLI
    with pytest.raises(export.ExportError, match=r'x\.pt: not a readable PyTorch checkpoint'):
        export.run(weights=pt)
    onnx, ov = tmp_path / 'x.onnx', tmp_path / 'x_openvino_model'
    onnx.write_bytes(b'exported')
    ov.mkdir()
    # an export given as the source: was 'not a readable PyTorch checkpoint' (.onnx) and 'does not exist' (folder)
    with pytest.raises(export.ExportError, match=r'x\.onnx is an ONNX export: export\.py starts from PyTorch \.pt'):
        export.run(weights=onnx)
    with pytest.raises(export.ExportError, match=r'x_openvino_model is an OpenVINO export: export\.py starts from'):
        export.run(weights=ov)
    with pytest.raises(export.ExportError, match=r'is a directory, not a \.pt file'):
        export.run(weights=tmp_path)


def test_backend_errors(tmp_path):
    with pytest.raises(BackendError, match=r"unsupported model format '\.engine'"):
        DetectBackend(tmp_path / 'm.engine')
    with pytest.raises(BackendError, match=r'm\.onnx does not exist'):
        DetectBackend(tmp_path / 'm.onnx')
    (tmp_path / 'bad.onnx').write_bytes(b'garbage')
    with pytest.raises(BackendError, match=r'bad\.onnx: cannot load onnx model'):
        DetectBackend(tmp_path / 'bad.onnx')
    (tmp_path / 'bad.torchscript').write_bytes(b'garbage')
    with pytest.raises(BackendError, match=r'bad\.torchscript: refused: a \.torchscript file is a program'):
        DetectBackend(tmp_path / 'bad.torchscript')
    with pytest.raises(BackendError, match=r'bad\.torchscript: cannot load jit model'):
        DetectBackend(tmp_path / 'bad.torchscript', trust_weights=True)


def test_static_batch_export_runs_any_batch(tmp_path, log_text):
    """`export.py --batch-size 2` fixes the ONNX batch at 2; detect.py and val.py feed batch 1. The backend runs
    such a file two images at a time, filling the last group with blank images whose outputs it drops: batch 1 and
    batch 3 give the .pt's outputs, with one warning. Before, ONNX Runtime refused the shape."""
    pt = make_checkpoint(make_model('yolov5n.yaml'), tmp_path / 'model.pt')
    f = export.run(weights=pt, imgsz=[IMGSZ], include=['onnx'], batch_size=2)[0]
    b = DetectBackend(f)
    assert b.static_batch == 2 and b.static_shape == (IMGSZ, IMGSZ)
    im = torch.rand(3, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    ref = DetectBackend(pt)(im)
    torch.testing.assert_close(b(im[:1]), ref[:1], atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(b(im), ref, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(b(im[:2]), ref[:2], atol=1e-3, rtol=1e-3)
    warnings = [x for x in log_text.getvalue().splitlines() if x.startswith('WARNING')]
    assert warnings == [f'WARNING ⚠️ {f} was exported for batch 2: each call runs 2 images, the missing ones blank '
                        '(export with --batch-size 1 or --dynamic to avoid the cost)']

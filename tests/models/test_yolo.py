"""DetectionModel / parse_model: every shipped YAML, YOLOv5 numbers, backbone layer numbering, clear errors."""
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from models import registry
from models.backbone import Backbone
from models.common import Conv
from models.efficientvit import EfficientViT, EfficientViT_M0
from models.yolo import (
    Detect,
    DetectionModel,
    FeatureSlot,
    InputSizeError,
    Model,
    ModelConfigError,
    check_anchor_order,
    load_model_cfg,
)

ROOT = Path(__file__).resolve().parents[2]
YAMLS = sorted(p.name for p in (ROOT / 'models').glob('*.yaml'))
SLOW_YAMLS = {'yolov5l.yaml', 'yolov5x.yaml', 'yolov5-efficientvit-m1.yaml', 'yolov5-efficientvit-m4.yaml',
              'yolov5-efficientvit-m5.yaml'}
ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]

# YOLOv5 v7.0 published numbers: parameters (exact) and GFLOPs at 640 (thop MACs x 2)
YOLOV5 = {'n': (1872157, 4.5), 's': (7235389, 16.5), 'm': (21190557, 49.0), 'l': (46563709, 109.1),
          'x': (86749405, 205.7)}
WIDTH = {'n': 0.25, 's': 0.5, 'm': 0.75, 'l': 1.0, 'x': 1.25}


def yaml_param(names):
    return [pytest.param(n, id=n, marks=[pytest.mark.slow] if n in SLOW_YAMLS else []) for n in names]


def tiny_cfg(backbone=None, head=None, **extra):
    """A small valid model dict (yolov5-style, 3 levels) to break in error tests."""
    d = {'nc': 2, 'depth_multiple': 0.33, 'width_multiple': 0.125, 'anchors': ANCHORS,
         'backbone': backbone or [[-1, 1, 'Conv', [64, 3, 2]], [-1, 1, 'Conv', [128, 3, 2]],
                                  [-1, 1, 'Conv', [256, 3, 2]], [-1, 1, 'Conv', [512, 3, 2]],
                                  [-1, 1, 'Conv', [1024, 3, 2]]],
         'head': head or [[[2, 3, 4], 1, 'Detect', ['nc', 'anchors']]]}
    d.update(extra)
    return d




def check_yolov5_numbers(model, scale, info):
    """Exact YOLOv5 parameter counts; GFLOPs within 3% of YOLOv5's; v7.0 state-dict names and shapes."""
    layers, params, grads, gflops = info
    expected_params, expected_gflops = YOLOV5[scale]
    assert params == grads == expected_params
    assert gflops == pytest.approx(expected_gflops, rel=0.03)
    sd = model.state_dict()
    c0 = math.ceil(64 * WIDTH[scale] / 8) * 8
    c3 = math.ceil(256 * WIDTH[scale] / 8) * 8
    assert sd['model.0.conv.weight'].shape == (c0, 3, 6, 6)
    assert sd['model.24.m.0.weight'].shape == (255, c3, 1, 1)
    assert sd['model.24.anchors'].shape == (3, 3, 2)
    for key in ('model.2.cv1.conv.weight', 'model.2.m.0.cv2.bn.bias', 'model.9.cv2.conv.weight',
                'model.24.m.2.bias', 'model.23.cv3.bn.running_var'):
        assert key in sd
    assert not any(k.startswith(('model.11.', 'model.12.')) for k in sd)  # Upsample, Concat: no tensors


@pytest.mark.parametrize('cfg', yaml_param(YAMLS))
def test_every_yaml_builds_runs_fuses(cfg, log_text):
    """Build; summary (and YOLOv5's numbers); forward in train and eval mode at 640x640 and at a non-square size;
    fuse with unchanged outputs."""
    torch.manual_seed(0)
    model = DetectionModel(cfg, verbose=False)
    info = model.info()
    stem = Path(cfg).stem
    if stem[-1] in YOLOV5 and stem.startswith('yolov5') and len(stem) == 7:
        check_yolov5_numbers(model, stem[-1], info)
    assert info[1] > 0 and info[3] > 0  # GFLOPs are reported for every model, EfficientViT included
    det = model.model[-1]
    assert isinstance(det, Detect) and det.nc == 80 and det.no == 85
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    assert model.names == {i: str(i) for i in range(80)}
    x = torch.rand(1, 3, 192, 256)
    with torch.inference_mode():
        train_out = model.train()(x)
        assert [tuple(t.shape) for t in train_out] == [(1, 3, 24, 32, 85), (1, 3, 12, 16, 85), (1, 3, 6, 8, 85)]
        model.eval()
        pred640, raw640 = model(torch.rand(1, 3, 640, 640))
        assert pred640.shape == (1, 25200, 85) and raw640[0].shape == (1, 3, 80, 80, 85)
        pred, _ = model(x)
        assert pred.shape == (1, 3 * (24 * 32 + 12 * 16 + 6 * 8), 85)
        assert torch.isfinite(pred).all()
        model.fuse(exact=True)  # exact path: BN folding only
        fused, _ = model(x)
        torch.testing.assert_close(fused, pred, rtol=1e-4, atol=1e-4 * float(pred.abs().max()))
        model.fuse()  # default: also a backbone's fast inference path (same function, other summation order)
        fast, _ = model(x)
    if isinstance(model.model[0], EfficientViT):
        assert model.model[0].fast is True
    torch.testing.assert_close(fast, pred, rtol=1e-2, atol=1e-2 * float(pred.abs().max()))
    text = log_text.getvalue()
    assert 'Fusing layers' in text and 'from  n    params  module' in text
    assert f'{stem.replace("yolov5", "YOLOv5")} summary: {info[0]} layers, {info[1]} parameters' in text
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.fixture(scope='module')
def yolov5n():
    """A yolov5n model for read-only checks."""
    return DetectionModel('yolov5n.yaml', verbose=False)


def test_detect_anchors_in_grid_units_and_bias_init(yolov5n):
    det = yolov5n.model[-1]
    torch.testing.assert_close(det.anchors, torch.tensor(ANCHORS, dtype=torch.float32).view(3, 3, 2)
                               / torch.tensor([8.0, 16.0, 32.0]).view(3, 1, 1))
    for conv, s in zip(det.m, (8, 16, 32)):
        b = conv.bias.detach().view(3, 85)
        bound = 1 / math.sqrt(conv.in_channels)  # PyTorch's default bias init range before the priors are added
        assert (b[:, 4] - math.log(8 / (640 / s) ** 2)).abs().max() <= bound + 1e-6
        assert (b[:, 5:] - math.log(0.6 / (80 - 0.99999))).abs().max() <= bound + 1e-6
    assert abs(math.log(8 / 80 ** 2) - (-6.685)) < 1e-3


def test_yolo_bn_init_and_alias(yolov5n):
    assert Model is DetectionModel
    bns = [m for m in yolov5n.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.03 for m in bns)
    assert all(m.inplace for m in yolov5n.modules() if isinstance(m, nn.SiLU))


def test_check_anchor_order_flips_reversed_anchors():
    det = Detect(2, ANCHORS[::-1], (8, 16, 32))
    det.stride = torch.tensor([8.0, 16.0, 32.0])
    check_anchor_order(det)
    assert det.anchors[0].tolist() == [[10, 13], [16, 30], [33, 23]]
    check_anchor_order(det)  # already in order: unchanged
    assert det.anchors[-1].tolist() == [[116, 90], [156, 198], [373, 326]]


def test_export_flag_and_tta():
    model = DetectionModel('yolov5n.yaml', nc=2, verbose=False).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        pred, raw = model(x)
        model.model[-1].export = True
        only = model(x)
        model.model[-1].export = False
        aug, none = model(x, augment=True)
    assert len(only) == 1 and torch.equal(only[0], pred)
    assert none is None and aug.ndim == 3 and aug.shape[-1] == 7
    assert pred.shape[1] == 3 * (8 * 12 + 4 * 6 + 2 * 3)


def test_half_and_to_convert_detect_state():
    model = DetectionModel('yolov5n.yaml', nc=2, verbose=False).eval()
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64))
    model.to(torch.float64)
    assert model.stride.dtype == torch.float64 and model.model[-1].grid[0].dtype == torch.float64
    with torch.no_grad():
        pred, _ = model(torch.rand(1, 3, 64, 64, dtype=torch.float64))
    assert pred.dtype == torch.float64


def test_detect_decodes_in_float32_under_bf16_autocast():
    """Under CPU bf16 autocast the convs run in bf16, but Detect decodes in float32: bf16 keeps 8 significant bits, so
    a coordinate near 224 px would round to whole pixels. The boxes equal a float32 decode of the same raw outputs."""
    model = DetectionModel('yolov5n.yaml', nc=2, verbose=False).eval()
    head_dtypes = []
    model.model[-1].m[0].register_forward_hook(lambda m, i, out: head_dtypes.append(out.dtype))
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        pred, raw = model(x)
    assert head_dtypes == [torch.bfloat16] and pred.dtype == torch.float32
    assert all(r.dtype == torch.float32 for r in raw)
    det = model.model[-1]
    torch.testing.assert_close(pred, torch.cat([det._decode(r, i) for i, r in enumerate(raw)], 1), rtol=0, atol=0)
    assert (pred[..., :2] % 1).abs().sum() > 0  # fractional pixels survive


def test_layer_table_and_summary_text(yolov5n, log_text):
    result = yolov5n.info()
    text = log_text.getvalue()
    assert 'from  n    params  module' in text and 'arguments' in text
    assert any(line.split()[:4] == ['9', '-1', '1', '164608'] and 'models.common.SPPF' in line
               for line in text.splitlines())
    assert any('[17, 20, 23]' in line and 'models.yolo.Detect' in line for line in text.splitlines())
    line = [s for s in text.splitlines() if 'summary:' in s][-1]
    assert line.startswith('YOLOv5n summary: ') and f'{result[0]} layers, 1872157 parameters, 1872157 gradients, ' \
        f'{result[3]:.1f} GFLOPs' in line


# ----------------------------------------------------------------- multi-output backbone convention

class TinyBackbone(Backbone):
    """Three outputs at strides 8/16/32 (declared), with BN eps 1e-5 that YOLO init must not touch."""

    def __init__(self, strides=(8, 16, 32)):
        super().__init__(channels=[8, 16, 24], strides=strides)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.s2 = nn.Conv2d(8, 16, 3, 2, 1)
        self.s3 = nn.Conv2d(16, 24, 3, 2, 1)
        self.fused = False

    def forward(self, x):
        p3 = self.stem(x)
        p4 = self.s2(p3)
        return [p3, p4, self.s3(p4)]

    def stages(self):
        return [self.stem, self.s2, self.s3]

    def fuse(self, exact=False):
        self.fused = True
        return self


def backbone_cfg(name='TinyBackbone', head=None):
    head = head or [[-1, 1, 'Conv', [64, 1, 1]],  # 6
                    [-1, 1, 'nn.Upsample', [None, 2, 'nearest']],
                    [[-1, 3], 1, 'Concat', [1]],  # 8: cat backbone P4
                    [-1, 1, 'C3', [64, False]],  # 9
                    [[2, 9, 5], 1, 'Detect', ['nc', 'anchors']]]
    return tiny_cfg(backbone=[[-1, 1, name, []], [-1, 1, 'SPPF', [128, 5]]], head=head)


@pytest.fixture
def tiny_backbone(monkeypatch):
    monkeypatch.setitem(registry.MODULES, 'TinyBackbone', TinyBackbone)
    monkeypatch.setitem(registry.MODULES, 'BadStrides', lambda: TinyBackbone((8, 16, 64)))


def test_backbone_occupies_layers_0_to_4(tiny_backbone):
    model = DetectionModel(backbone_cfg(), verbose=False)
    seq = model.model
    assert isinstance(seq[0], TinyBackbone)
    assert [type(m) for m in seq[1:5]] == [FeatureSlot] * 4 and [m.index for m in seq[1:5]] == [None, 0, 1, 2]
    assert [m.i for m in seq] == list(range(len(seq)))
    assert seq[5].type == 'models.common.SPPF' and seq[5].cv1.conv.in_channels == 24  # SPPF reads P5 (index 4)
    assert seq[8].f == [-1, 3] and seq[9].cv1.conv.in_channels == 8 + 16  # Concat with P4 at index 3
    assert seq[-1].f == [2, 9, 5] and [c.in_channels for c in seq[-1].m] == [8, 8, 16]
    sd = model.state_dict()
    assert 'model.5.cv1.conv.weight' in sd and 'model.0.stem.0.weight' in sd
    assert not any(k.startswith(tuple(f'model.{i}.' for i in range(1, 5))) for k in sd)
    assert 0 in model.save
    assert model.model[0].stem[1].eps == 1e-5 and model.model[0].stem[1].momentum == 0.1  # backbone BN untouched
    assert model.model[5].cv1.bn.eps == 1e-3
    assert model.model[0].stem[2].inplace is False
    model.eval().fuse()
    assert model.model[0].fused
    with torch.no_grad():
        pred, _ = model(torch.rand(1, 3, 64, 96))
    assert pred.shape == (1, 3 * (8 * 12 + 4 * 6 + 2 * 3), 7)


def test_backbone_strides_must_match_declaration(tiny_backbone):
    with pytest.raises(ModelConfigError, match=r'declares strides \[8, 16, 64\] but its outputs have strides'):
        DetectionModel(backbone_cfg('BadStrides'), verbose=False)


def test_backbone_unused_slot_and_row_position(tiny_backbone):
    with pytest.raises(ModelConfigError, match='from index 1 names layer 1, which has no single output'):
        DetectionModel(backbone_cfg(head=[[[1, 3, 4], 1, 'Detect', ['nc', 'anchors']]]), verbose=False)
    cfg = tiny_cfg(backbone=[[-1, 1, 'Conv', [64, 3, 2]], [-1, 1, 'TinyBackbone', []]])
    with pytest.raises(ModelConfigError, match='must be the first row'):
        DetectionModel(cfg, verbose=False)


# ----------------------------------------------------------------- errors: one clear line each

def test_unknown_module():
    cfg = tiny_cfg(head=[[-1, 1, 'Bogus', [3]], [[2, 3, 4], 1, 'Detect', ['nc', 'anchors']]])
    with pytest.raises(ModelConfigError, match=r"layer 5: unknown module 'Bogus'; registered modules are: .*C3"):
        DetectionModel(cfg, verbose=False)


@pytest.mark.parametrize('frm, index', [([2, 3, 30], 30), ([2, 3, -9], -9), ([2, 3, 5], 5)])
def test_wrong_from_index(frm, index):
    cfg = tiny_cfg(head=[[frm, 1, 'Detect', ['nc', 'anchors']]])
    with pytest.raises(ModelConfigError, match=rf'layer 5: from index {index} does not name an earlier layer'):
        DetectionModel(cfg, verbose=False)


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ModelConfigError, match=r"model config '.*nope\.yaml' not found"):
        DetectionModel(tmp_path / 'nope.yaml', verbose=False)


def test_bad_yaml_files(tmp_path):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('nc: [1, 2\n')
    with pytest.raises(ModelConfigError, match='bad.yaml: invalid YAML'):
        load_model_cfg(bad)
    bad.write_text('nc: 2\nbackbone: []\n')
    with pytest.raises(ModelConfigError, match='missing key'):
        DetectionModel(bad, verbose=False)
    cfg = tiny_cfg(head=[[-1, 1, 'Conv', [8, 1, 1]]])
    with pytest.raises(ModelConfigError, match='last row must be Detect'):
        DetectionModel(cfg, verbose=False)
    cfg = tiny_cfg(head=[[-1, 1, 'Conv', [8, 1, 1, 'x', 'y', 'z', 'w', 'v']]])
    with pytest.raises(ModelConfigError, match=r'layer 5: Conv.* failed'):
        DetectionModel(cfg, verbose=False)


@pytest.mark.parametrize('key, value, message', [
    ('nc', 0, 'nc must be a positive integer, got 0'),  # was 'math domain error' in the bias init
    ('nc', 'x', "nc must be a positive integer, got 'x'"),
    ('depth_multiple', 'a', "depth_multiple must be a number > 0, got 'a'"),
    ('width_multiple', 0, 'width_multiple must be a number > 0, got 0'),
    ('ch', 0, 'ch must be a positive integer, got 0'),
    ('anchors', [], 'anchors must be a positive count or one list of w,h pixel pairs per level'),  # was IndexError
    ('anchors', 0, 'anchors must be a positive count'),
    ('anchors', [[10, 13, 16]] * 3, 'anchors must be a positive count'),
    ('anchors', [[10, 13], [16, 30, 33, 23], [1, 2]], 'anchors must be a positive count'),
])
def test_bad_yaml_values_are_one_line(key, value, message):
    with pytest.raises(ModelConfigError, match=rf'model yaml: {re.escape(message)}'):
        DetectionModel(tiny_cfg(**{key: value}), verbose=False)
    assert DetectionModel(tiny_cfg(anchors=2), verbose=False).model[-1].na == 2  # a count is fine


@pytest.mark.parametrize('shape', [(1, 3, 100, 96), (1, 3, 64, 80)])
def test_input_not_multiple_of_stride(shape):
    model = DetectionModel(tiny_cfg(), verbose=False)
    with pytest.raises(InputSizeError, match=rf'input size {shape[2]}x{shape[3]} is not a multiple of the model '
                                             'stride 32'):
        model(torch.zeros(shape))


def test_yaml_args_are_literals_not_code():
    cfg = tiny_cfg(head=[[-1, 1, 'nn.Upsample', ['None', 2, 'nearest']], [-1, 1, 'Conv', [8, 1, 1]],
                         [[2, 3, 6], 1, 'Detect', ['nc', 'anchors']]])
    model = DetectionModel(cfg, verbose=False)
    assert model.model[5].args == [None, 2, 'nearest']
    cfg['head'][1] = [-1, 1, 'Conv', ['__import__("os").getcwd()', 1, 1]]
    with pytest.raises(ModelConfigError, match='layer 6'):
        DetectionModel(cfg, verbose=False)


@pytest.mark.parametrize('text, cls, slope', [('nn.LeakyReLU(0.1)', nn.LeakyReLU, 0.1),
                                              ('torch.nn.LeakyReLU(negative_slope=0.2)', nn.LeakyReLU, 0.2),
                                              ('Hardswish()', nn.Hardswish, None),
                                              ('nn.LeakyReLU(-0.1)', nn.LeakyReLU, -0.1)])
def test_yaml_activation_key(text, cls, slope, log_text):
    """YOLOv5's ``activation:`` (e.g. yolov5s-LeakyReLU.yaml): every default-SiLU Conv gets its own instance; Convs
    built without activation keep Identity; parameters and state-dict keys are unchanged; no process-wide default."""
    import yaml as pyyaml
    base = pyyaml.safe_load((ROOT / 'models/yolov5n.yaml').read_text())
    model = DetectionModel({**base, 'activation': text}, verbose=False)
    acts = [m.act for m in model.modules() if isinstance(m, Conv)]
    assert acts and all(type(a) is cls for a in acts)
    assert len({id(a) for a in acts}) == len(acts)  # fresh instances, nothing shared
    if slope is not None:
        assert all(a.negative_slope == slope for a in acts)
    plain = DetectionModel(base, verbose=False)
    assert all(type(m.act) is nn.SiLU for m in plain.modules() if isinstance(m, Conv))  # built after: unaffected
    assert list(model.state_dict()) == list(plain.state_dict())
    assert sum(p.numel() for p in model.parameters()) == YOLOV5['n'][0]
    assert f'activation: {text}' in log_text.getvalue()
    # the swapped activation is really used: a negative-input Conv output differs from SiLU's
    conv = next(m for m in model.modules() if isinstance(m, Conv))
    assert torch.allclose(conv.act(torch.tensor([-1.0])), cls(*([slope] if slope else []))(torch.tensor([-1.0])))


@pytest.mark.parametrize('text, match', [
    ('__import__("os").system("echo hi")', 'is not a call such as nn.LeakyReLU'),
    ('nn.Conv2d(1, 1, 1)', 'is not a call such as nn.LeakyReLU'),
    ('os.nn.ReLU()', 'is not a call such as nn.LeakyReLU'),
    ('nn.LeakyReLU(slope)', 'arguments must be literals, got slope'),
    ('nn.LeakyReLU(**d)', r'\*\*kwargs are not accepted'),
    ('nn.LeakyReLU(0.1, foo=1)', 'unexpected keyword'),
    ('nn.LeakyReLU(0.1', 'is not a call'),
])
def test_yaml_activation_is_data_not_code(text, match, tmp_path):
    import yaml as pyyaml
    f = tmp_path / 'act.yaml'
    f.write_text(pyyaml.safe_dump({**tiny_cfg(), 'activation': text}))
    with pytest.raises(ModelConfigError, match=rf'act\.yaml: .*{match}'):
        DetectionModel(f, verbose=False)


@pytest.mark.parametrize('cfg, name, params', [('yolov5n.yaml', 'YOLOv5n', 1872157),
                                               ('models/yolov5-efficientvit.yaml', 'YOLOv5-efficientvit', 3098909)])
def test_cli_prints_table_and_summary(cfg, name, params):
    r = subprocess.run([sys.executable, 'models/yolo.py', '--cfg', cfg], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    summaries = [line for line in r.stdout.splitlines() if line.startswith(f'{name} summary: ')]
    assert len(summaries) == 2 and f'{params} parameters' in summaries[0] and 'GFLOPs' in summaries[1]
    assert 'Fusing layers' in r.stdout and 'models.common.SPPF' in r.stdout


def test_cli_missing_cfg_is_one_line():
    r = subprocess.run([sys.executable, 'models/yolo.py', '--cfg', 'missing.yaml'], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and "ERROR: model config 'missing.yaml' not found" in r.stderr
    assert 'Traceback' not in r.stderr


# ----------------------------------------------------------------- EfficientViT YAMLs

EVIT = {  # yaml: (variant, backbone out_channels, width_multiple, parameters at nc=80, GFLOPs at 640)
    'yolov5-efficientvit.yaml': (0, [64, 128, 192], 0.25, 3098909, 6.2),
    'yolov5-efficientvit-m1.yaml': (1, [128, 144, 192], 0.25, 3736846, 10.8),
    'yolov5-efficientvit-m2.yaml': (2, [128, 192, 224], 0.25, 4940893, 13.0),
    'yolov5-efficientvit-m3.yaml': (3, [128, 240, 320], 0.50, 10019539, 21.1),
    'yolov5-efficientvit-m4.yaml': (4, [128, 256, 384], 0.50, 11951141, 23.2),
    'yolov5-efficientvit-m5.yaml': (5, [192, 288, 384], 0.50, 15637201, 35.7),
}


def test_fast_fuse_is_exact_in_float64():
    """DetectionModel.fuse() takes EfficientViT's fast path; in float64 it equals the unfused model."""
    torch.manual_seed(0)
    model = DetectionModel('yolov5-efficientvit.yaml', nc=3, verbose=False).eval().double()
    x = torch.rand(1, 3, 64, 96, dtype=torch.float64)
    with torch.inference_mode():
        ref, _ = model(x)
        model.fuse()
        got, _ = model(x)
    assert model.model[0].fast is True
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))


def test_every_efficientvit_variant_has_a_yaml():
    assert sorted(EVIT) == sorted(n for n in YAMLS if 'efficientvit' in n)


@pytest.mark.parametrize('cfg', list(EVIT))
def test_efficientvit_yaml_layout(cfg):
    """Backbone at model.0 (declared widths/strides), SPPF at 5, head widths from the documented multiple,
    YOLO init only outside the backbone, --freeze 5 == the backbone's parameters."""
    variant, outs, width, params, gflops = EVIT[cfg]
    model = DetectionModel(cfg, verbose=False)
    bb = model.model[0]
    assert model.yaml['width_multiple'] == width and model.yaml['depth_multiple'] == 0.33
    assert bb.type == f'models.efficientvit.EfficientViT_M{variant}' and bb.out_channels == outs
    assert bb.strides == [8, 16, 32] and model.stride.tolist() == [8.0, 16.0, 32.0]
    assert model.model[5].cv1.conv.in_channels == outs[2] and model.model[5].cv2.conv.out_channels == 1024 * width
    assert model.model[12].f == [-1, 2] and model.model[13].cv1.conv.in_channels == 256 * width + outs[0]
    assert [c.in_channels for c in model.model[-1].m] == [int(256 * width), int(512 * width), int(1024 * width)]
    sd = model.state_dict()
    assert {k[len('model.0.'):] for k in sd if k.startswith('model.0.')} == set(bb.state_dict())
    assert 'model.5.cv1.conv.weight' in sd and 'model.20.anchors' in sd
    frozen = {n for n, _ in model.named_parameters() if n.startswith(tuple(f'model.{i}.' for i in range(5)))}
    assert frozen == {f'model.0.{n}' for n, _ in bb.named_parameters()}
    assert all(m.eps == 1e-5 for m in bb.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(m.eps == 1e-3 for m in model.model[5:].modules() if isinstance(m, nn.BatchNorm2d))
    _, n_params, _, gf = model.info(table=False)
    assert n_params == params and gf == pytest.approx(gflops, rel=0.03)


def test_backbone_pretrained_path_argument(tmp_path):
    """The backbone row's optional argument loads ImageNet weights (Cream format); the stride probe leaves the
    loaded BN statistics untouched."""
    torch.manual_seed(0)
    donor = EfficientViT_M0()
    for m in donor.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    weights = tmp_path / 'efficientvit_m0.pth'
    torch.save({'model': donor.state_dict()}, weights)
    cfg, _ = load_model_cfg('yolov5-efficientvit.yaml')
    cfg['backbone'][0] = [-1, 1, 'EfficientViT_M0', [str(weights)]]
    model = DetectionModel(cfg, nc=2, verbose=False)
    assert model.model[0].args == [str(weights)]
    got = model.model[0].state_dict()
    for k, v in donor.state_dict().items():
        assert torch.equal(got[k], v), k

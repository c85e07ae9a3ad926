"""The backbone contract (models/backbone.py), checked on every registered backbone and every shipped timm YAML.

The cases come from the registry: each name in ``list_modules('backbone')``, with the backbone rows of the shipped
model YAMLs that use it (its default arguments when no YAML does). Registering a backbone puts it under these tests.
"""
import copy
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import train
from models import backbone_weights
from models import efficientvit as ev
from models.backbone import Backbone, FeatureInfo, check_feature_info
from models.registry import get_module, list_modules, register_module, weights_arg
from models.timm_backbone import Timm
from models.yolo import DetectionModel, ModelConfigError, load_model_cfg
from models.yolo import main as yolo_main
from models.yolo import parse_opt as yolo_opt
from tests.helpers import write_dataset
from utils.checkpoint.format import load_checkpoint, save_checkpoint
from utils.checkpoint.model import model_from_checkpoint

ROOT = Path(__file__).resolve().parents[2]
BACKBONES = list_modules('backbone')
SLOW: set[str] = set()  # cases (backbone or YAML names) over ~20 s on 2 CPU cores


def _shipped_rows() -> dict[str, list[tuple[str, list]]]:
    """{backbone name: [(yaml file, row arguments)]} for the shipped model YAMLs whose first row is a backbone."""
    rows: dict[str, list[tuple[str, list]]] = {}
    for f in sorted((ROOT / 'models').glob('*.yaml')):
        row = yaml.safe_load(f.read_text())['backbone'][0]
        if row[2] in BACKBONES:
            rows.setdefault(row[2], []).append((f.name, list(row[3])))
    return rows


def _cases() -> list:
    rows, cases = _shipped_rows(), []
    for name in BACKBONES:
        for yaml_name, args in rows.get(name, [(None, [])]):
            marks = [pytest.mark.slow] if {name, yaml_name} & SLOW else []
            cases.append(pytest.param(name, args, yaml_name, id=f'{name}-{yaml_name or "defaults"}', marks=marks))
    return cases


CASES = _cases()
TIMM_YAMLS = {  # yaml: (timm name, P3/P4/P5 channels, width multiple, parameters and GFLOPs at 640 with nc=80)
    'yolov5-timm-mobilenetv3.yaml': ('mobilenetv3_large_100', [40, 112, 960], 1.0, 16921325, 26.9),
    'yolov5-timm-efficientnet_b0.yaml': ('efficientnet_b0', [40, 112, 320], 0.5, 6991417, 12.1),
    'yolov5-timm-resnet18.yaml': ('resnet18', [128, 256, 512], 0.5, 14897341, 36.2),
}
HEAD_WIDTHS = (0.25, 0.5, 0.75, 1.0, 1.25)  # YOLOv5's width multiples n, s, m, l, x


def build(name: str, args: list) -> Backbone:
    return get_module(name)(*args)


def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so that fusing has something to fold (fresh BNs are identities,
    and EfficientViT zero-initialises some BN weights, which would silence whole branches)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.4 + 0.1 * torch.randn(n, generator=g))
                m.bias.copy_(0.05 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.05 * torch.randn(n, generator=g))
                m.running_var.copy_(0.75 + 0.5 * torch.rand(n, generator=g))
    return model


def rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((x - y).abs().max() / x.abs().max()).item() for x, y in zip(a, b))


def frozen_entries(bb: Backbone) -> dict[str, torch.Tensor]:
    """State-dict entries (parameters and BN statistics) inside the backbone's frozen parts, cloned."""
    ids = {id(t) for m in bb.frozen_modules() for t in (*m.parameters(), *m.buffers())}
    return {k: v.detach().clone() for k, v in bb.state_dict(keep_vars=True).items() if id(v) in ids}


def cfg_for(name: str, args: list, yaml_name: str | None) -> dict:
    """The shipped YAML using this backbone, or the M0 YAML with its backbone row swapped for this one."""
    cfg, _ = load_model_cfg(yaml_name or 'yolov5-efficientvit.yaml')
    cfg['backbone'][0] = [-1, 1, name, list(args)]
    return cfg


# ----------------------------------------------------------------------------------------------------------------
# The contract, for every registered backbone
# ----------------------------------------------------------------------------------------------------------------
def test_registry_lists_every_backbone():
    assert BACKBONES == ['EfficientViT_M0', 'EfficientViT_M1', 'EfficientViT_M2', 'EfficientViT_M3',
                         'EfficientViT_M4', 'EfficientViT_M5', 'Timm']
    assert 'Conv' in list_modules() and 'Conv' not in BACKBONES and list_modules('module') == sorted(
        set(list_modules()) - set(BACKBONES))
    assert (weights_arg('EfficientViT_M3'), weights_arg('Timm'), weights_arg('Conv')) == (0, 1, None)
    with pytest.raises(ValueError, match="module kind must be one of"):
        list_modules('neck')


@pytest.mark.parametrize('name, args, yaml_name', CASES)
def test_declared_outputs_equal_real_outputs(name, args, yaml_name):
    """Channels and strides as declared, at a square and a non-square input."""
    bb = build(name, args).eval()
    assert isinstance(bb, Backbone) and all(isinstance(f, FeatureInfo) for f in bb.feature_info)
    for h, w in ((64, 64), (96, 160)):
        with torch.no_grad():
            outs = bb(torch.randn(1, 3, h, w))
        assert isinstance(outs, list) and len(outs) == len(bb.feature_info)
        assert [o.shape[1] for o in outs] == bb.out_channels
        assert [(o.shape[2] * s, o.shape[3] * s) for o, s in zip(outs, bb.strides)] == [(h, w)] * len(outs)


@pytest.mark.parametrize('name, args, yaml_name', CASES)
def test_input_size_note_is_a_line_or_none(name, args, yaml_name):
    """The trainer logs it as is: None or one line (EfficientViT at 256 px: its window padding)."""
    bb = build(name, args)
    for size in (224, 256, 640):
        note = bb.input_size_note(size, size)
        assert note is None or (isinstance(note, str) and note and '\n' not in note)
    assert (bb.input_size_note(256, 256) is not None) == name.startswith('EfficientViT')


@pytest.mark.parametrize('name, args, yaml_name', CASES)
def test_stages_hold_every_parameter_once(name, args, yaml_name):
    bb = build(name, args)
    stages = bb.stages()
    seen = [id(p) for s in stages for p in s.parameters()]
    assert len(seen) == len(set(seen)) == len(list(bb.parameters()))
    with pytest.raises(ValueError, match=rf'frozen_stages must be 0\.\.{len(stages)} \(0 none'):
        bb.freeze(len(stages) + 1)
    bb.freeze(len(stages))
    assert not any(p.requires_grad for p in bb.parameters()) and bb.frozen_modules() == [bb]


@pytest.mark.parametrize('name, args, yaml_name', CASES)
def test_fuse_keeps_outputs(name, args, yaml_name):
    """fuse() (the fastest path) and fuse(exact=True) compute what the unfused backbone computes."""
    bb = perturb(build(name, args)).eval()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = bb(x)
        for exact in (False, True):
            fused = copy.deepcopy(bb)
            assert fused.fuse(exact=exact) is fused
            assert rel_diff(want, fused(x)) < 1e-4, exact
            assert rel_diff(want, fused.fuse(exact=exact)(x)) < 1e-4  # fusing twice is harmless


@pytest.mark.parametrize('name, args, yaml_name', CASES)
def test_freeze_holds_through_training(name, args, yaml_name):
    """Two frozen stages through a few SGD steps with momentum and weight decay (frozen parameters stay in the
    optimizer, as in YOLOv5): their weights and BN statistics keep every bit; the rest trains."""
    torch.manual_seed(0)
    bb = build(name, args)
    bb.freeze(2)
    frozen = frozen_entries(bb)
    assert frozen and all(not p.requires_grad for p in bb.frozen_modules()[0].parameters())
    before = {k: v.clone() for k, v in bb.state_dict().items() if k not in frozen}
    opt = torch.optim.SGD(bb.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    bb.train()
    bns = [m for part in bb.frozen_modules() for m in part.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)  # frozen statistics: eval mode inside a training backbone
    for _ in range(3):
        loss = sum(o.pow(2).mean() for o in bb(torch.randn(2, 3, 64, 64)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = bb.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())
    changed = [k for k, v in before.items() if v.is_floating_point() and not torch.equal(after[k], v)]
    assert any(k.endswith('weight') for k in changed) and any(k.endswith('running_mean') for k in changed)


@pytest.mark.parametrize('name, args, yaml_name', CASES)
def test_state_dict_round_trips_through_our_checkpoint(name, args, yaml_name, tmp_path):
    torch.manual_seed(0)
    model = perturb(DetectionModel(cfg_for(name, args, yaml_name), nc=3, verbose=False)).eval()
    ckpt = {'model': model.state_dict(), 'ema': None, 'model_yaml': model.yaml, 'names': {0: 'a', 1: 'b', 2: 'c'},
            'nc': 3, 'epoch': -1}
    back = model_from_checkpoint(load_checkpoint(save_checkpoint(ckpt, tmp_path / 'm.pt')))
    sd = back.state_dict()
    assert list(sd) == list(model.state_dict())
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(model(x)[0], back(x)[0])


@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning', 'ignore::DeprecationWarning')
@pytest.mark.parametrize('name, args, yaml_name', CASES)
def test_onnx_export_matches(name, args, yaml_name, tmp_path):
    """The fused backbone (what export.py exports) through ONNX Runtime: same outputs within 1e-4."""
    ort = pytest.importorskip('onnxruntime')
    bb = perturb(build(name, args)).eval().fuse()
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    f = tmp_path / 'backbone.onnx'
    torch.onnx.export(bb, (x,), str(f), input_names=['images'], opset_version=17, dynamo=False)
    got = ort.InferenceSession(str(f), providers=['CPUExecutionProvider']).run(None, {'images': x.numpy()})
    with torch.no_grad():
        want = bb(x)
    assert len(got) == len(want) and rel_diff(want, [torch.from_numpy(g) for g in got]) < 1e-4


# ----------------------------------------------------------------------------------------------------------------
# The base class and the registry
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('channels, strides, match', [
    ([8, 16], [8, 16, 32], 'one stride per output'),
    ([], [], 'one stride per output'),
    ([8, 0, 16], [8, 16, 32], 'channels must be positive integers'),
    ([8, 16, 24], [8, 32, 16], 'strides must be positive integers in increasing order'),
    ([8, 16, 24], [8, 8, 16], 'strides must be positive integers in increasing order'),
])
def test_declared_outputs_are_validated(channels, strides, match):
    with pytest.raises(ValueError, match=match):
        check_feature_info(channels, strides)


def test_a_newly_registered_backbone_is_listed(monkeypatch):
    from models import registry

    class Stub(Backbone):
        def __init__(self):
            super().__init__([4], [8])

    monkeypatch.setitem(registry.MODULES, 'StubBackbone', Stub)
    monkeypatch.setitem(registry._KIND, 'StubBackbone', 'backbone')
    assert 'StubBackbone' in list_modules('backbone')
    assert Stub().strides == [8] and Stub().no_weight_decay() == set()
    with pytest.raises(NotImplementedError, match='must implement stages'):
        Stub().freeze(0)
    with pytest.raises(ValueError, match="module kind must be one of"):
        register_module('X', kind='neck')


def test_efficientvit_and_timm_share_the_weights_report():
    assert ev.LoadReport is backbone_weights.LoadReport and ev.PretrainedError is backbone_weights.PretrainedError


def test_no_weight_decay_is_declared_by_the_backbone():
    model = DetectionModel('yolov5-efficientvit.yaml', nc=3, verbose=False)
    names = model.no_weight_decay()
    assert len(names) == 6 and all(n.startswith('model.0.') and n.endswith('attention_biases') for n in names)
    convnext = Timm('convnext_atto')  # layer-scale gammas are 1-D: timm never decays them
    assert {n for n in convnext.no_weight_decay() if n.endswith('gamma')} and all(
        p.ndim <= 1 for n, p in convnext.named_parameters() if n in convnext.no_weight_decay())


# ----------------------------------------------------------------------------------------------------------------
# Timm: by name, local weights only, one-line errors
# ----------------------------------------------------------------------------------------------------------------
def test_timm_default_and_chosen_outputs():
    r18 = Timm('resnet18')
    assert (r18.out_channels, r18.strides, r18.take, len(r18.stages())) == ([128, 256, 512], [8, 16, 32], [2, 3, 4], 5)
    four = Timm('resnet18', '', 1, [1, 2, 3, 4])
    assert (four.out_channels, four.strides, four.frozen_stages) == ([64, 128, 256, 512], [4, 8, 16, 32], 1)
    short = Timm('resnet18', '', 0, [2, 3])  # levels past the last output are dropped by timm
    assert short.strides == [8, 16] and not any(n.startswith('layer4') for n, _ in short.named_parameters())


@pytest.mark.parametrize('fmt', ['pth', 'safetensors'])
def test_timm_loads_a_local_timm_state_dict(tmp_path, fmt, log_lines):
    timm = pytest.importorskip('timm')
    full = perturb(timm.create_model('convnext_atto', pretrained=False), seed=1)  # FeatureListNet flattens stages.N
    with torch.no_grad():
        full.stages[1].blocks[0].gamma.fill_(0.5)
    f = tmp_path / f'convnext_atto.{fmt}'
    if fmt == 'pth':
        torch.save({'state_dict': full.state_dict(), 'epoch': 3}, f)
    else:
        from safetensors.torch import save_file
        save_file(full.state_dict(), str(f))
    bb = Timm('convnext_atto', str(f))
    rep = bb.pretrained_report
    n_body = len(bb.body.state_dict())
    assert len(rep.loaded) == n_body and not rep.missing and not rep.adapted
    assert set(rep.skipped) == {k for k in full.state_dict() if k.startswith('head.')}
    assert torch.equal(bb.body.stages_1.blocks[0].gamma, torch.full_like(bb.body.stages_1.blocks[0].gamma, 0.5))
    assert any(f'loaded {n_body} tensors (0 of them adapted), skipped {len(rep.skipped)}' in x for x in log_lines)


def test_timm_checkpoint_rebuilds_without_the_weights_file(tmp_path):
    """A checkpoint carries the weights: rebuilding it neither needs the file nor loses the model name."""
    timm = pytest.importorskip('timm')
    f = tmp_path / 'r18.pth'
    torch.save(timm.create_model('resnet18', pretrained=False).state_dict(), f)
    cfg = cfg_for('Timm', ['resnet18', str(f), 2], 'yolov5-timm-resnet18.yaml')
    model = DetectionModel(cfg, nc=3, verbose=False)
    assert model.model[0].frozen_stages == 2 and model.model[0].pretrained_report is not None
    path = save_checkpoint({'model': model.state_dict(), 'model_yaml': model.yaml, 'names': {0: 'a', 1: 'b', 2: 'c'},
                            'nc': 3}, tmp_path / 'det.pt')
    f.unlink()
    back = model_from_checkpoint(load_checkpoint(path))
    assert back.yaml['backbone'][0][3] == ['resnet18', '', 2] and back.model[0].frozen_stages == 2
    assert back.model[0].pretrained_report is None


@pytest.mark.parametrize('args, match', [
    (['resnet81'], r"unknown timm model 'resnet81'; close matches: resnet18, "),
    (['efficientvit_m0'], r"timm model 'efficientvit_m0' has feature strides \[16, 32, 64\], no stride 8 output "
                          r".*use our EfficientViT_M0 \(strides 8/16/32\)"),
    (['vit_tiny_patch16_224'], r'feature strides \[16\], no stride 8/32 output for P3/P4/P5; pick levels with '
                               'out_indices'),
    (['hf-hub:timm/resnet18.a1_in1k'], 'names a hub or URL config; nothing is downloaded'),
    ([''], 'Timm needs a timm model name'),
    (['resnet18', 'https://example.com/resnet18.pth'], 'are a URL or hub tag; nothing is downloaded'),
    (['resnet18', 'hf-hub:timm/resnet18.a1_in1k'], 'are a URL or hub tag; nothing is downloaded'),
    (['resnet18', True], 'must be a local file path, got True; nothing is downloaded'),
    (['resnet18', '', 6], r'frozen_stages must be 0\.\.5 \(0 none, 5 whole backbone\), got 6'),
    (['resnet18', '', 0, [2, 9]], r"out_indices must be 1-4 indices into the 5 feature levels of 'resnet18'"),
    (['resnet18', '', 0, [3, 2]], 'strides must be positive integers in increasing order, got \\[16, 8\\]'),
])
def test_timm_errors_are_one_line(args, match):
    with pytest.raises(ValueError, match=match) as e:
        Timm(*args)
    assert '\n' not in str(e.value)


def test_timm_weight_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='pretrained weights not found: .*nope.pth'):
        Timm('resnet18', str(tmp_path / 'nope.pth'))
    other = tmp_path / 'other.pth'
    torch.save({'model': {'blocks.0.weight': torch.zeros(3)}}, other)
    with pytest.raises(backbone_weights.PretrainedError, match='other.pth: no tensor matches the timm resnet18 '):
        Timm('resnet18', str(other))
    code = tmp_path / 'code.pth'
    torch.save({'model': {'conv1.weight': torch.zeros(1)}, 'fn': print}, code)  # a pickle naming a function
    with pytest.raises(backbone_weights.PretrainedError, match='code.pth: refused: the pickle names builtins.print'):
        Timm('resnet18', str(code))


def test_timm_error_through_a_model_yaml_is_one_line():
    cfg = cfg_for('Timm', ['resnet81'], 'yolov5-timm-resnet18.yaml')
    with pytest.raises(ModelConfigError, match=r"layer 0: .*Timm\['resnet81'\] failed: unknown timm model") as e:
        DetectionModel(cfg, verbose=False)
    assert '\n' not in str(e.value)


# ----------------------------------------------------------------------------------------------------------------
# The shipped timm YAMLs: multiples rule, printed summary, one epoch of training with validation
# ----------------------------------------------------------------------------------------------------------------
def test_every_timm_yaml_is_pinned():
    assert sorted(TIMM_YAMLS) == sorted(p.name for p in (ROOT / 'models').glob('yolov5-timm-*.yaml'))


@pytest.mark.parametrize('cfg', list(TIMM_YAMLS))
def test_timm_yaml_summary_and_head_multiples(cfg, log_text):
    name, outs, width, params, gflops = TIMM_YAMLS[cfg]
    model = yolo_main(yolo_opt(['--cfg', f'models/{cfg}', '--no-fuse']))
    bb = model.model[0]
    assert isinstance(bb, Timm) and bb.name == name and bb.out_channels == outs and model.stride.tolist() == [8, 16, 32]
    assert model.yaml['depth_multiple'] == 0.33
    assert width == min(w for w in HEAD_WIDTHS if 1024 * w >= outs[-1])  # the README's rule
    assert model.model[5].cv1.conv.in_channels == outs[-1] and model.model[-1].m[2].in_channels == 1024 * width
    text = log_text.getvalue()
    line = [x for x in text.splitlines() if ' summary: ' in x][0]
    assert line.startswith(f"{Path(cfg).stem.replace('yolov5', 'YOLOv5')} summary: ")
    assert f' {params} parameters' in line
    assert float(line.split(', ')[-1].split()[0]) == pytest.approx(gflops, abs=0.05)
    assert 'models.timm_backbone.Timm' in text and 'models.common.SPPF' in text  # the layer table


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp('tiny'), n_train=4, n_val=2, nc=3, imgsz=64)


@pytest.mark.parametrize('cfg', [pytest.param(c, marks=[pytest.mark.slow] if c in SLOW else []) for c in TIMM_YAMLS])
def test_timm_yaml_trains_one_epoch_and_validates(cfg, data, tmp_path, log_lines):
    save_dir = train.run(data=str(data), cfg=f'models/{cfg}', epochs=1, imgsz=64, batch_size=2, workers=0,
                         project=str(tmp_path), name='exp', device='cpu', noplots=True, noautoanchor=True)
    rows = (save_dir / 'results.csv').read_text().splitlines()
    assert len(rows) == 2 and all(math.isfinite(float(v)) for v in rows[1].split(',')[1:4])
    assert any(x.strip().startswith('Validating ') and x.endswith('best.pt...') for x in log_lines)
    assert any(x.split()[:2] == ['all', '2'] for x in log_lines)  # the validation table (2 val images)
    back = model_from_checkpoint(load_checkpoint(save_dir / 'weights/best.pt'))
    assert isinstance(back.model[0], Timm) and back.model[0].name == TIMM_YAMLS[cfg][0]

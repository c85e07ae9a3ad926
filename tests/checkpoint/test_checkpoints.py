"""Checkpoints: our weights-only format, official YOLOv5 pickles through an allow-list, transfer, strip."""
import copy
import os
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import models.common
import models.yolo
from models.yolo import DetectionModel
from utils.checkpoint.file_kind import export_name, weights_format
from utils.checkpoint.format import FORMAT, CheckpointError, copy_checkpoint, load_checkpoint, save_checkpoint
from utils.checkpoint.model import load_model, model_from_checkpoint, strip_optimizer, transfer_weights

NAMES = {0: 'cat', 1: 'dog'}


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    m = DetectionModel('yolov5n.yaml', nc=2, verbose=False)
    m.names = dict(NAMES)
    for bn in m.modules():  # non-trivial statistics, so a lost BN buffer would show in the outputs
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    return m.eval()




def predict(m, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        return m.eval()(torch.rand(1, 3, 64, 96))[0]


def our_ckpt(m, **extra):
    ckpt = {'model': m.state_dict(), 'ema': None, 'updates': 0, 'optimizer': None, 'model_yaml': m.yaml,
            'names': m.names, 'nc': m.nc, 'epoch': 3, 'best_fitness': 0.5, 'opt': {}, 'hyp': {'lr0': 0.01},
            'train_state': None}
    ckpt.update(extra)
    return ckpt


def test_copy_checkpoint_copies_the_bytes_atomically(model, tmp_path):
    src = save_checkpoint(our_ckpt(model), tmp_path / 'last.pt')
    dst = copy_checkpoint(src, tmp_path / 'w' / 'best.pt')
    assert dst == tmp_path / 'w' / 'best.pt' and dst.read_bytes() == src.read_bytes()
    assert [p.name for p in dst.parent.iterdir()] == ['best.pt']  # the temp file was renamed into place
    with pytest.raises(FileNotFoundError):
        copy_checkpoint(tmp_path / 'missing.pt', tmp_path / 'w' / 'epoch3.pt')
    assert [p.name for p in dst.parent.iterdir()] == ['best.pt']  # a failed copy leaves nothing behind


def test_save_load_roundtrip_is_weights_only(model, tmp_path):
    path = save_checkpoint(our_ckpt(model, opt={'save_dir': tmp_path, 'imgsz': (64, 64)}), tmp_path / 'a' / 'last.pt')
    assert path == tmp_path / 'a' / 'last.pt'
    assert [p.name for p in path.parent.iterdir()] == ['last.pt']  # the temp file was renamed into place
    raw = torch.load(path, weights_only=True)  # plain torch can read it safely
    assert raw['format'] == FORMAT and raw['format_version'] == 1 and raw['opt']['save_dir'] == str(tmp_path)
    ckpt = load_checkpoint(path)
    assert ckpt['epoch'] == 3 and ckpt['names'] == NAMES and ckpt['date']
    m2 = model_from_checkpoint(ckpt)
    assert not m2.training and m2.names == NAMES and m2.nc == 2 and m2.hyp == {'lr0': 0.01}
    assert next(m2.parameters()).dtype == torch.float32
    torch.testing.assert_close(predict(m2), predict(model), rtol=0, atol=0)


def test_save_refuses_modules(model, tmp_path):
    with pytest.raises(CheckpointError, match=r'entry ckpt.model is a module \(DetectionModel\)'):
        save_checkpoint({'model': model}, tmp_path / 'x.pt')
    assert not list(tmp_path.iterdir())


def test_prefer_ema(model):
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    ema['model.24.m.0.bias'] += 1.0
    ckpt = our_ckpt(model, ema=ema)
    got = model_from_checkpoint(ckpt).state_dict()['model.24.m.0.bias']
    torch.testing.assert_close(got, ema['model.24.m.0.bias'])
    plain = model_from_checkpoint(ckpt, prefer_ema=False).state_dict()['model.24.m.0.bias']
    torch.testing.assert_close(plain, model.state_dict()['model.24.m.0.bias'])


def test_load_model_fuses(model, tmp_path):
    path = save_checkpoint(our_ckpt(model), tmp_path / 'best.pt')
    fused = load_model(path)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    torch.testing.assert_close(predict(fused), predict(model), rtol=1e-4, atol=1e-3)


def test_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match=r'nope\.pt: checkpoint not found'):
        load_checkpoint(tmp_path / 'nope.pt')
    bad = tmp_path / 'bad.pt'
    good = save_checkpoint({'format': FORMAT, 'format_version': 1, 'model': {}, 'model_yaml': {}}, tmp_path / 'g.pt')
    # each of these once escaped as a raw exception (struct.error for the 4-byte file)
    for content in (b'\x00garbage' * 50, b'junk', b'', good.read_bytes()[:200], b'PK\x03\x04' + b'\x00' * 40):
        bad.write_bytes(content)
        with pytest.raises(CheckpointError, match=r'bad\.pt: not a readable PyTorch checkpoint'):
            load_checkpoint(bad)
    foreign = tmp_path / 'cream.pt'
    torch.save({'model': {'patch_embed.0.c.weight': torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match=r'cream\.pt: not a yolov5-efficientvit or YOLOv5 checkpoint'):
        load_checkpoint(foreign)
    newer = tmp_path / 'newer.pt'
    torch.save({'format': FORMAT, 'format_version': 99, 'model': {}, 'model_yaml': {}}, newer)
    with pytest.raises(CheckpointError, match='format_version 99 is newer'):
        load_checkpoint(newer)


def test_checkpoint_for_another_architecture(model, tmp_path):
    ckpt = our_ckpt(model)
    ckpt['model_yaml'] = dict(model.yaml, width_multiple=0.5)  # the weights are yolov5n's, the yaml says yolov5s
    path = save_checkpoint(ckpt, tmp_path / 'mixed.pt')
    with pytest.raises(CheckpointError, match=r'mixed\.pt: weights are for another architecture: 0 missing, '
                                              r'0 unexpected and \d+ mis-shaped tensors \(e\.g\. model\.0\.conv'):
        load_model(path)


def test_transfer_weights_by_name_and_shape(model, log_text):
    target = DetectionModel('yolov5n.yaml', nc=5, verbose=False)  # other nc: Detect convs differ in shape
    n, total = transfer_weights(target, model.state_dict(), source='yolov5n-2cls.pt')
    assert total == len(target.state_dict()) and n == total - 6  # 3 Detect weights + 3 biases skipped
    torch.testing.assert_close(target.state_dict()['model.5.conv.weight'], model.state_dict()['model.5.conv.weight'])
    n2, _ = transfer_weights(target, model.state_dict(), exclude=('anchor',))
    assert n2 == n - 1
    assert f'Transferred {n}/{total} items from yolov5n-2cls.pt' in log_text.getvalue()


def test_strip_optimizer(model, tmp_path):
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    ema['model.24.m.0.bias'] += 1.0
    opt = {'state': {0: {'momentum_buffer': torch.zeros(10)}}, 'param_groups': [{'lr': 0.01, 'params': [0]}]}
    path = save_checkpoint(our_ckpt(model, ema=ema, optimizer=opt, updates=7, train_state={'scheduler': {}}),
                           tmp_path / 'last.pt')
    out = strip_optimizer(path, tmp_path / 'stripped.pt')
    ckpt = load_checkpoint(out)
    assert ckpt['epoch'] == -1 and ckpt['optimizer'] is None and ckpt['ema'] is None and ckpt['train_state'] is None
    assert ckpt['model']['model.0.conv.weight'].dtype == torch.float16
    torch.testing.assert_close(ckpt['model']['model.24.m.0.bias'].float(), ema['model.24.m.0.bias'], atol=1e-2,
                               rtol=1e-3)
    assert out.stat().st_size < path.stat().st_size
    assert load_checkpoint(path)['epoch'] == 3  # the original is left alone when s is given


# ----------------------------------------------------------------- official YOLOv5 pickles

def official_ckpt(model):
    """What YOLOv5 v7.0 writes: the pickled fp16 model under 'model', EMA stripped."""
    return {'epoch': -1, 'best_fitness': None, 'model': copy.deepcopy(model).half(), 'ema': None, 'updates': None,
            'optimizer': None, 'opt': {'imgsz': 640, 'weights': 'yolov5n.pt'}, 'git': {'commit': 'abc'},
            'date': '2022-11-22T00:00:00'}


def test_official_v7_pickle_loads_every_tensor(model, tmp_path):
    """Our own classes live at YOLOv5's paths (models.yolo.DetectionModel, models.common.Conv, ...)."""
    path = tmp_path / 'yolov5n.pt'
    torch.save(official_ckpt(model), path)
    ckpt = load_checkpoint(path)
    assert ckpt['converted_from'] == 'yolov5' and ckpt['names'] == NAMES and ckpt['nc'] == 2
    expected = {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    assert ckpt['model'].keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(ckpt['model'][k], v), k
    m2 = load_model(path, fuse=False)
    ref = copy.deepcopy(model).half().float()
    torch.testing.assert_close(predict(m2), predict(ref), rtol=0, atol=0)


def test_official_pre_v62_pickle_with_stand_in_classes(model, tmp_path, monkeypatch):
    """A file pickled by YOLOv5 < 6.2: classes models.yolo.Model / Detect, models.common.*, names as a list.
    Stand-in classes at those paths live in temporary modules (sys.modules patched, restored by monkeypatch)."""
    fake = {name: types.ModuleType(name) for name in ('models.yolo', 'models.common')}
    stand_ins = {}
    for real in {type(m) for m in model.modules() if type(m).__module__ in ('models.yolo', 'models.common')}:
        name = 'Model' if real is DetectionModel else real.__name__
        cls = type(name, (nn.Module,), {'__module__': real.__module__, '__qualname__': name})
        setattr(fake[real.__module__], name, cls)
        stand_ins[real] = cls
    old = copy.deepcopy(model).half()
    old.names = ['cat', 'dog']
    old.model[-1].anchor_grid = [torch.zeros(1)] * 3
    for m in old.modules():
        m.__class__ = stand_ins.get(type(m), type(m))
    for name, mod in fake.items():
        monkeypatch.setitem(sys.modules, name, mod)
    path = tmp_path / 'yolov5n_v61.pt'
    torch.save({'epoch': -1, 'model': old, 'ema': None, 'optimizer': None}, path)
    monkeypatch.undo()
    assert sys.modules['models.yolo'] is models.yolo and sys.modules['models.common'] is models.common
    m2 = load_model(path, fuse=True)
    assert m2.names == NAMES and isinstance(m2, DetectionModel)
    ref = copy.deepcopy(model).half().float()
    torch.testing.assert_close(predict(m2), predict(ref), rtol=1e-4, atol=1e-3)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_pickle_naming_other_globals_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pt'
    torch.save({'epoch': -1, 'model': _Evil(marker)}, path)
    with pytest.raises(CheckpointError, match=r'evil\.pt: refused: the pickle names (posix|nt|os)\.system, which is '
                                              'not on the allow-list'):
        load_model(path)
    assert not marker.exists()


def test_efficientvit_checkpoint_ignores_pretrained_path(tmp_path):
    """A checkpoint carries the backbone weights: a pretrained path in its yaml (gone by now) is not re-read."""
    torch.manual_seed(0)
    model = DetectionModel('yolov5-efficientvit.yaml', nc=2, verbose=False).eval()
    ckpt = our_ckpt(model, names=NAMES, yaml_file='yolov5-efficientvit.yaml')
    ckpt['model_yaml'] = copy.deepcopy(model.yaml)
    ckpt['model_yaml']['backbone'][0] = [-1, 1, 'EfficientViT_M0', [str(tmp_path / 'deleted.pth'), 0]]
    path = save_checkpoint(ckpt, tmp_path / 'evit.pt')
    m2 = load_model(path, fuse=True)
    assert m2.yaml_file == 'yolov5-efficientvit.yaml' and m2.names == NAMES
    torch.testing.assert_close(predict(m2), predict(model), rtol=1e-4, atol=1e-3)


def test_file_kind_from_the_name(tmp_path):
    kinds = {'a.pt': 'pt', 'a.torchscript': 'jit', 'a.ONNX': 'onnx', 'a.xml': 'openvino',
             'a_openvino_model': 'openvino', 'a.engine': None, 'a.bin': None, 'a': None}
    assert {n: weights_format(Path(n)) for n in kinds} == kinds
    onnx, pt = tmp_path / 'a.onnx', tmp_path / 'a.pt'
    assert export_name(onnx) is None  # only an existing export is named
    onnx.write_bytes(b'x')
    pt.write_bytes(b'x')
    (tmp_path / 'a_openvino_model').mkdir()
    assert [export_name(p) for p in (onnx, pt, tmp_path / 'a_openvino_model')] == [
        'an ONNX export', None, 'an OpenVINO export']

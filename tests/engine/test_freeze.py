"""Freezing has one owner, the model: a YAML ``frozen_stages`` and ``--freeze`` add up, and frozen weights and BN
statistics keep every bit through train.py, the EMA, checkpoints and ``--resume``."""
from pathlib import Path

import pytest
import torch
import yaml

import train
from models.yolo import DetectionModel, load_model_cfg
from tests.helpers import write_dataset
from utils.checkpoint.format import save_checkpoint
from utils.engine import optim
from utils.engine import trainer as trainer_mod
from utils.engine.ema import ModelEMA
from utils.engine.options import TrainError


def m0_cfg(*backbone_args) -> dict:
    cfg, _ = load_model_cfg('yolov5-efficientvit.yaml')
    cfg['backbone'][0] = [-1, 1, 'EfficientViT_M0', list(backbone_args)]
    return cfg


def prefixes(model: DetectionModel, stages: int, layers: list[int]) -> tuple[str, ...]:
    """State-dict prefixes of the first ``stages`` EfficientViT stages and of whole ``layers``."""
    names = ['patch_embed', 'blocks1', 'blocks2', 'blocks3'][:stages]
    return tuple(f'model.0.{n}.' for n in names) + tuple(f'model.{i}.' for i in layers)


def test_yaml_frozen_stages_and_freeze_flag_add_up():
    model = DetectionModel(m0_cfg('', 2), nc=3, verbose=False)
    bb = model.model[0]
    assert bb.frozen_stages == 2
    frozen = set(model.freeze(optim.freeze_indices([5, 6])))  # several values: exactly layers 5 and 6
    assert bb.frozen_stages == 2  # --freeze did not undo (or widen) the YAML's stages
    want = prefixes(model, 2, [5, 6])
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith(want)}
    assert set(model.freeze([])) == frozen  # freezing nothing more unfreezes nothing
    model.train()
    assert not model.model[5].training and not model.model[6].bn.training and model.model[7].training
    assert not bb.patch_embed.training and not bb.blocks1.training and bb.blocks2.training
    keys = model.frozen_state_keys()
    assert 'model.6.bn.running_var' in keys and 'model.0.blocks1.0.ffn0.m.pw1.bn.running_mean' in keys
    assert not any(k.startswith(('model.0.blocks2.', 'model.9.')) for k in keys)


@pytest.mark.parametrize('flag, frozen_layers', [([0], []), ([1], [0]), ([5], [0]), ([10], [0, 5, 6, 9]),
                                                  ([0, 9], [0, 9])])
def test_freeze_flag_keeps_yolov5_meaning(flag, frozen_layers):
    """--freeze N: layers 0..N-1 (layer 0 is the whole backbone; slots 1-4, Upsample and Concat hold no parameters);
    several values: those layers. On top of the YAML's frozen_stages 1."""
    model = DetectionModel(m0_cfg('', 1), nc=3, verbose=False)
    frozen = set(model.freeze(optim.freeze_indices(flag)))
    want = {n for n, _ in model.named_parameters() if n.startswith(prefixes(model, 1, frozen_layers))}
    assert frozen == want
    assert model.model[0].frozen_stages == (4 if 0 in frozen_layers else 1)


def test_frozen_detect_head_still_gives_the_loss_its_raw_outputs():
    """--freeze naming the Detect layer (YOLOv5 allows it: its convs stop learning, the rest trains). Detect holds
    no statistics and its mode only picks raw or decoded outputs, so it stays in train mode: put in eval mode like
    other frozen layers, it handed the loss decoded boxes (an IndexError inside build_targets)."""
    from tests.ops.test_loss import HYP
    from utils.ops.loss import ComputeLoss

    torch.manual_seed(0)
    model = DetectionModel(m0_cfg(), nc=3, verbose=False)
    detect = len(model.model) - 1
    frozen = set(model.freeze(optim.freeze_indices([0, detect])))
    assert {n.split('.')[1] for n in frozen} == {'0', str(detect)}
    model.train()
    assert model.model[detect].training and not model.model[0].training and model.model[detect - 1].training
    pred = model(torch.rand(2, 3, 64, 64))
    assert [tuple(x.shape) for x in pred] == [(2, 3, 8, 8, 8), (2, 3, 4, 4, 8), (2, 3, 2, 2, 8)]
    model.hyp = dict(HYP)
    loss, _ = ComputeLoss(model)(pred, torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.3]]))
    loss.sum().backward()
    assert model.model[detect - 1].cv3.conv.weight.grad is not None
    assert all(p.grad is None for p in model.model[detect].parameters())


def test_freezing_every_layer_is_one_line(data, tmp_path):
    """--freeze 99 on a 21-layer model leaves nothing to train: one line before any epoch, not a traceback."""
    with pytest.raises(TrainError, match=r'^--freeze 99 freezes every layer of the model \(0-20\): nothing is left '
                                         r'to train$'):
        train.run(data=str(data), cfg='yolov5-efficientvit.yaml', epochs=1, imgsz=64, batch_size=2, workers=0,
                  project=str(tmp_path), name='exp', device='cpu', noplots=True, noautoanchor=True, noval=True,
                  freeze=[99])


def test_ema_keeps_frozen_entries_bit_identical():
    """d*v + (1-d)*v is not v in floating point: averaging would move frozen weights; the EMA copies them."""
    torch.manual_seed(0)
    model = DetectionModel(m0_cfg('', 2), nc=3, verbose=False)
    model.freeze([5])
    ema = ModelEMA(model, decay=0.9999, tau=3.0)
    keys = model.frozen_state_keys()
    want = {k: v.clone() for k, v in model.state_dict().items() if k in keys}
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01)
    for _ in range(5):
        ema.update(model)
    got = ema.ema.state_dict()
    assert all(torch.equal(got[k], v) for k, v in want.items())
    assert not torch.equal(got['model.9.cv1.conv.weight'], model.state_dict()['model.9.cv1.conv.weight'])
    d = ema.decay(5)
    drift = [k for k, v in want.items() if v.is_floating_point() and not torch.equal(v * d + v * (1 - d), v)]
    assert drift  # what plain averaging would have changed


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp('tiny'), n_train=4, n_val=2, nc=3, imgsz=64)


def _interrupt_after_first_epoch(monkeypatch):
    """Make the run stop as if killed once epoch 0 is saved (last.pt then holds epoch 0, optimizer included)."""
    real = trainer_mod.Trainer.train_one_epoch

    def train_one_epoch(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        real(self, epoch)

    monkeypatch.setattr(trainer_mod.Trainer, 'train_one_epoch', train_one_epoch)


def test_frozen_stages_hold_through_train_py_ema_and_resume(data, tmp_path, monkeypatch, log_lines):
    """YAML frozen_stages: 2 plus --freeze 5 6, trained by train.py: after one epoch (epoch0.pt, model and EMA) and
    after --resume continues to epoch 1 (epoch1.pt), the frozen parameters and BN statistics are those of the
    starting weights, bit for bit; everything else has trained."""
    torch.manual_seed(0)
    start = DetectionModel(m0_cfg('', 2), nc=3, verbose=False)
    init = save_checkpoint({'model': start.state_dict(), 'model_yaml': start.yaml, 'nc': 3,
                            'names': {0: 'a', 1: 'b', 2: 'c'}}, tmp_path / 'init.pt')
    cfg = tmp_path / 'm0-frozen.yaml'
    cfg.write_text(yaml.safe_dump(m0_cfg('', 2), sort_keys=False))
    opts = dict(data=str(data), cfg=str(cfg), weights=str(init), epochs=2, imgsz=64, batch_size=2, workers=0,
                project=str(tmp_path), name='exp', device='cpu', noplots=True, noautoanchor=True, noval=True,
                save_period=1, freeze=[5, 6], optimizer='AdamW')
    _interrupt_after_first_epoch(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train.run(**opts)
    monkeypatch.undo()
    assert any(x.startswith('freezing ') and x.endswith('parameter tensors (--freeze 5 6, backbone frozen_stages 2)')
               for x in log_lines)
    save_dir = tmp_path / 'exp'
    train.run(resume=str(save_dir / 'weights/last.pt'))
    frozen_prefixes = prefixes(start, 2, [5, 6])
    want = {k: v for k, v in start.state_dict().items() if k.startswith(frozen_prefixes)}
    assert any(k.endswith('running_mean') for k in want) and len(want) > 100
    for epoch in (0, 1):
        ckpt = torch.load(save_dir / f'weights/epoch{epoch}.pt', map_location='cpu', weights_only=True)
        for state in ('model', 'ema'):
            sd = ckpt[state]
            assert all(torch.equal(sd[k], v) for k, v in want.items()), (epoch, state)
            moved = [k for k in ('model.0.blocks2.3.ffn0.m.pw1.c.weight', 'model.0.blocks3.3.dw0.m.bn.running_mean',
                                 'model.5.cv1.conv.weight', 'model.9.cv1.conv.weight')
                     if not torch.equal(sd[k], start.state_dict()[k])]
            assert moved == ['model.0.blocks2.3.ffn0.m.pw1.c.weight', 'model.0.blocks3.3.dw0.m.bn.running_mean',
                             'model.9.cv1.conv.weight'], (epoch, state)  # model.5 is --freeze'd
    assert ckpt['epoch'] == 1 and ckpt['opt']['freeze'] == [5, 6]

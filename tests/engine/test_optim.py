"""Optimizer groups, LR lambdas, warmup, accumulation and --freeze (utils/engine/optim.py), checked with numbers."""
import math

import pytest
import torch
from torch import nn

from utils.engine import optim

HYP = {'lr0': 0.01, 'lrf': 0.01, 'momentum': 0.937, 'weight_decay': 0.0005, 'warmup_epochs': 3.0,
       'warmup_momentum': 0.8, 'warmup_bias_lr': 0.1}


class TinyAttention(nn.Module):
    """Stands in for an EfficientViT attention block: a parameter named attention_biases plus a linear layer.

    The optimizer spares attention_biases only because the model names it (``no_weight_decay``), as timm does."""

    def __init__(self):
        super().__init__()
        self.attention_biases = nn.Parameter(torch.zeros(2, 9))
        self.proj = nn.Linear(4, 4)  # weight -> decay, bias -> biases
        self.ln = nn.LayerNorm(4)  # weight -> no decay, bias -> biases


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)),  # model.0
            nn.Sequential(nn.Conv2d(8, 8, 1), nn.GroupNorm(2, 8)),  # model.1
            TinyAttention(),  # model.2
            nn.Conv2d(8, 4, 1),  # model.3
        )


def _ids(params):
    return {id(p) for p in params}


SKIP = {'model.2.attention_biases'}  # what Net's no_weight_decay() would name


def test_split_params_groups_every_parameter_once():
    net = Net()
    decay, no_decay, biases = optim.split_params(net, skip_decay=SKIP)
    m = net.model
    assert _ids(decay) == _ids([m[0][0].weight, m[1][0].weight, m[2].proj.weight, m[3].weight])
    assert _ids(no_decay) == _ids([m[0][1].weight, m[1][1].weight, m[2].attention_biases, m[2].ln.weight])
    assert _ids(biases) == _ids([m[0][1].bias, m[1][0].bias, m[1][1].bias, m[2].proj.bias, m[2].ln.bias,
                                 m[3].bias])
    assert len(decay) + len(no_decay) + len(biases) == len(list(net.parameters())) == 14
    decay, no_decay, _ = optim.split_params(net)  # nothing named: the table is an ordinary weight, decayed
    assert id(m[2].attention_biases) in _ids(decay) and len(no_decay) == 3


@pytest.mark.parametrize('name, cls', [('SGD', torch.optim.SGD), ('Adam', torch.optim.Adam),
                                       ('AdamW', torch.optim.AdamW)])
def test_build_optimizer_group_order_and_hyper(name, cls):
    net = Net()
    opt = optim.build_optimizer(net, name, lr=0.01, momentum=0.937, decay=0.0005, skip_decay=SKIP)
    assert type(opt) is cls
    g = opt.param_groups
    assert [len(x['params']) for x in g] == [6, 4, 4]  # biases, decayed weights, norm/attention weights
    assert [x['weight_decay'] for x in g] == [0.0, 0.0005, 0.0]
    assert all(x['lr'] == 0.01 for x in g)
    if name == 'SGD':
        assert g[0]['momentum'] == 0.937 and g[0]['nesterov'] is True
    else:
        assert g[0]['betas'] == (0.937, 0.999)


def _five_clipped_steps(nets, opts, foreach_clip):
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=gen) * 10 for p in nets[0].parameters()]
        for net, opt, foreach in zip(nets, opts, foreach_clip):
            for p, g in zip(net.parameters(), grads):
                p.grad = g.clone()
            torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=10.0, foreach=foreach)
            opt.step()


def _twins(name):
    nets = [Net(), Net()]
    nets[1].load_state_dict(nets[0].state_dict())
    return nets, [optim.build_optimizer(n, name, lr=0.01, momentum=0.9, decay=0.01, skip_decay=SKIP) for n in nets]


@pytest.mark.parametrize('name', ['SGD', 'Adam', 'AdamW'])
def test_cpu_groups_step_with_the_fused_kernel_within_an_ulp_of_the_loop(name):
    """On the CPU every group uses torch's fused kernel; 5 steps (after a gradient clip) stay within ~1 ulp of the
    per-parameter loop (fused sums in another order, so not bit for bit)."""
    nets, opts = _twins(name)
    assert all(g['fused'] is True and g['foreach'] is False for g in opts[0].param_groups)
    for g in opts[1].param_groups:
        g['fused'], g['foreach'] = None, False
    _five_clipped_steps(nets, opts, (True, False))
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('name', ['SGD', 'Adam', 'AdamW'])
def test_foreach_steps_equal_the_per_parameter_loop(name):
    """Off the CPU the groups use foreach, whose 5 steps (after a foreach clip) are bit-identical to the loop."""
    nets, opts = _twins(name)
    for g0, g1 in zip(opts[0].param_groups, opts[1].param_groups):
        g0['fused'], g0['foreach'] = None, True  # what use_fast_step gives a CUDA group
        g1['fused'], g1['foreach'] = None, False
    _five_clipped_steps(nets, opts, (True, False))
    assert all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters()))


def test_use_fast_step_by_device_and_after_loading_saved_groups():
    """Groups of parameters off the CPU get foreach; a state dict saved with other flags (an older checkpoint, or
    another machine's) brings them back on load, and use_fast_step (which Trainer.restore calls) resets them."""
    off_cpu = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2, device='meta'))], lr=0.1)
    optim.use_fast_step(off_cpu)
    assert (off_cpu.param_groups[0]['fused'], off_cpu.param_groups[0]['foreach']) == (None, True)
    net = Net()
    opt = optim.build_optimizer(net, 'AdamW', lr=0.01)
    saved = opt.state_dict()
    for g in saved['param_groups']:
        g['fused'], g['foreach'] = None, True
    opt.load_state_dict(saved)
    assert all(g['foreach'] is True for g in opt.param_groups)
    optim.use_fast_step(opt)
    assert all(g['fused'] is True and g['foreach'] is False for g in opt.param_groups)


def test_build_optimizer_unknown_name():
    with pytest.raises(ValueError, match="optimizer 'RMSProp' not supported; choose one of SGD, Adam, AdamW"):
        optim.build_optimizer(Net(), 'RMSProp')


def test_optimizer_log_line(caplog):
    from utils.core.logging import LOGGER
    LOGGER.propagate = True
    try:
        with caplog.at_level('INFO', logger=LOGGER.name):
            optim.build_optimizer(Net(), 'SGD', lr=0.01, decay=0.0005, skip_decay=SKIP)
    finally:
        LOGGER.propagate = False
    assert 'SGD(lr=0.01) with parameter groups 4 weight(decay=0.0), 4 weight(decay=0.0005), 6 bias' in caplog.text


def test_linear_lambda_values():
    lf = optim.lr_lambda(epochs=100, lrf=0.01)
    assert lf(0) == pytest.approx(1.0)
    assert lf(50) == pytest.approx(0.505)
    assert lf(99) == pytest.approx(0.0199)
    assert lf(100) == pytest.approx(0.01)


def test_cosine_lambda_values():
    lf = optim.lr_lambda(epochs=100, lrf=0.01, cos=True)
    assert lf(0) == pytest.approx(1.0)
    assert lf(50) == pytest.approx(0.505)
    assert lf(25) == pytest.approx(1 + (1 - math.cos(math.pi / 4)) / 2 * (0.01 - 1))  # = 0.855018
    assert lf(25) == pytest.approx(0.855018, abs=1e-6)
    assert lf(100) == pytest.approx(0.01)


def test_scheduler_steps_per_epoch_and_state_dict_is_plain():
    net = Net()
    opt = optim.build_optimizer(net, 'SGD', lr=0.01)
    sched = optim.build_scheduler(opt, optim.lr_lambda(10, 0.1))
    for _ in range(3):
        opt.step()
        sched.step()
    assert optim.group_lrs(opt) == pytest.approx([0.01 * (1 - 0.3) * 0.9 + 0.001] * 3)  # 0.0073
    state = sched.state_dict()
    assert state['last_epoch'] == 3 and state['lr_lambdas'] == [{'epochs': 10, 'lrf': 0.1}] * 3


@pytest.mark.parametrize('bs, acc, wd', [(1, 64, 0.0005), (4, 16, 0.0005), (16, 4, 0.0005), (24, 3, 0.0005 * 72 / 64),
                                         (40, 2, 0.0005 * 80 / 64), (64, 1, 0.0005), (128, 1, 0.001)])
def test_accumulate_and_weight_decay_scaling(bs, acc, wd):
    assert optim.accumulate_steps(bs) == acc
    assert optim.scaled_weight_decay(0.0005, bs) == pytest.approx(wd)


def test_warmup_iterations():
    assert optim.warmup_iterations(3.0, 10) == 100  # minimum 100
    assert optim.warmup_iterations(3.0, 1000) == 3000
    assert optim.warmup_iterations(0.5, 301) == 150  # round(150.5) -> 150 (banker's rounding as Python/YOLOv5)


def test_warmup_interpolates_lr_momentum_and_accumulate():
    net = Net()
    opt = optim.build_optimizer(net, 'SGD', lr=0.01, momentum=0.937)
    lf = optim.lr_lambda(10, 0.01)
    optim.build_scheduler(opt, lf)
    nw = 100
    acc = optim.warmup(opt, 0, nw, 0, lf, HYP, batch_size=16)
    assert acc == 1
    assert optim.group_lrs(opt) == pytest.approx([0.1, 0.0, 0.0])
    assert opt.param_groups[1]['momentum'] == pytest.approx(0.8)
    acc = optim.warmup(opt, 50, nw, 0, lf, HYP, batch_size=16)  # halfway: accumulate 1 -> 4 is 2.5 -> round 2
    assert acc == 2
    assert optim.group_lrs(opt) == pytest.approx([0.05 + 0.005, 0.005, 0.005])
    assert opt.param_groups[2]['momentum'] == pytest.approx(0.8685)
    acc = optim.warmup(opt, 100, nw, 1, lf, HYP, batch_size=16)  # end, epoch 1: lr = 0.01 * lf(1) = 0.00901
    assert acc == 4
    assert optim.group_lrs(opt) == pytest.approx([0.00901] * 3)
    assert opt.param_groups[0]['momentum'] == pytest.approx(0.937)


def test_warmup_leaves_adam_betas():
    net = Net()
    opt = optim.build_optimizer(net, 'Adam', lr=0.001, momentum=0.937)
    lf = optim.lr_lambda(10, 0.01)
    optim.build_scheduler(opt, lf)
    optim.warmup(opt, 25, 100, 0, lf, HYP, batch_size=64)
    assert optim.group_lrs(opt) == pytest.approx([0.1 * 0.75 + 0.001 * 0.25, 0.00025, 0.00025])
    assert opt.param_groups[0]['betas'] == (0.937, 0.999)


@pytest.mark.parametrize('freeze, layers', [([0], []), ([2], [0, 1]), ([5], [0, 1, 2, 3, 4]), ([1, 3], [1, 3]),
                                            ([0, 1], [0, 1]), ([3, 3, 1], [1, 3])])
def test_freeze_indices_as_yolov5_reads_them(freeze, layers):
    """One value N: layers 0..N-1 (--freeze 0 nothing); several values: exactly those layers."""
    assert optim.freeze_indices(freeze) == layers

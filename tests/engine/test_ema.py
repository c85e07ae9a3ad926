"""ModelEMA: decay ramp, update arithmetic on weights and BN buffers, eval/no-grad copy, attribute copying."""
import math

import pytest
import torch
import torch.nn as nn

from utils.engine.ema import ModelEMA


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 1, bias=False), nn.BatchNorm1d(1))


def test_decay_ramp_values():
    ema = ModelEMA(tiny())
    assert ema.updates == 0
    assert ema.decay(1) == pytest.approx(0.9999 * (1 - math.exp(-1 / 2000)))  # ~5.0e-4: follows the model at first
    assert ema.decay(2000) == pytest.approx(0.9999 * (1 - math.exp(-1)))  # ~0.632
    assert ema.decay(100_000) == pytest.approx(0.9999, abs=1e-8)
    assert ModelEMA(tiny(), decay=0.5, tau=10).decay(10) == pytest.approx(0.5 * (1 - math.exp(-1)))


def test_update_arithmetic_on_weights_and_buffers():
    model = tiny()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
    ema = ModelEMA(model, decay=0.5, tau=1.0)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, -2.0]]))
        model[1].running_mean.fill_(4.0)  # EMA copy still holds 0.0
    model[1].num_batches_tracked.fill_(7)
    ema.update(model)
    d1 = 0.5 * (1 - math.exp(-1))  # 0.31606
    expected_w = torch.tensor([[d1 * 1 + (1 - d1) * 3, d1 * 2 + (1 - d1) * -2]])
    torch.testing.assert_close(ema.ema[0].weight, expected_w)
    torch.testing.assert_close(ema.ema[1].running_mean, torch.tensor([(1 - d1) * 4.0]))
    assert ema.ema[1].num_batches_tracked.item() == 0  # integer buffers are not averaged
    ema.update(model)
    d2 = 0.5 * (1 - math.exp(-2))
    torch.testing.assert_close(ema.ema[0].weight, d2 * expected_w + (1 - d2) * torch.tensor([[3.0, -2.0]]))
    assert ema.updates == 2
    torch.testing.assert_close(model[0].weight, torch.tensor([[3.0, -2.0]]))  # the model itself is untouched


def test_ema_is_an_eval_copy_without_grad_even_for_wrapped_models():
    model = tiny().train()
    ema = ModelEMA(nn.DataParallel(model), updates=5)
    assert not isinstance(ema.ema, nn.DataParallel)
    assert ema.ema is not model and not ema.ema.training and ema.updates == 5
    assert all(not p.requires_grad for p in ema.ema.parameters())
    assert all(p.requires_grad for p in model.parameters())
    ema.update(nn.DataParallel(model))  # a wrapped model updates the same way
    assert ema.updates == 6


def test_update_attr_include_exclude_and_private():
    model = tiny().train()
    model.nc, model.names, model.hyp, model._secret, model.process_group = 3, {0: 'a'}, {'lr0': 0.01}, 1, 'pg'
    ema = ModelEMA(model)
    model.nc, model.names = 5, {0: 'b'}
    ema.update_attr(model, include=['nc'])
    assert ema.ema.nc == 5 and ema.ema.names == {0: 'a'}
    model._secret, model.process_group = 2, 'other'
    ema.update_attr(model)
    assert ema.ema.names == {0: 'b'} and ema.ema._secret == 1 and ema.ema.process_group == 'pg'
    assert not ema.ema.training  # the model's training flag never leaks into the EMA

def test_fused_update_is_bit_identical_to_the_per_tensor_formula():
    """The one-call-per-op (torch._foreach_*) update gives exactly v.mul_(d).add_(m, alpha=1 - d) on every entry."""
    from models.yolo import DetectionModel

    torch.manual_seed(1)
    model = DetectionModel('models/yolov5n.yaml', nc=3, verbose=False)
    ema = ModelEMA(model)
    reference = {k: v.clone() for k, v in ema.ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    for step in (1, 2, 3):
        ema.update(model)
        d = ema.decay(step)
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                reference[k].mul_(d).add_(v, alpha=1 - d)
    assert all(torch.equal(ema.ema.state_dict()[k], reference[k]) for k in reference)


def _reference_update(reference: dict, model: nn.Module, d: float) -> None:
    for k, v in model.state_dict().items():
        if v.dtype.is_floating_point:
            reference[k].mul_(d).add_(v, alpha=1 - d)


@pytest.mark.parametrize('cfg', ['models/yolov5n.yaml', 'models/yolov5-efficientvit.yaml'])
def test_cached_slots_follow_tensors_that_to_replaces(cfg):
    """The EMA pairs state-dict slots once, then looks tensors up at each update: ``model.to(channels_last)`` between
    updates replaces every 4-D parameter's tensor, and the EMA must average the new ones (a cached tensor would not)."""
    from models.yolo import DetectionModel

    torch.manual_seed(2)
    model = DetectionModel(cfg, nc=3, verbose=False)
    ema = ModelEMA(model)
    reference = {k: v.clone() for k, v in ema.ema.state_dict().items()}
    for step in (1, 2, 3):
        if step == 2:
            model.to(memory_format=torch.channels_last)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        _reference_update(reference, model, ema.decay(step))
    assert all(torch.equal(ema.ema.state_dict()[k], reference[k]) for k in reference)


def test_state_slots_match_state_dict_or_refuse():
    from utils.engine.ema import state_slots

    model = tiny()
    slots = state_slots(model)
    assert list(slots) == list(model.state_dict()) == [
        '0.weight', '1.weight', '1.bias', '1.running_mean', '1.running_var', '1.num_batches_tracked']
    owner, name = slots['1.running_var']
    assert owner[name] is model[1].running_var
    model[1].register_buffer('scratch', torch.zeros(1), persistent=False)  # not in state_dict, not a slot
    assert 'scratch' not in ''.join(state_slots(model))

    def rename(module, state, prefix, local_metadata):
        state[prefix + 'renamed'] = state.pop(prefix + 'weight')

    model[0]._register_state_dict_hook(rename)
    assert state_slots(model) is None


def test_modules_with_state_dict_hooks_are_paired_afresh_each_update():
    """A model whose state_dict() a hook rewrites cannot use slots; its EMA still averages every entry correctly."""
    def rename(module, state, prefix, local_metadata):
        state[prefix + 'renamed'] = state.pop(prefix + 'weight')

    model, shadow = tiny(), tiny()
    model[0]._register_state_dict_hook(rename)
    ema = ModelEMA(model, decay=0.5, tau=1.0)  # the deep copy keeps the hook
    shadow_ema = ModelEMA(shadow, decay=0.5, tau=1.0)
    for _ in range(3):
        with torch.no_grad():
            model[0].weight.add_(1.0)
            shadow[0].weight.add_(1.0)
        ema.update(model)
        shadow_ema.update(shadow)
    assert ema._source is None and shadow_ema._source is not None  # nothing cached for the hooked model
    assert torch.equal(ema.ema[0].weight, shadow_ema.ema[0].weight)
    assert not torch.equal(ema.ema[0].weight, tiny()[0].weight)  # it did move

"""utils.core.torch_utils: seeding for reproducible training without the NaN-fill cost, the usable core count and
the gradient layout hooks."""
import os

import torch

from utils.core.torch_utils import available_cpus, init_seeds


def test_deterministic_seeding_skips_the_nan_fill():
    """Deterministic algorithms stay on; filling every new tensor with NaN (24 % of an M0 CPU step) stays off."""
    before = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    try:
        init_seeds(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.utils.deterministic.fill_uninitialized_memory is False
        a = torch.rand(3)
        init_seeds(0, deterministic=True)
        assert torch.equal(a, torch.rand(3))
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.utils.deterministic.fill_uninitialized_memory = before[1]


def test_available_cpus_is_the_affinity_mask():
    assert available_cpus() == len(os.sched_getaffinity(0))


def test_few_channel_bn_backward_gets_an_nchw_gradient():
    """The stem's 8-channel BN runs in NCHW inside the channels-last network; its gradient is made NCHW before BN's
    backward (a channels-last gradient takes the mixed-layout kernel, 4.8 instead of 0.9 ms in an M0 training step at
    224 px, batch 16, bf16), and the block still hands back channels-last maps."""
    from models.efficientvit import ConvNorm

    m = ConvNorm(3, 8, 3, 2, 1).train()
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = m(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    bn_node = y.grad_fn.next_functions[0][0]
    assert type(bn_node).__name__ == 'NativeBatchNormBackward0'
    layouts = []
    bn_node.register_prehook(lambda grads: layouts.append(grads[0].is_contiguous()))
    y.backward(torch.ones_like(y).contiguous(memory_format=torch.channels_last))
    assert layouts == [True]


def _saves_a_copy(act: torch.nn.Module) -> bool:
    """Does autograd keep, for the activation's backward, a tensor that is neither its input nor its output (a copy)?"""
    saved = []
    y = torch.randn(64, requires_grad=True) * 1  # not a leaf: in-place is allowed
    own = {y.untyped_storage().data_ptr()}
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = act(y)
    own.add(out.untyped_storage().data_ptr())
    return any(t.untyped_storage().data_ptr() not in own for t in saved)


def test_cloning_inplace_activations_are_exactly_those_autograd_copies():
    """The list is checked against this torch, over every activation a model YAML may name."""
    import inspect

    from models.common import ACTIVATIONS
    from utils.core.torch_utils import CLONING_INPLACE_ACTIVATIONS
    checked = 0
    for cls in ACTIVATIONS.values():
        if 'inplace' not in inspect.signature(cls).parameters:
            continue
        assert _saves_a_copy(cls(inplace=True)) == issubclass(cls, CLONING_INPLACE_ACTIVATIONS), cls.__name__
        checked += 1
    assert checked == 10  # SiLU, ReLU, ReLU6, LeakyReLU, Hardswish, Mish, ELU, SELU, CELU, Hardsigmoid
    assert not _saves_a_copy(torch.nn.SiLU(inplace=False))


def test_out_of_place_for_training_changes_only_cloning_inplace_ones_and_no_gradient():
    from models.yolo import DetectionModel
    from utils.core.torch_utils import out_of_place_for_training

    torch.manual_seed(0)
    model = DetectionModel('models/yolov5n.yaml', nc=3, verbose=False).train()
    relu = torch.nn.ReLU(inplace=True)
    model.model[0].extra = relu  # a ReLU in place stays so: its gradient needs only its output
    x = torch.rand(2, 3, 64, 64)
    sum(o.sum() for o in model(x)).backward()
    before = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    assert out_of_place_for_training(model) == 57 and relu.inplace
    assert not any(m.inplace for m in model.modules() if isinstance(m, torch.nn.SiLU))
    sum(o.sum() for o in model(x)).backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters()))
    assert out_of_place_for_training(model) == 0

"""YOLOv5 building blocks: shapes, state-dict names, parameter counts, YAML sizing rules, BN fusing."""
import math

import pytest
import torch
import torch.nn as nn

from models.common import (
    C3,
    SPP,
    SPPF,
    Bottleneck,
    BottleneckCSP,
    Concat,
    Conv,
    DWConv,
    Focus,
    YamlContext,
    autopad,
    make_divisible,
)
from models.registry import get_module
from utils.core.torch_utils import fuse_conv_and_bn


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def randomise_bn(m: nn.Module) -> nn.Module:
    """Non-trivial BN statistics so fusing has something to fold."""
    g = torch.Generator().manual_seed(0)
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.weight.data.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.bias.data.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
    return m.eval()


def test_autopad_and_make_divisible():
    assert autopad(3) == 1 and autopad(6, 2) == 2 and autopad(1) == 0
    assert autopad(3, d=2) == 2  # dilated 3x3 acts as 5x5
    assert autopad((3, 5)) == [1, 2]
    assert make_divisible(16.0, 8) == 16 and make_divisible(17, 8) == 24 and make_divisible(1024 * 0.25, 8) == 256


def test_conv_keys_shapes_and_activation():
    m = Conv(3, 16, 6, 2, 2)
    assert list(m.state_dict()) == ['conv.weight', 'bn.weight', 'bn.bias', 'bn.running_mean', 'bn.running_var',
                                    'bn.num_batches_tracked']
    assert m.conv.weight.shape == (16, 3, 6, 6) and m.conv.bias is None
    assert m(torch.zeros(1, 3, 64, 96)).shape == (1, 16, 32, 48)
    assert isinstance(m.act, nn.SiLU)
    assert isinstance(Conv(3, 4, act=False).act, nn.Identity)
    leaky = nn.LeakyReLU(0.1)
    assert Conv(3, 4, act=leaky).act is leaky
    assert Conv(3, 4).act is not Conv(3, 4).act  # no process-wide shared default instance


def test_dwconv_groups():
    assert DWConv(32, 64, 3).conv.groups == 32
    assert DWConv(24, 36, 3).conv.groups == 12


@pytest.mark.parametrize('block, c1, c2, expected', [
    (lambda c1, c2: C3(c1, c2, 1), 64, 64, 18816),  # yolov5s layer 2
    (lambda c1, c2: C3(c1, c2, 1, False), 512, 256, 361984),  # yolov5s layer 13
    (lambda c1, c2: SPPF(c1, c2, 5), 512, 512, 656896),  # yolov5s layer 9
    (lambda c1, c2: BottleneckCSP(c1, c2, 1), 64, 64, 19904),
    (lambda c1, c2: Conv(c1, c2, 3, 2), 32, 64, 18560),  # yolov5s layer 1
], ids=['C3', 'C3-noshortcut', 'SPPF', 'BottleneckCSP', 'Conv'])
def test_parameter_counts(block, c1, c2, expected):
    assert n_params(block(c1, c2)) == expected


def test_c3_state_dict_names():
    keys = set(C3(32, 32, 2).state_dict())
    for k in ('cv1.conv.weight', 'cv2.bn.bias', 'cv3.conv.weight', 'm.0.cv1.conv.weight', 'm.1.cv2.bn.running_var'):
        assert k in keys


def test_bottleneck_residual():
    m = Bottleneck(8, 8).eval()
    x = torch.randn(1, 8, 8, 8)
    assert m.add and torch.allclose(m(x), x + m.cv2(m.cv1(x)))
    assert not Bottleneck(8, 16).add and not Bottleneck(8, 8, shortcut=False).add


def test_sppf_equals_spp_5_9_13():
    """SPPF(k=5) is the fast form of SPP(k=(5, 9, 13)): same weights, same output."""
    torch.manual_seed(0)
    spp, sppf = SPP(16, 8, (5, 9, 13)).eval(), SPPF(16, 8, 5).eval()
    sppf.load_state_dict({k: v for k, v in spp.state_dict().items()})
    x = torch.randn(2, 16, 20, 12)
    torch.testing.assert_close(sppf(x), spp(x))


def test_focus_space_to_depth():
    m = Focus(3, 8, 3).eval()
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    y = torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1)
    torch.testing.assert_close(m(x), m.conv(y))
    assert m(x).shape == (2, 8, 2, 3)


def test_concat():
    a, b = torch.ones(1, 2, 4, 4), torch.zeros(1, 3, 4, 4)
    assert Concat(1)([a, b]).shape == (1, 5, 4, 4)


def test_conv_fuse_keeps_output():
    torch.manual_seed(0)
    m = randomise_bn(Conv(8, 16, 3, 1))
    x = torch.randn(2, 8, 10, 14)
    before = m(x)
    m.fuse()
    assert m.bn is None and m.conv.bias is not None and 'bn.weight' not in m.state_dict()
    torch.testing.assert_close(m(x), before, rtol=1e-4, atol=1e-5)
    m.fuse()  # idempotent
    torch.testing.assert_close(m(x), before, rtol=1e-4, atol=1e-5)


def test_fuse_conv_and_bn_grouped_with_bias():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, 2, 1, groups=4, bias=True)
    bn = randomise_bn(nn.BatchNorm2d(8))
    x = torch.randn(1, 8, 9, 9)
    torch.testing.assert_close(fuse_conv_and_bn(conv, bn)(x), bn(conv(x)), rtol=1e-4, atol=1e-5)


CTX = YamlContext(depth_multiple=0.33, width_multiple=0.25, channel_multiple=8, no=255)


def test_yaml_args_scaled_block():
    assert Conv.yaml_args([32], [128, 3, 2], 1, CTX) == ([32, 32, 3, 2], 1, 32)
    assert SPPF.yaml_args([256], [1024, 5], 1, CTX) == ([256, 256, 5], 1, 256)
    assert Conv.yaml_args([64], [255, 1, 1], 1, CTX) == ([64, 255, 1, 1], 1, 255)  # == no: not width-scaled


def test_yaml_args_csp_blocks_take_depth():
    assert C3.yaml_args([64], [128], 2, CTX) == ([64, 32, 2], 1, 32)
    assert C3.yaml_args([64], [256, False], 3, CTX) == ([64, 64, 3, False], 1, 64)
    assert BottleneckCSP.yaml_args([64], [128], 2, CTX) == ([64, 32, 2], 1, 32)


def test_yaml_args_concat_sums_inputs():
    assert Concat.yaml_args([64, 128, 32], [1], 1, CTX) == ([1], 1, 224)


def test_yaml_args_needs_channels():
    with pytest.raises(ValueError, match='output channels'):
        Conv.yaml_args([3], [], 1, CTX)


@pytest.mark.parametrize('name', ['Conv', 'DWConv', 'Bottleneck', 'BottleneckCSP', 'C3', 'SPP', 'SPPF', 'Focus',
                                  'Concat', 'nn.Upsample'])
def test_registered(name):
    m = get_module(name)
    assert m is (nn.Upsample if name == 'nn.Upsample' else globals()[name])


def test_width_rounding_matches_yolov5n_widths():
    widths = [make_divisible(c * 0.25, 8) for c in (64, 128, 256, 512, 1024)]
    assert widths == [16, 32, 64, 128, 256]
    assert math.ceil(1024 * 0.25 / 8) * 8 == 256


# ----------------------------------------------------------------- utils.core.torch_utils

def test_select_device_strings():
    from utils.core.torch_utils import DeviceError, select_device

    assert select_device('cpu') == torch.device('cpu')
    assert select_device('') == (torch.device('cuda:0') if torch.cuda.is_available() else torch.device('cpu'))
    with pytest.raises(DeviceError, match=r"invalid --device 'gpu0'"):
        select_device('gpu0')
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(DeviceError, match=rf'CUDA device\(s\) \[{n}\] not available'):
        select_device(str(n))


def test_init_seeds_reproducible():
    from utils.core.torch_utils import init_seeds

    init_seeds(3)
    a = torch.rand(4)
    init_seeds(3)
    assert torch.equal(a, torch.rand(4))


def test_flops_counts_two_per_mac():
    from utils.core.torch_utils import flops

    m = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.SiLU())
    assert flops(m, 640) == pytest.approx(2 * 640 * 640 * 16 * 3 * 9 / 1e9)
    assert flops(m, (320, 480)) == pytest.approx(2 * 320 * 480 * 16 * 3 * 9 / 1e9)
    assert m[1].num_batches_tracked.item() == 0  # counted on a meta copy: the model is untouched


def test_de_parallel_and_inference_mode():
    from utils.core.torch_utils import de_parallel, smart_inference_mode

    m = nn.Linear(2, 2)
    assert de_parallel(nn.DataParallel(m)) is m and de_parallel(m) is m

    @smart_inference_mode()
    def run(x):
        return m(x)

    assert torch.is_inference(run(torch.ones(1, 2)))

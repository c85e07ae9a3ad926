"""utils.core.precision: which autocast training runs under, and the depthwise convs kept float32 under CPU bf16."""
import pytest
import torch
from torch import nn

from utils.core import precision
from utils.core.precision import conv_float32_under_cpu_autocast, describe, slow_in_bf16, training_autocast_dtype


@pytest.mark.parametrize('device, has_bf16, enabled, expected', [
    ('cuda:0', False, True, torch.float16),   # YOLOv5's AMP
    ('cuda:0', False, False, None),           # --no-amp
    ('cpu', True, True, torch.bfloat16),      # AMX or AVX-512 BF16: bf16 autocast
    ('cpu', True, False, None),               # --no-amp
    ('cpu', False, True, None),               # AVX2 only: bf16 would be emulated, float32 stays
    ('mps', True, True, None),                # not measured: float32, as YOLOv5
])
def test_training_autocast_dtype(device, has_bf16, enabled, expected):
    assert training_autocast_dtype(torch.device(device), enabled=enabled, has_bf16=has_bf16) == expected


@pytest.mark.parametrize('amx, avx512_bf16, unit', [
    (True, True, 'AMX'),              # Xeon Sapphire Rapids: tiles first
    (False, True, 'AVX-512 BF16'),    # AMD Zen 4
    (False, False, None),             # AVX2 only
])
def test_cpu_probe_decides_when_not_told(monkeypatch, amx, avx512_bf16, unit):
    monkeypatch.setattr(torch.cpu, '_is_amx_tile_supported', lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, '_is_avx512_bf16_supported', lambda: avx512_bf16, raising=False)
    assert precision.cpu_bf16_unit() == unit
    assert training_autocast_dtype('cpu') == (torch.bfloat16 if unit else None)
    line = describe(torch.bfloat16, torch.device('cpu'))  # without a unit: bf16 forced, e.g. by a test
    assert (f'bf16 autocast (CPU with {unit})' if unit else 'bf16 autocast (no bf16 hardware on this CPU: emulated, '
            'slower than float32)') in line and 'None' not in line


def test_cpu_probe_missing_from_torch_means_float32(monkeypatch):
    monkeypatch.delattr(torch.cpu, '_is_amx_tile_supported', raising=False)
    monkeypatch.delattr(torch.cpu, '_is_avx512_bf16_supported', raising=False)
    assert precision.cpu_bf16_unit() is None


def test_describe_names_the_mode():
    assert describe(None, torch.device('cpu')) == 'AMP: off, training in float32 on cpu'
    assert 'bf16 autocast' in describe(torch.bfloat16, torch.device('cpu'))
    assert 'fp16 AMP' in describe(torch.float16, torch.device('cuda:0'))


@pytest.mark.parametrize('conv, slow', [
    (nn.Conv2d(64, 64, 3, 2, 1, groups=64), True),    # stride-2 depthwise (PatchMerging)
    (nn.Conv2d(16, 16, 5, 1, 2, groups=16), True),    # 5x5 depthwise (attention q)
    (nn.Conv2d(16, 16, 7, 1, 3, groups=16), True),
    (nn.Conv2d(64, 64, 3, 1, 1, groups=64), False),   # stride-1 3x3 depthwise: as fast in bf16
    (nn.Conv2d(64, 128, 3, 2, 1), False),             # dense
    (nn.Conv2d(64, 64, 5, 1, 2, groups=4), False),    # grouped, not depthwise
])
def test_slow_in_bf16(conv, slow):
    assert slow_in_bf16(conv) is slow


def test_slow_convs_run_float32_under_cpu_autocast():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 14, 14)
    dw, dense = nn.Conv2d(16, 16, 5, 1, 2, groups=16), nn.Conv2d(16, 32, 1)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y_dw = conv_float32_under_cpu_autocast(dw, x.bfloat16())
        y_dense = conv_float32_under_cpu_autocast(dense, x)
    assert y_dw.dtype == torch.float32 and y_dense.dtype == torch.bfloat16
    assert torch.equal(y_dw, dw(x.bfloat16().float()))  # exactly the float32 conv of the (bf16) input
    # without autocast nothing changes: the same module call, same dtype
    assert torch.equal(conv_float32_under_cpu_autocast(dw, x), dw(x))

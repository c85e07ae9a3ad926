"""EfficientViT backbone: structure, numbers pinned from the seed implementation, bias freshness, odd sizes,
freezing, fusing and pretrained loading (Cream and timm formats)."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from models import efficientvit as ev
from models.registry import get_module
from tests import hostile as H

VARIANTS = ['m0', 'm1', 'm2', 'm3', 'm4', 'm5']

# From the seed implementation (run once, outside the repository): parameters and state-dict entries per variant.
PARAMS = {'m0': 2155680, 'm1': 2787473, 'm2': 3962304, 'm3': 6579478, 'm4': 8418856, 'm5': 12088532}
SD_LEN = {'m0': 692, 'm1': 608, 'm2': 596, 'm3': 668, 'm4': 692, 'm5': 828}
CHANNELS = {'m0': [64, 128, 192], 'm1': [128, 144, 192], 'm2': [128, 192, 224], 'm3': [128, 240, 320],
            'm4': [128, 256, 384], 'm5': [192, 288, 384]}
# Seed outputs for weights from fill() and a 224x256 input from seed 1: per output (mean |y|, mean y^2,
# sum of y.flatten()[::997][:3]).
PINNED = {
    'm0': [(0.1164676, 0.02457763, 0.1257064), (0.170742, 0.06325815, -0.2672338),
           (0.2474149, 0.1529551, -0.7431152)],
    'm1': [(0.1028737, 0.01723923, -0.4504656), (0.1650972, 0.05884725, 0.1037347),
           (0.2113198, 0.08753825, -0.4289534)],
    'm2': [(0.1113878, 0.02149011, -0.291774), (0.1684975, 0.05584366, 0.1171294),
           (0.1990597, 0.08237002, -0.05415834)],
    'm3': [(0.09367997, 0.01541346, -0.2662293), (0.2039882, 0.08334854, 0.1985557),
           (0.2192078, 0.1063128, 0.2628027)],
    'm4': [(0.1011645, 0.01703386, -0.2606977), (0.1941701, 0.07058277, 0.4245478),
           (0.2146559, 0.09678936, -0.02690905)],
    'm5': [(0.1093059, 0.01951668, -0.03315344), (0.2362805, 0.1146485, -0.3969479),
           (0.2323657, 0.1161317, 0.2173067)],
}


def build(v: str, **kwargs) -> ev.EfficientViT:
    return get_module('EfficientViT_' + v.upper())(**kwargs)


def fill(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Deterministic, well-conditioned weights, keyed by state-dict name (the same recipe made PINNED)."""
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    with torch.no_grad():
        for k in sorted(sd):
            t = sd[k]
            if k.endswith(('num_batches_tracked', 'attention_bias_idxs')):
                continue
            r = torch.randn(t.shape, generator=g, dtype=torch.float64)
            if k.endswith('running_var'):
                v = 0.75 + 0.5 * torch.rand(t.shape, generator=g, dtype=torch.float64)
            elif k.endswith('running_mean'):
                v = 0.05 * r
            elif k.endswith('attention_biases'):
                v = 0.5 * r
            elif t.dim() == 4:
                v = r / math.sqrt(t[0].numel())
            elif k.endswith('bn.weight'):
                v = 0.4 + 0.1 * r
            else:
                v = 0.05 * r
            t.copy_(v.to(t.dtype))
    return model


def rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((x - y).abs().max() / x.abs().max()).item() for x, y in zip(a, b))


def stats(outs):
    return [(o.abs().mean().item(), o.pow(2).mean().item(), o.flatten()[::997][:3].sum().item()) for o in outs]


# ---------------------------------------------------------------------------------------------------------------
# Structure
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('v', VARIANTS)
def test_structure(v):
    m = build(v)
    assert sum(p.numel() for p in m.parameters()) == PARAMS[v]
    sd = m.state_dict()
    assert len(sd) == SD_LEN[v]
    assert 'patch_embed.0.c.weight' in sd and 'blocks1.0.mixer.m.attn.qkvs.0.c.weight' in sd
    assert 'blocks2.1.se.fc1.weight' in sd and 'blocks3.3.mixer.m.attn.attention_biases' in sd
    assert sd['blocks1.0.mixer.m.attn.attention_biases'].shape[1] == 49
    assert sd['blocks1.0.mixer.m.attn.attention_bias_idxs'].shape == (49, 49)
    assert m.out_channels == CHANNELS[v] and m.strides == [8, 16, 32]
    assert m.patch_embed[6].c.stride == (1, 1)
    assert all(bn.eps == 1e-5 for bn in m.modules() if isinstance(bn, torch.nn.BatchNorm2d))


@pytest.mark.parametrize('v', VARIANTS)
def test_declared_outputs_match_forward(v):
    m = build(v).eval()
    with torch.no_grad():
        outs = m(torch.zeros(1, 3, 64, 96))
    assert isinstance(outs, list)
    assert [o.shape[1] for o in outs] == m.out_channels
    assert [(64 // o.shape[2], 96 // o.shape[3]) for o in outs] == [(s, s) for s in m.strides]


# ---------------------------------------------------------------------------------------------------------------
# Numbers: equal to the seed implementation (pinned), before and after fusing
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('v', VARIANTS)
def test_outputs_match_seed_and_fuse(v):
    m = fill(build(v)).eval()
    x = torch.randn(1, 3, 224, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outs = m(x)
        for got, want in zip(stats(outs), PINNED[v]):
            assert got == pytest.approx(want, rel=1e-4, abs=1e-5)
        fast = copy.deepcopy(m).fuse()
        assert m.fuse(exact=True) is m
        assert not any(isinstance(b, torch.nn.BatchNorm2d) for b in m.modules())
        assert rel_diff(outs, m(x)) < 1e-5
        assert rel_diff(outs, fast(x)) < 1e-5


def test_fuse_keeps_device_dtype_and_shrinks_params():
    m = fill(build('m0')).double().eval()
    n = sum(p.numel() for p in m.parameters())
    m.fuse()
    assert all(p.dtype == torch.float64 for p in m.parameters())
    # each BN (2 affine per channel) becomes a conv bias (1 per channel)
    bn_channels = sum(b.num_features for b in build('m0').modules() if isinstance(b, torch.nn.BatchNorm2d))
    assert sum(p.numel() for p in m.parameters()) == n - bn_channels
    # fused convs are inference parameters, as YOLOv5's fuse_conv_and_bn makes them: a detector loaded from a
    # checkpoint (EMA weights, no gradients) and fused then summarises as '0 gradients', not as the fused convs' count
    from models.efficientvit import SqueezeExcite  # its two 1x1 convs have no BN: left as they are
    kept = {id(p) for se in m.modules() if isinstance(se, SqueezeExcite) for p in se.parameters()}
    fused = [p for mod in m.modules() if isinstance(mod, torch.nn.Conv2d) for p in mod.parameters(recurse=False)
             if id(p) not in kept]
    assert len(fused) > 100 and not any(p.requires_grad for p in fused)


# ---------------------------------------------------------------------------------------------------------------
# The attention bias is never stale
# ---------------------------------------------------------------------------------------------------------------
def _forward(m, x):
    with torch.no_grad():
        return m(x)


def test_bias_fresh_after_load_state_dict_in_eval():
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    a, b = fill(build('m0'), 0).eval(), fill(build('m0'), 1).eval()
    _forward(a, x)  # populate any cache
    a.load_state_dict(b.state_dict())
    assert rel_diff(_forward(b, x), _forward(a, x)) == 0


def test_bias_fresh_after_inplace_update_in_eval():
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    m = fill(build('m0')).eval()
    ref = copy.deepcopy(m)
    _forward(m, x)
    with torch.no_grad():
        for mod in (m, ref):
            for name, p in mod.named_parameters():
                if name.endswith('attention_biases'):
                    p.mul_(-2.0)  # what an EMA update does: in place, in eval mode
                    p.data.add_(0.5)  # .data writes do not even bump the version counter
    ref_out = _forward(ref, x)
    assert rel_diff(ref_out, _forward(m, x)) == 0
    assert rel_diff(ref_out, _forward(fill(build('m0')).eval(), x)) > 1e-3  # the change mattered


@pytest.mark.parametrize('order', ['eval-double', 'double-eval', 'eval-double-train-eval', 'train-double'])
def test_bias_follows_dtype_and_mode_in_any_order(order):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    m = fill(build('m0'))
    for bn in m.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.momentum = 0.0  # train-mode forwards below must not move the statistics
    want = _forward(copy.deepcopy(m).eval(), x)
    for step in order.split('-'):
        if step == 'double':
            m.double()
        else:
            getattr(m, step)()
        _forward(m, x.to(next(m.parameters()).dtype))
    m.eval()
    got = _forward(m, x.double())
    assert all(o.dtype == torch.float64 for o in got)
    assert rel_diff(want, [o.float() for o in got]) < 1e-5


def test_bias_gets_gradient_in_train_and_eval():
    m = fill(build('m0'))
    x = torch.randn(1, 3, 64, 64)
    for mode in (True, False):
        m.train(mode)
        m.zero_grad()
        sum(o.sum() for o in m(x)).backward()
        for name, p in m.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (mode, name)


# ---------------------------------------------------------------------------------------------------------------
# Any input whose sides are multiples of 32
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('v', VARIANTS)
@pytest.mark.parametrize('hw', [(32, 32), (64, 96), (160, 32)])
def test_small_and_odd_sizes(v, hw):
    m = build(v).eval()
    with torch.no_grad():
        outs = m(torch.randn(1, 3, *hw))
    assert [tuple(o.shape[2:]) for o in outs] == [(hw[0] // s, hw[1] // s) for s in (8, 16, 32)]
    assert all(torch.isfinite(o).all() for o in outs)


def _naive_cga(attn: ev.CascadedGroupAttention, x: torch.Tensor) -> torch.Tensor:
    """Cascaded group attention over a whole (B, C, H, W) map, bias looked up offset by offset."""
    B, C, H, W = x.shape
    r, pts = attn.resolution, [(i, j) for i in range(H) for j in range(W)]
    idx = torch.tensor([[abs(a[0] - b[0]) * r + abs(a[1] - b[1]) for b in pts] for a in pts])
    splits, outs, feat = x.chunk(attn.num_heads, 1), [], None
    for i in range(attn.num_heads):
        feat = splits[0] if i == 0 else feat + splits[i]
        q, k, v = attn.qkvs[i](feat).split([attn.key_dim, attn.key_dim, attn.d], 1)
        q = attn.dws[i](q)
        logits = torch.einsum('bcn,bcm->bnm', q.flatten(2), k.flatten(2)) * attn.key_dim ** -0.5
        w = (logits + attn.attention_biases[i][idx]).softmax(-1)
        feat = torch.einsum('bcm,bnm->bcn', v.flatten(2), w).reshape(B, attn.d, H, W)
        outs.append(feat)
    return attn.proj(torch.cat(outs, 1))


@pytest.mark.parametrize('hw', [(4, 6), (7, 7), (2, 3)])
def test_window_smaller_than_seven_attends_over_whole_map(hw):
    block = fill(build('m0')).eval().blocks1[0].mixer.m
    x = torch.randn(2, 64, *hw)
    with torch.no_grad():
        assert torch.allclose(block(x), _naive_cga(block.attn, x), rtol=1e-5, atol=1e-6)


def test_large_map_pads_bottom_right_into_windows():
    """A 9x8 map: padded to 14x14, four 7x7 windows; the top-left window sees only real tokens."""
    block = fill(build('m0')).eval().blocks1[0].mixer.m
    x = torch.randn(1, 64, 9, 8)
    with torch.no_grad():
        out = block(x)
        padded = F.pad(x, (0, 6, 0, 5))
        want = _naive_cga(block.attn, padded[:, :, :7, :7])
        want_br = _naive_cga(block.attn, padded[:, :, 7:, 7:])
    assert out.shape == x.shape
    assert torch.allclose(out[:, :, :7, :7], want, rtol=1e-5, atol=1e-6)
    assert torch.allclose(out[:, :, 7:, 7:], want_br[:, :, :2, :1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('v', ['m0', 'm5'])
@pytest.mark.parametrize('hw', [(224, 224), (256, 256), (96, 160), (448, 320)])
def test_attention_tokens_count_what_the_forward_attends(v, hw):
    """The arithmetic of attention_tokens against the maps each window attention really receives and the windows
    it really computes on (hooks on a train-mode forward)."""
    bb = build(v).train()
    seen, computed = [0], [0]
    for m in bb.modules():
        if isinstance(m, ev.LocalWindowAttention):
            m.register_forward_pre_hook(lambda _, a: seen.__setitem__(0, seen[0] + a[0][0, 0].numel()))
            m.attn.register_forward_pre_hook(lambda _, a: computed.__setitem__(0, computed[0] + a[0][:, 0].numel()))
    bb(torch.randn(1, 3, *hw))
    assert bb.attention_tokens(*hw) == (seen[0], computed[0])


def test_attention_tokens_and_size_note_numbers():
    """M0 at 256 px: maps 32/16/8 (1, 2, 3 blocks) padded to 35/21/14 -> 2695 tokens computed for 1728 seen."""
    bb = build('m0')
    assert bb.attention_tokens(256, 256) == (32 * 32 + 2 * 16 * 16 + 3 * 8 * 8, 35 * 35 + 2 * 21 * 21 + 3 * 14 * 14)
    assert bb.attention_tokens(224, 224) == (28 * 28 + 2 * 14 * 14 + 3 * 7 * 7,) * 2
    assert bb.padding_free_multiple() == 224
    assert bb.input_size_note(256, 256) == ('EfficientViT at 256x256: window attention computes on 1.56x the tokens '
                                            'of its maps (padded to whole windows); image sides that are multiples '
                                            'of 224 px (224, 448, ...) pad none')
    # 640 pads 10 % (80/40/20 -> 84/42/21), under the note's 25 %; 224 and 448 pad nothing
    assert [bb.input_size_note(s, s) for s in (224, 448, 640)] == [None] * 3


# ---------------------------------------------------------------------------------------------------------------
# frozen_stages
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('n', [0, 1, 2, 3, 4])
def test_frozen_stages(n):
    m = build('m0', frozen_stages=n).train()
    parts = [m.patch_embed, m.blocks1, m.blocks2, m.blocks3]
    for i, part in enumerate(parts):
        frozen = i < n
        assert all(p.requires_grad != frozen for p in part.parameters())
        assert all(b.training != frozen for b in part.modules() if isinstance(b, torch.nn.BatchNorm2d))
    before = [b.running_mean.clone() for b in parts[0].modules() if isinstance(b, torch.nn.BatchNorm2d)]
    m(torch.randn(2, 3, 64, 64))
    after = [b.running_mean for b in parts[0].modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(before, after)) == (n >= 1)


def test_frozen_stages_out_of_range():
    with pytest.raises(ValueError, match='frozen_stages must be 0..4'):
        build('m0', frozen_stages=5)


# ---------------------------------------------------------------------------------------------------------------
# Pretrained weights: Cream and timm formats, adaptation, report, errors
# ---------------------------------------------------------------------------------------------------------------
def _cream_checkpoint(model: torch.nn.Module) -> dict:
    sd = dict(model.state_dict())
    sd['head.bn.weight'], sd['head.l.weight'] = torch.ones(192), torch.zeros(1000, 192)
    return {'model': sd, 'epoch': 299}


@pytest.mark.parametrize('fmt', ['cream', 'mmdet'])
def test_load_cream_checkpoint(tmp_path, fmt):
    src = fill(build('m0'), 3)
    ckpt = _cream_checkpoint(src)
    if fmt == 'mmdet':
        ckpt = {'state_dict': {'backbone.' + k: v for k, v in ckpt['model'].items()}, 'meta': {}}
    f = tmp_path / 'efficientvit_m0.pth'
    torch.save(ckpt, f)
    m = build('m0', pretrained=str(f))
    rep = m.pretrained_report
    assert len(rep.loaded) == SD_LEN['m0'] - 6 and not rep.adapted and not rep.missing
    assert sorted(rep.skipped.values()) == ['classifier head'] * 2 + ['derived index (recomputed)'] * 6
    x = torch.randn(1, 3, 64, 64)
    assert rel_diff(_forward(src.eval(), x), _forward(m.eval(), x)) == 0




def test_load_classification_checkpoint_adapts_bias_and_kernels(tmp_path, log_lines):
    """An ImageNet M0 (kernels 5,5,5,5; stage-3 biases 4x4) loads into the detection M0 (7,5,3,3; 7x7)."""
    src = fill(build('m0'), 4)
    sd = dict(src.state_dict())
    for k in list(sd):
        if '.dws.' in k and k.endswith('c.weight'):
            sd[k] = torch.randn(16, 1, 5, 5)
        if k.startswith('blocks3') and k.endswith('attention_biases'):
            sd[k] = torch.full((4, 16), 0.25)
        if k.endswith('attention_bias_idxs'):
            sd[k] = torch.zeros(16, 16, dtype=torch.long) if k.startswith('blocks3') else sd[k]
    f = tmp_path / 'cls.pth'
    torch.save({'model': sd}, f)
    m = build('m0', pretrained=str(f))
    rep = m.pretrained_report
    n_dws = sum(1 for k in sd if '.dws.' in k and k.endswith('c.weight'))
    n_bias3 = sum(1 for k in sd if k.startswith('blocks3') and k.endswith('attention_biases'))
    assert len(rep.adapted) == n_dws // 4 * 3 + n_bias3  # kernels of heads 0, 2, 3 differ (7, 3, 3 vs 5)
    assert len(rep.loaded) == SD_LEN['m0'] - 6 and not rep.missing
    attn = m.blocks3[3].mixer.m.attn
    assert torch.allclose(attn.attention_biases, torch.full((4, 49), 0.25))  # a constant stays constant
    k5 = sd['blocks1.0.mixer.m.attn.dws.0.c.weight']
    k7 = m.blocks1[0].mixer.m.attn.dws[0].c.weight
    assert torch.equal(k7[..., 1:6, 1:6], k5) and k7[..., 0, :].abs().sum() == 0
    k3 = m.blocks1[0].mixer.m.attn.dws[2].c.weight
    assert torch.equal(k3, sd['blocks1.0.mixer.m.attn.dws.2.c.weight'][..., 1:4, 1:4])
    text = '\n'.join(log_lines)
    assert text.count('centre-cropped') == 12 and 'loaded 686 tensors (21 of them adapted)' in text


def test_zero_padded_kernel_is_exact_and_crop_is_centre():
    w5, x = torch.randn(16, 1, 5, 5), torch.randn(1, 16, 9, 9)
    w7, cropped = ev.adapt_kernel(w5, 7)
    assert not cropped and torch.allclose(F.conv2d(x, w5, padding=2, groups=16), F.conv2d(x, w7, padding=3, groups=16),
                                          atol=1e-6)
    w3, cropped = ev.adapt_kernel(w5, 3)
    assert cropped and torch.equal(w3, w5[..., 1:4, 1:4])


def test_resize_attention_biases_bicubic():
    b = torch.arange(16.0).view(1, 16)
    out = ev.resize_attention_biases(b, 7)
    assert out.shape == (1, 49)
    want = F.interpolate(b.view(1, 1, 4, 4), size=(7, 7), mode='bicubic', align_corners=False).view(1, 49)
    assert torch.allclose(out, want)
    assert out[0, 0] < out[0, 6] < out[0, 48]  # monotone grid stays monotone corner to corner


@pytest.mark.parametrize('v', VARIANTS)
def test_timm_key_mapping_covers_every_tensor(v):
    timm = pytest.importorskip('timm')
    tm = timm.create_model(f'efficientvit_{v}', pretrained=False)
    mapped = ev.timm_to_cream(tm.state_dict())
    ours = build(v).state_dict()
    backbone = {k: t for k, t in mapped.items() if not k.startswith('head.')}
    assert set(backbone) == {k for k in ours if not k.endswith('attention_bias_idxs')}
    differ = {k for k, t in backbone.items() if t.shape != ours[k].shape}
    want = {k for k in ours if k.startswith('blocks3') and k.endswith('attention_biases')}  # 4x4 at 224 vs 7x7
    if v == 'm0':  # ImageNet M0 has q kernels 5,5,5,5; the detection M0 7,5,3,3
        want |= {k for k in ours if '.dws.' in k and k.endswith('c.weight') and '.dws.1.' not in k}
    assert differ == want and len(want) == {'m0': 21, 'm5': 4}.get(v, 3)
    assert set(mapped) - set(backbone) == {'head.bn.weight', 'head.bn.bias', 'head.bn.running_mean',
                                           'head.bn.running_var', 'head.bn.num_batches_tracked', 'head.l.weight',
                                           'head.l.bias'}


def test_timm_key_examples():
    f = ev.timm_to_cream_key
    assert f('patch_embed.conv4.conv.weight') == 'patch_embed.6.c.weight'
    assert f('stages.0.blocks.0.mixer.m.attn.qkvs.1.conv.weight') == 'blocks1.0.mixer.m.attn.qkvs.1.c.weight'
    assert f('stages.1.downsample.res1.1.m.pw2.bn.bias') == 'blocks2.0.1.m.pw2.bn.bias'
    assert f('stages.2.downsample.patchmerge.conv3.conv.weight') == 'blocks3.1.conv3.c.weight'
    assert f('stages.2.downsample.patchmerge.se.fc1.bias') == 'blocks3.1.se.fc1.bias'
    assert f('stages.1.downsample.res2.0.m.conv.weight') == 'blocks2.2.0.m.c.weight'
    assert f('stages.2.blocks.1.dw0.m.bn.running_var') == 'blocks3.4.dw0.m.bn.running_var'
    assert f('head.linear.weight') == 'head.l.weight'
    assert f('stages.0.blocks.0.mixer.m.attn.attention_bias_idxs') is None


def test_load_timm_checkpoint(tmp_path):
    timm = pytest.importorskip('timm')
    tm = timm.create_model('efficientvit_m0', pretrained=False)
    fill(tm, 5)
    f = tmp_path / 'timm_m0.pth'
    torch.save(tm.state_dict(), f)
    m = build('m0', pretrained=str(f))
    rep = m.pretrained_report
    assert len(rep.loaded) == SD_LEN['m0'] - 6 and not rep.missing
    assert len(rep.adapted) == 6 * 3 + 3  # q kernels of heads 0/2/3 in 6 blocks, stage-3 biases in 3 blocks
    assert torch.equal(m.patch_embed[0].c.weight, tm.patch_embed.conv1.conv.weight)
    assert torch.equal(m.blocks3[4].ffn1.m.pw2.bn.running_var, tm.stages[2].blocks[1].ffn1.m.pw2.bn.running_var)


def test_bad_pretrained_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='pretrained weights not found: .*nope.pth'):
        build('m0', pretrained=str(tmp_path / 'nope.pth'))
    junk = tmp_path / 'junk.pth'
    junk.write_bytes(b'not a checkpoint')
    with pytest.raises(ev.PretrainedError, match=r'junk.pth: not a readable PyTorch checkpoint \(not a zip archive\)'):
        build('m0', pretrained=str(junk))
    junk.write_bytes(b'junk')  # 4 bytes: refused by the opcode scan before torch.load's legacy path
    with pytest.raises(ev.PretrainedError, match=r'junk.pth: not a readable PyTorch checkpoint'):
        build('m0', pretrained=str(junk))
    bomb = H.bytearray_bomb(tmp_path / 'bomb.pth')  # 2 GiB asked for by a few bytes of pickle
    with pytest.raises(ev.PretrainedError, match=r'bomb.pth: .*bytearray'):
        build('m0', pretrained=str(bomb))
    foreign = tmp_path / 'resnet.pth'
    torch.save({'model': {'conv1.weight': torch.zeros(64, 3, 7, 7)}}, foreign)
    with pytest.raises(ev.PretrainedError, match='resnet.pth: no tensor matches'):
        build('m0', pretrained=str(foreign))
    notsd = tmp_path / 'list.pth'
    torch.save([1, 2, 3], notsd)
    with pytest.raises(ev.PretrainedError, match='list.pth: not an EfficientViT checkpoint'):
        build('m0', pretrained=str(notsd))


# ---------------------------------------------------------------------------------------------------------------
# The fast inference path: same function as the plain path, only in eval mode, exportable and compilable
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('v', VARIANTS)
def test_fast_path_equals_plain_math_in_float64(v):
    m = fill(build(v)).double().eval()
    plain, fast = copy.deepcopy(m).fuse(exact=True), copy.deepcopy(m).fuse()
    assert fast.fast and not plain.fast  # fuse() with no argument is the fast path
    def residual_dw(model):
        return sum(1 for mod in model.modules() if isinstance(mod, ev.Residual) and ev._is_depthwise(mod.m))
    depth = {'m5': 8}.get(v, 6)
    assert residual_dw(plain) == 2 * depth + 4 and residual_dw(fast) == 0  # identity folded into the kernels
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)  # stage 1 in padded 7x7 windows, stages 2-3 whole-map
    with torch.no_grad():
        want, got = plain(x), fast(x)
    assert rel_diff(want, got) < 1e-10
    assert all(g.is_contiguous() for g in got)


def well_conditioned(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """compare_seed.py's kind of weights: kernels with std 1/sqrt(fan_in), BN scales in [0.25, 0.75], BN variances in
    [0.5, 1.5], attention biases with std 0.5. Activations keep their scale, so float32 rounding stays ~1e-6."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif name.endswith('attention_biases'):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            elif name.endswith('bn.weight'):
                p.copy_(0.25 + 0.5 * torch.rand(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for bn in model.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.copy_(0.1 * torch.randn(bn.num_features, generator=g))
                bn.running_var.copy_(0.5 + torch.rand(bn.num_features, generator=g))
    return model


@pytest.mark.parametrize('v', VARIANTS)
def test_fast_path_matches_plain_path_on_well_conditioned_weights(v):
    """What compare_seed.py checks, on its kind of weights: fuse() (the fast path) against the unfused plain path,
    within 1e-4 in float32 (at 224x224, windows tiling stage 1 exactly, and at 64x96, padded windows then whole-map
    stages) and within 1e-10 in float64 (fused after the cast, so the folded weights are not rounded to float32)."""
    m = well_conditioned(build(v)).eval()
    g = torch.Generator().manual_seed(1)
    for dtype, tol, sizes in ((torch.float32, 1e-4, ((224, 224), (64, 96))), (torch.float64, 1e-10, ((64, 96),))):
        plain = copy.deepcopy(m).to(dtype)
        fast = copy.deepcopy(plain).fuse()
        assert fast.fast
        for h, w in sizes:
            x = torch.randn(1, 3, h, w, generator=g, dtype=dtype)
            with torch.no_grad():
                want, got = plain(x), fast(x)
            assert max(o.abs().max().item() for o in want) < 1e3  # really the well-conditioned regime
            assert rel_diff(want, got) < tol, (dtype, h, w)


def test_fast_path_input_gradient_equals_plain():
    m = fill(build('m0')).double().eval()
    plain, fast = copy.deepcopy(m).fuse(exact=True), copy.deepcopy(m).fuse()
    grads = []
    for model in (plain, fast):
        x = torch.randn(1, 3, 64, 96, dtype=torch.float64, generator=torch.Generator().manual_seed(0),
                        requires_grad=True)
        sum((o * o).sum() for o in model(x)).backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_fast_path_only_in_eval_and_needs_fuse():
    m = fill(build('m0'))
    with pytest.raises(RuntimeError, match='needs fused convs'):
        m.set_fast(True)
    plain, fast = copy.deepcopy(m).fuse(exact=True), copy.deepcopy(m).fuse()
    x = torch.randn(1, 3, 64, 64)
    calls = []
    fast.forward_fast = lambda t: calls.append(1) or ev.EfficientViT.forward_fast(fast, t)
    fast.train()
    out = fast(x)
    assert not calls  # train mode never takes the inference path
    assert rel_diff(plain.train()(x), out) < 1e-5
    fast.eval()
    _forward(fast, x)
    assert calls == [1]


@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning')
def test_fast_path_onnx_export_dynamic_sizes(tmp_path):
    ort = pytest.importorskip('onnxruntime')
    m = fill(build('m0')).eval().fuse()
    f = tmp_path / 'm0.onnx'
    torch.onnx.export(m, (torch.zeros(1, 3, 64, 96),), str(f), input_names=['images'], output_names=['p3', 'p4', 'p5'],
                      dynamic_axes={'images': {0: 'batch', 2: 'height', 3: 'width'}}, opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(f), providers=['CPUExecutionProvider'])
    for shape in [(1, 3, 64, 96), (2, 3, 96, 64)]:  # same window branches (stage 1 windowed, stages 2-3 whole map)
        x = torch.randn(*shape)
        got = [torch.from_numpy(o) for o in session.run(None, {'images': x.numpy()})]
        assert rel_diff(_forward(m, x), got) < 1e-4


@pytest.mark.slow
def test_fast_path_compiles_without_graph_breaks():
    m = fill(build('m0')).eval().fuse()
    compiled = torch.compile(m, backend='aot_eager', fullgraph=True)
    x = torch.randn(1, 3, 64, 96)
    assert rel_diff(_forward(m, x), _forward(compiled, x)) < 1e-5


def _plain_convnorm_forward(self, x):
    return self.bn(self.c(x))


def _plain_conv_forward(self, x):
    x = self.conv(x)
    return self.act(self.bn(x) if self.bn is not None else x)


def _detector_grads(monkeypatch, plain: bool) -> tuple[list[torch.Tensor], dict]:
    """Float64, channels-last, train mode (the trainer's setting): loss-like output, every gradient, BN statistics."""
    from models.common import Conv
    from models.yolo import DetectionModel

    if plain:
        monkeypatch.setattr(ev.ConvNorm, 'forward', _plain_convnorm_forward)
        monkeypatch.setattr(Conv, 'forward', _plain_conv_forward)
        monkeypatch.setattr(ev.CascadedGroupAttention, 'forward_channels_last', ev.CascadedGroupAttention.forward_nchw)
    torch.manual_seed(0)
    model = DetectionModel('models/yolov5-efficientvit.yaml', nc=3, verbose=False).double()
    model = model.to(memory_format=torch.channels_last).train()
    x = torch.rand(2, 3, 96, 128, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    out = model(x)
    sum((o * torch.linspace(-1, 1, o.shape[-1], dtype=o.dtype)).square().mean() for o in out).backward()
    monkeypatch.undo()
    buffers = {k: v.clone() for k, v in model.state_dict().items() if 'running' in k}
    return [p.grad.clone() for p in model.parameters()], buffers


def test_training_path_gradients_equal_the_plain_path_in_float64(monkeypatch):
    """The training-speed changes (BN gradients handed back channels-last, NCHW BN for <= 8 channels, attention on
    channels-last maps as token views) compute the same function and the same gradients as plain conv -> BN and the
    plain attention, on the whole EfficientViT-M0 detector."""
    fast, fast_stats = _detector_grads(monkeypatch, plain=False)
    plain, plain_stats = _detector_grads(monkeypatch, plain=True)
    assert len(fast) == len(plain) > 200
    # per tensor, relative to that tensor's largest gradient, or to the model's largest where a gradient is zero in
    # exact arithmetic (BN biases before a zero-initialised BN weight hold only rounding noise, ~1e-18)
    scale = max(float(b.abs().max()) for b in plain)
    worst = max(float((a - b).abs().max()) / max(float(b.abs().max()), 1e-6 * scale) for a, b in zip(fast, plain))
    assert worst < 1e-10
    assert all(torch.allclose(fast_stats[k], plain_stats[k], rtol=1e-12, atol=1e-12) for k in plain_stats)

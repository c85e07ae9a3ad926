"""EfficientViT (MSRA) M0–M5 as a three-output YOLOv5 backbone.

Paper: "EfficientViT: Memory Efficient Vision Transformer with Cascaded Group Attention", Liu et al., CVPR 2023.
Official code: github.com/microsoft/Cream/tree/main/EfficientViT (classification and mmdet downstream).

This is the detection variant the project's seed describes: the fourth patch-embed conv has stride 1, so the three
stages come out at strides 8/16/32, and every attention window is 7x7 (biases of shape (heads, 49)). State-dict keys
are those of the official Cream checkpoints, so their weights load directly; timm's layout is mapped by
``timm_to_cream`` (checkpoint filters and loader: ``models/efficientvit_weights.py``). Differences from the seed, on
purpose: it is a ``models.backbone.Backbone`` (outputs declared, no dummy forward), the attention bias is never
stale, maps smaller than a window attend over the whole map, ``fuse()`` keeps device and dtype and gives the fast
inference path (``fuse(exact=True)``: the seed's arithmetic), and ``frozen_stages`` holds in train mode.

File order (timm's anatomy): blocks, model, variant table, registered factories.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import Backbone
from models.efficientvit_weights import (  # noqa: F401  (public names, importable from here as before)
    LoadReport,
    PretrainedError,
    adapt_kernel,
    cream_state_dict,
    load_pretrained,
    resize_attention_biases,
    timm_to_cream,
    timm_to_cream_key,
)
from models.registry import register_module
from utils.core.precision import conv_float32_under_cpu_autocast
from utils.core.sizes import round_to_nearest_multiple, round_up_to_multiple
from utils.core.torch_utils import channels_last_grad, nchw_grad

__all__ = ['EfficientViT', 'EfficientViT_M0', 'EfficientViT_M1', 'EfficientViT_M2', 'EfficientViT_M3',
           'EfficientViT_M4', 'EfficientViT_M5', 'VARIANTS', 'PretrainedError', 'LoadReport', 'load_pretrained',
           'timm_to_cream', 'cream_state_dict', 'resize_attention_biases', 'adapt_kernel']


# ----------------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------------
class ConvNorm(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d (keys ``c`` and ``bn``); ``fuse()`` folds them into one conv."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int = 0, g: int = 1, bn_weight_init: float = 1.0):
        super().__init__()
        self.add_module('c', nn.Conv2d(c1, c2, k, s, p, groups=g, bias=False))
        self.add_module('bn', nn.BatchNorm2d(c2))
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.constant_(self.bn.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """conv -> BN. In training on channels-last maps, BN's gradient is handed back channels-last, and BN over
        few channels (<= 8: the first patch-embedding layer) runs in NCHW, where PyTorch's CPU kernel is 2x faster,
        with its gradient made NCHW too (a mixed-layout backward is 2.2x slower). Forward and backward compute the
        same function (``tests/models/test_efficientvit.py`` checks gradients). Under CPU bf16 autocast, depthwise
        convs whose bf16 backward is slow run in float32 (utils/core/precision)."""
        y = conv_float32_under_cpu_autocast(self.c, x)
        if not (self.training and y.requires_grad and y.is_contiguous(memory_format=torch.channels_last)):
            return self.bn(y)
        if y.shape[1] <= 8 and not y.is_contiguous():
            return nchw_grad(self.bn(y.contiguous())).contiguous(memory_format=torch.channels_last)
        return channels_last_grad(self.bn(y))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """Return a Conv2d with bias equal to conv+BN in eval mode, on the same device and dtype."""
        c, bn = self.c, self.bn
        std = (bn.running_var + bn.eps) ** 0.5  # same operation order as the official fuse: identical bits
        fused = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups,
                          bias=True, device=c.weight.device, dtype=c.weight.dtype)
        fused.weight.copy_(c.weight * (bn.weight / std)[:, None, None, None])
        fused.bias.copy_(bn.bias - bn.running_mean * bn.weight / std)
        return fused.requires_grad_(False)  # an inference parameter, as YOLOv5's fuse_conv_and_bn makes it


class Residual(nn.Module):
    """``x + m(x)`` (the official code's drop-path option is never used, so it is left out)."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)


class FFN(nn.Module):
    """Pointwise expand (ReLU) and project back; the last BN starts at zero, so the residual starts as identity."""

    def __init__(self, c: int, hidden: int):
        super().__init__()
        self.pw1 = ConvNorm(c, hidden)
        self.act = nn.ReLU()
        self.pw2 = ConvNorm(hidden, c, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw2(self.act(self.pw1(x)))


class SqueezeExcite(nn.Module):
    """Channel gate ``x * sigmoid(fc2(relu(fc1(mean(x)))))`` with timm's SEModule keys (``fc1``, ``fc2``)."""

    def __init__(self, c: int, rd_ratio: float = 0.25):
        super().__init__()
        rd = round_to_nearest_multiple(c * rd_ratio)  # timm sizes its SE bottleneck so
        self.fc1 = nn.Conv2d(c, rd, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(rd, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * s.sigmoid()


class PatchMerging(nn.Module):
    """Inverted residual that halves the resolution: 1x1 expand x4, depthwise 3x3 stride 2, SE, 1x1 project."""

    def __init__(self, c1: int, c2: int):
        super().__init__()
        hidden = 4 * c1
        self.conv1 = ConvNorm(c1, hidden)
        self.act = nn.ReLU()
        self.conv2 = ConvNorm(hidden, hidden, 3, 2, 1, g=hidden)
        self.se = SqueezeExcite(hidden, 0.25)
        self.conv3 = ConvNorm(hidden, c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.se(self.act(self.conv2(self.act(self.conv1(x))))))


def relative_bias_index(h: int, w: int, r: int, device: torch.device | None = None) -> torch.Tensor:
    """(h*w, h*w) indices into a (heads, r*r) bias table: ``|dy| * r + |dx|`` for every pair of tokens.

    For h == w == r this is exactly the official ``attention_bias_idxs`` (offsets numbered in first-seen order,
    which is row-major); for a smaller window it picks the same biases for the same offsets.
    """
    # expand + reshape rather than repeat_interleave, which ONNX opset 12 (YOLOv5's default export opset) lacks
    ys = torch.arange(h, device=device).view(h, 1).expand(h, w).reshape(-1)
    xs = torch.arange(w, device=device).view(1, w).expand(h, w).reshape(-1)
    return (ys[:, None] - ys[None, :]).abs() * r + (xs[:, None] - xs[None, :]).abs()


def _index_cache_allowed() -> bool:
    """Python-side caches are left alone while a graph is captured (trace, script, ONNX export, compile)."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    return not torch.compiler.is_compiling()


class CascadedGroupAttention(nn.Module):
    """Cascaded group attention: head i sees split i plus head i-1's output; q gets a depthwise conv.

    The bias table ``attention_biases`` (heads, r*r) is gathered into (heads, N, N) from the parameter itself on every
    forward, so it follows ``load_state_dict``, ``.to()``, ``.half()`` and in-place updates (EMA, even through
    ``.data``, which bypasses version counters) in any order; the official code caches it on ``eval()`` and goes stale.
    """

    def __init__(self, dim: int, key_dim: int, num_heads: int, resolution: int, kernels: Iterable[int]):
        super().__init__()
        kernels = list(kernels)
        self.num_heads, self.key_dim, self.resolution = num_heads, key_dim, resolution
        self.scale = key_dim ** -0.5
        self.d = dim // num_heads  # value dim per head == input split size, which the cascade needs
        self.qkvs = nn.ModuleList(ConvNorm(dim // num_heads, 2 * key_dim + self.d) for _ in range(num_heads))
        self.dws = nn.ModuleList(ConvNorm(key_dim, key_dim, kernels[i], 1, kernels[i] // 2, g=key_dim)
                                 for i in range(num_heads))
        self.proj = nn.Sequential(nn.ReLU(), ConvNorm(self.d * num_heads, dim, bn_weight_init=0.0))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution * resolution))
        # Kept (persistent) because the official checkpoints and the seed's state dict carry it; its value is
        # always recomputed, whatever a checkpoint holds (see _load_from_state_dict).
        self.register_buffer('attention_bias_idxs', relative_bias_index(resolution, resolution, resolution))
        self._index_cache: dict[tuple, torch.Tensor] = {}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + 'attention_bias_idxs'
        if key in state_dict:  # a derived index, never trusted from a file (another resolution would not fit)
            state_dict[key] = self.attention_bias_idxs.clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def window_bias(self, h: int, w: int) -> torch.Tensor:
        """(heads, h*w, h*w) additive attention bias for an h x w window (h, w <= resolution).

        Gathered from the parameter on every call (a few microseconds), so it can never be stale; only the index,
        which depends on nothing but the window shape and device, is cached (outside graph capture).
        """
        p = self.attention_biases
        if not _index_cache_allowed():
            return p[:, relative_bias_index(h, w, self.resolution, p.device)]
        key = (h, w, p.device)
        idx = self._index_cache.get(key)
        if idx is None:
            idx = self._index_cache[key] = relative_bias_index(h, w, self.resolution, p.device)
        return p[:, idx]

    def forward_tokens(self, t: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Fast inference form on (windows, h*w, C) tokens; needs fused convs. Same math as ``forward``."""
        Bw, N, C = t.shape
        bias = self.window_bias(h, w)
        kd, d = self.key_dim, self.d
        splits = t.split(C // self.num_heads, dim=-1)
        outs, feat = [], splits[0]
        for i, (qkv, dw) in enumerate(zip(self.qkvs, self.dws)):
            if i > 0:
                feat = feat + splits[i]
            q, k, v = F.linear(feat, qkv.weight.flatten(1), qkv.bias).split([kd, kd, d], dim=-1)
            q = F.conv2d(q.reshape(Bw, h, w, kd).permute(0, 3, 1, 2), dw.weight, dw.bias, padding=dw.padding, groups=kd)
            q = q.permute(0, 2, 3, 1).reshape(Bw, N, kd)
            attn = torch.baddbmm(bias[i], q, k.transpose(1, 2), alpha=self.scale).softmax(dim=-1)
            feat = attn @ v
            outs.append(feat)
        proj = self.proj[1]
        return F.linear(torch.cat(outs, dim=-1).relu_(), proj.weight.flatten(1), proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last):
            return self.forward_channels_last(x)
        return self.forward_nchw(x)

    def forward_nchw(self, x: torch.Tensor) -> torch.Tensor:
        """The plain form (the official code's arithmetic), on (B, C, H, W) maps."""
        B, C, H, W = x.shape
        bias = self.window_bias(H, W)
        splits = x.chunk(self.num_heads, dim=1)
        outs, feat = [], splits[0]
        for i, (qkv, dw) in enumerate(zip(self.qkvs, self.dws)):
            if i > 0:
                feat = feat + splits[i]
            q, k, v = qkv(feat).split([self.key_dim, self.key_dim, self.d], dim=1)
            q = dw(q).flatten(2)
            attn = (q.transpose(-2, -1) @ k.flatten(2)) * self.scale + bias[i]
            attn = attn.softmax(dim=-1)
            feat = (v.flatten(2) @ attn.transpose(-2, -1)).view(B, self.d, H, W)
            outs.append(feat)
        return self.proj(torch.cat(outs, dim=1))

    def forward_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` on a channels-last map (training): a channels-last (B, C, H, W) tensor is (B, H*W, C) tokens
        in memory, so q, k, v and each head's output are viewed as tokens, not copied; only q is copied, for its
        depthwise conv. Same function as ``forward`` (gradients checked in float64 by the tests)."""
        B, C, H, W = x.shape
        N, kd, d = H * W, self.key_dim, self.d
        bias = self.window_bias(H, W)
        splits = x.permute(0, 2, 3, 1).reshape(B, N, C).split(d, dim=-1)
        outs, feat = [], splits[0]
        for i, (qkv, dw) in enumerate(zip(self.qkvs, self.dws)):
            if i > 0:
                feat = feat + splits[i]
            # one channel split of the map, whose backward is one cat (no zero-filled slice gradients to add up)
            q, k, v = qkv(feat.reshape(B, H, W, d).permute(0, 3, 1, 2)).split([kd, kd, d], dim=1)
            q = dw(q.contiguous(memory_format=torch.channels_last))
            q, k, v = (t.permute(0, 2, 3, 1).reshape(B, N, t.shape[1]) for t in (q, k, v))  # token views
            attn = ((q @ k.transpose(1, 2)) * self.scale + bias[i]).softmax(dim=-1)
            feat = attn @ v
            outs.append(feat)
        return self.proj(torch.cat(outs, dim=-1).view(B, H, W, C).permute(0, 3, 1, 2))


class LocalWindowAttention(nn.Module):
    """Attention inside non-overlapping r x r windows (bottom/right zero padding, no mask, as the official code).

    A map no larger than one window in both sides attends over the whole map (the official code crashes there
    unless the map is exactly r x r; for r x r both agree).
    """

    def __init__(self, dim: int, key_dim: int, num_heads: int, window: int, kernels: Iterable[int]):
        super().__init__()
        self.window = window
        self.attn = CascadedGroupAttention(dim, key_dim, num_heads, window, kernels)

    def forward_nhwc(self, t: torch.Tensor) -> torch.Tensor:
        """Inference form on (B, H, W, C): windows as (B*nH*nW, r*r, C) tokens, one copy in and one out."""
        B, H, W, C = t.shape
        r = self.window
        if H <= r and W <= r:
            return self.attn.forward_tokens(t.reshape(B, H * W, C), H, W).view(B, H, W, C)
        pad_b, pad_r = (r - H % r) % r, (r - W % r) % r
        t = F.pad(t, (0, 0, 0, pad_r, 0, pad_b))
        nH, nW = (H + pad_b) // r, (W + pad_r) // r
        t = t.view(B, nH, r, nW, r, C).transpose(2, 3).reshape(B * nH * nW, r * r, C)
        t = self.attn.forward_tokens(t, r, r)
        return t.view(B, nH, nW, r, r, C).transpose(2, 3).reshape(B, nH * r, nW * r, C)[:, :H, :W]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        r = self.window
        if H <= r and W <= r:
            return self.attn(x)
        pad_b, pad_r = (r - H % r) % r, (r - W % r) % r
        memory_format = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else \
            torch.contiguous_format  # hand the result back in the layout it came in
        x = x.permute(0, 2, 3, 1)
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        pH, pW = H + pad_b, W + pad_r
        nH, nW = pH // r, pW // r
        x = x.reshape(B, nH, r, nW, r, C).transpose(2, 3).reshape(B * nH * nW, r, r, C).permute(0, 3, 1, 2)
        x = self.attn(x)
        x = x.permute(0, 2, 3, 1).reshape(B, nH, nW, r, r, C).transpose(2, 3).reshape(B, pH, pW, C)
        if pad_b or pad_r:
            x = x[:, :H, :W]
        return x.permute(0, 3, 1, 2).contiguous(memory_format=memory_format)


class EfficientViTBlock(nn.Module):
    """The sandwich: depthwise conv, FFN, window attention, depthwise conv, FFN — each one residual."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, window: int, kernels: Iterable[int]):
        super().__init__()
        self.dw0 = Residual(ConvNorm(dim, dim, 3, 1, 1, g=dim, bn_weight_init=0.0))
        self.ffn0 = Residual(FFN(dim, 2 * dim))
        self.mixer = Residual(LocalWindowAttention(dim, key_dim, num_heads, window, kernels))
        self.dw1 = Residual(ConvNorm(dim, dim, 3, 1, 1, g=dim, bn_weight_init=0.0))
        self.ffn1 = Residual(FFN(dim, 2 * dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn1(self.dw1(self.mixer(self.ffn0(self.dw0(x)))))


def _dw_ffn(dim: int) -> nn.Sequential:
    """Residual depthwise 3x3 + residual FFN, placed on each side of a PatchMerging."""
    return nn.Sequential(Residual(ConvNorm(dim, dim, 3, 1, 1, g=dim)), Residual(FFN(dim, 2 * dim)))


def _linear(conv: nn.Conv2d, t: torch.Tensor) -> torch.Tensor:
    """A fused 1x1 conv applied to (..., C) tokens as one GEMM."""
    return F.linear(t, conv.weight.flatten(1), conv.bias)


def _conv_nhwc(conv: nn.Conv2d, t: torch.Tensor) -> torch.Tensor:
    """A fused k x k conv on (B, H, W, C): a channels-last NCHW view in, (B, H', W', C') view out."""
    return conv(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _nhwc(m: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """Fast-path forward of one fused backbone module on (B, H, W, C) tokens (same math as ``m(x)``)."""
    if isinstance(m, EfficientViTBlock):
        for part in (m.dw0, m.ffn0, m.mixer, m.dw1, m.ffn1):
            t = _nhwc(part, t)
        return t
    if isinstance(m, nn.Sequential):
        for part in m:
            t = _nhwc(part, t)
        return t
    if isinstance(m, nn.Conv2d):  # a residual depthwise conv with the identity folded in
        return _conv_nhwc(m, t)
    if isinstance(m, Residual) and isinstance(m.m, FFN):
        return _linear(m.m.pw2, _linear(m.m.pw1, t).relu_()).add_(t)
    if isinstance(m, Residual) and isinstance(m.m, LocalWindowAttention):
        return t + m.m.forward_nhwc(t)  # out of place: the attention output may be a cropped (strided) view
    if isinstance(m, Residual):
        return t + _nhwc(m.m, t)
    if isinstance(m, PatchMerging):
        t = _conv_nhwc(m.conv2, _linear(m.conv1, t).relu_()).relu_()
        B, H, W, C = t.shape
        se = m.se
        gate = se.fc2(se.fc1(t.mean((1, 2), keepdim=True).permute(0, 3, 1, 2)).relu_()).sigmoid().view(B, 1, C)
        # conv3(t * gate) == t @ (W3 * gate)^T: scale the small weight per sample instead of the large map
        w = m.conv3.weight.flatten(1)[None] * gate
        out = torch.baddbmm(m.conv3.bias, t.reshape(B, H * W, C), w.transpose(1, 2))
        return out.view(B, H, W, -1)
    raise TypeError(f'no fast path for {type(m).__name__}')


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels and m.stride == (1, 1)


@torch.no_grad()
def _fold_identity(conv: nn.Conv2d) -> nn.Conv2d:
    """``x + conv(x)`` as one depthwise conv: add 1 at the kernel centre (odd kernel, 'same' padding)."""
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, 1, conv.padding, groups=conv.groups,
                    bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
    out.load_state_dict(conv.state_dict())
    kh, kw = conv.kernel_size
    out.weight[:, 0, kh // 2, kw // 2] += 1
    return out.requires_grad_(False)


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------
class EfficientViT(Backbone):
    """Three-stage EfficientViT returning ``[P3, P4, P5]`` (strides 8/16/32) as a list.

    Stages (``frozen_stages``): 1 patch_embed, 2 +blocks1, 3 +blocks2, 4 +blocks3 (the whole backbone). Frozen parts
    have ``requires_grad=False`` and their BNs stay in eval mode even when the model is put in train mode.
    """

    def __init__(self, embed_dim: Iterable[int] = (64, 128, 192), depth: Iterable[int] = (1, 2, 3),
                 num_heads: Iterable[int] = (4, 4, 4), window_size: Iterable[int] = (7, 7, 7),
                 kernels: Iterable[int] = (7, 5, 3, 3), key_dim: Iterable[int] = (16, 16, 16), in_chans: int = 3,
                 frozen_stages: int = 0, distillation: bool = False):
        ed, depth, nh = list(embed_dim), list(depth), list(num_heads)
        win, kd, kernels = list(window_size), list(key_dim), list(kernels)
        super().__init__(channels=ed, strides=[8, 16, 32])
        if any(c % h for c, h in zip(ed, nh)):
            raise ValueError(f'embed_dim {ed} must be divisible by num_heads {nh}')
        self.fast = False
        self.distillation = distillation  # accepted for signature compatibility; the backbone has no head
        c0 = ed[0]
        self.patch_embed = nn.Sequential(
            ConvNorm(in_chans, c0 // 8, 3, 2, 1), nn.ReLU(),
            ConvNorm(c0 // 8, c0 // 4, 3, 2, 1), nn.ReLU(),
            ConvNorm(c0 // 4, c0 // 2, 3, 2, 1), nn.ReLU(),
            ConvNorm(c0 // 2, c0, 3, 1, 1))  # stride 1 here: the detection variant (strides 8/16/32)
        stages: list[list[nn.Module]] = [[], [], []]
        for i in range(3):
            if i > 0:  # subsample at the start of stages 2 and 3, inside blocks2/blocks3 (official key layout)
                stages[i] += [_dw_ffn(ed[i - 1]), PatchMerging(ed[i - 1], ed[i]), _dw_ffn(ed[i])]
            stages[i] += [EfficientViTBlock(ed[i], kd[i], nh[i], win[i], kernels) for _ in range(depth[i])]
        self.blocks1, self.blocks2, self.blocks3 = (nn.Sequential(*s) for s in stages)
        self.freeze(frozen_stages)

    def stages(self) -> list[nn.Module]:
        """The four freezable parts, in order."""
        return [self.patch_embed, self.blocks1, self.blocks2, self.blocks3]

    def attention_tokens(self, height: int, width: int) -> tuple[int, int]:
        """(tokens of the attended maps, tokens window attention computes on) for one height x width image.

        A map larger than one window is zero-padded to whole r x r windows (bottom and right), so the second number
        exceeds the first unless every attended map side is a multiple of r or fits in one window: at 256 px M0's
        maps 32/16/8 become 35/21/14 (1.56x the tokens), at 224 px (28/14/7) nothing is padded.
        """
        seen = computed = 0
        for stride, r in self._attention_windows():
            h, w = -(-height // stride), -(-width // stride)  # every stride-2 conv here gives ceil(n / 2)
            ph, pw = (h, w) if h <= r and w <= r else (round_up_to_multiple(h, r), round_up_to_multiple(w, r))
            seen, computed = seen + h * w, computed + ph * pw
        return seen, computed

    def padding_free_multiple(self) -> int:
        """Input sides that are multiples of this (224 for 7x7 windows at strides 8/16/32) pad no attention map."""
        return math.lcm(*(stride * r for stride, r in self._attention_windows()))

    def _attention_windows(self) -> list[tuple[int, int]]:
        """(stride of its map, window side) of every window attention, in forward order."""
        return [(stride, m.window) for stride, stage in zip(self.strides, (self.blocks1, self.blocks2, self.blocks3))
                for m in stage.modules() if isinstance(m, LocalWindowAttention)]

    def input_size_note(self, height: int, width: int) -> str | None:
        """Says how much window padding costs at this size when it adds a quarter or more to the attention's work
        (at 640 px it adds 10 %, and the nearest padding-free size, 672, costs more everywhere else)."""
        seen, computed = self.attention_tokens(height, width)
        if computed < 1.25 * seen:
            return None
        k = self.padding_free_multiple()
        return (f'EfficientViT at {height}x{width}: window attention computes on {computed / seen:.2f}x the tokens '
                f'of its maps (padded to whole windows); image sides that are multiples of {k} px ({k}, {2 * k}, ...) '
                f'pad none')

    def no_weight_decay(self) -> set[str]:
        """The attention-bias tables: learned positional terms, not weights to shrink (as the official recipe)."""
        return {n for n, _ in self.named_parameters() if n.endswith('attention_biases')}

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        form = self._modules.get('export_form')  # only while export.py traces (models/efficientvit_onnx.py)
        if form is not None and not self.training:
            return form(x)
        if self.fast and not self.training:
            return self.forward_fast(x)
        x = self.patch_embed(x)
        p3 = self.blocks1(x)
        p4 = self.blocks2(p3)
        p5 = self.blocks3(p4)
        return [p3, p4, p5]

    def forward_fast(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Fused inference in (B, H, W, C) layout: 1x1 convs as GEMMs, depthwise convs channels-last."""
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        t = x.permute(0, 2, 3, 1)
        outs = []
        for stage in (self.blocks1, self.blocks2, self.blocks3):
            for m in stage:
                t = _nhwc(m, t)
            outs.append(t.permute(0, 3, 1, 2).contiguous())  # plain NCHW out (YOLO heads .view() them)
        return outs

    @torch.no_grad()
    def fuse(self, exact: bool = False) -> EfficientViT:
        """Fold every BatchNorm into its conv, in place (same device and dtype), and take the fast path; returns self.

        The fast path also folds each residual depthwise conv into one conv (identity added to the kernel centre)
        and runs eval-mode forwards channels-last in token layout: the same function, summed in another order.
        ``exact=True`` only folds the BNs, keeping the seed's arithmetic bit for bit. Calling it again is harmless.
        """
        for parent in list(self.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, ConvNorm):
                    setattr(parent, name, child.fuse())
        if not exact:
            for parent in list(self.modules()):
                for name, child in list(parent.named_children()):
                    if isinstance(child, Residual) and _is_depthwise(child.m):
                        setattr(parent, name, _fold_identity(child.m))
            self.set_fast(True)
        return self

    def set_fast(self, on: bool = True) -> EfficientViT:
        """Use the fast inference path in eval mode (needs a fused model); training always uses the plain path."""
        if on and any(isinstance(m, ConvNorm) for m in self.modules()):
            raise RuntimeError('EfficientViT fast path needs fused convs: call fuse() first')
        self.fast = on
        return self


# ----------------------------------------------------------------------------------------------------------------
# Variant table and registered factories
# ----------------------------------------------------------------------------------------------------------------
VARIANTS: dict[str, dict] = {
    'm0': dict(embed_dim=(64, 128, 192), depth=(1, 2, 3), num_heads=(4, 4, 4), kernels=(7, 5, 3, 3)),
    'm1': dict(embed_dim=(128, 144, 192), depth=(1, 2, 3), num_heads=(2, 3, 3), kernels=(7, 5, 3, 3)),
    'm2': dict(embed_dim=(128, 192, 224), depth=(1, 2, 3), num_heads=(4, 3, 2), kernels=(7, 5, 3, 3)),
    'm3': dict(embed_dim=(128, 240, 320), depth=(1, 2, 3), num_heads=(4, 3, 4), kernels=(5, 5, 5, 5)),
    'm4': dict(embed_dim=(128, 256, 384), depth=(1, 2, 3), num_heads=(4, 4, 4), kernels=(7, 5, 3, 3)),
    'm5': dict(embed_dim=(192, 288, 384), depth=(1, 3, 4), num_heads=(3, 3, 4), kernels=(7, 5, 3, 3)),
}


def _create(variant: str, pretrained: str = '', frozen_stages: int = 0, distillation: bool = False,
            fuse: bool = False) -> EfficientViT:
    model = EfficientViT(**VARIANTS[variant], frozen_stages=frozen_stages, distillation=distillation)
    model.pretrained_report = load_pretrained(model, pretrained) if pretrained else None
    return model.fuse() if fuse else model


@register_module(kind='backbone', weights_arg=0)
def EfficientViT_M0(pretrained: str = '', frozen_stages: int = 0, distillation: bool = False,
                    fuse: bool = False) -> EfficientViT:
    """EfficientViT-M0 backbone: channels 64/128/192 at strides 8/16/32."""
    return _create('m0', pretrained, frozen_stages, distillation, fuse)


@register_module(kind='backbone', weights_arg=0)
def EfficientViT_M1(pretrained: str = '', frozen_stages: int = 0, distillation: bool = False,
                    fuse: bool = False) -> EfficientViT:
    """EfficientViT-M1 backbone: channels 128/144/192 at strides 8/16/32."""
    return _create('m1', pretrained, frozen_stages, distillation, fuse)


@register_module(kind='backbone', weights_arg=0)
def EfficientViT_M2(pretrained: str = '', frozen_stages: int = 0, distillation: bool = False,
                    fuse: bool = False) -> EfficientViT:
    """EfficientViT-M2 backbone: channels 128/192/224 at strides 8/16/32."""
    return _create('m2', pretrained, frozen_stages, distillation, fuse)


@register_module(kind='backbone', weights_arg=0)
def EfficientViT_M3(pretrained: str = '', frozen_stages: int = 0, distillation: bool = False,
                    fuse: bool = False) -> EfficientViT:
    """EfficientViT-M3 backbone: channels 128/240/320 at strides 8/16/32."""
    return _create('m3', pretrained, frozen_stages, distillation, fuse)


@register_module(kind='backbone', weights_arg=0)
def EfficientViT_M4(pretrained: str = '', frozen_stages: int = 0, distillation: bool = False,
                    fuse: bool = False) -> EfficientViT:
    """EfficientViT-M4 backbone: channels 128/256/384 at strides 8/16/32."""
    return _create('m4', pretrained, frozen_stages, distillation, fuse)


@register_module(kind='backbone', weights_arg=0)
def EfficientViT_M5(pretrained: str = '', frozen_stages: int = 0, distillation: bool = False,
                    fuse: bool = False) -> EfficientViT:
    """EfficientViT-M5 backbone: channels 192/288/384 at strides 8/16/32."""
    return _create('m5', pretrained, frozen_stages, distillation, fuse)

"""EfficientViT's export form: the fused backbone rewritten as a graph ONNX Runtime runs well.

The eager fast path (``EfficientViT.forward_fast``) works on (B, H, W, C) tokens with 1x1 convs as GEMMs; exported,
that becomes MatMul+Add pairs that ORT runs as Gemm behind Reshapes, with a Transpose pair around every depthwise
conv. ORT's fastest CPU kernels are its blocked-layout (NCHWc) convolutions, which also absorb a following ReLU and a
residual Add. So this form stays NCHW and keeps the number of graph nodes low (with intra-op spinning off, every
parallel node pays a thread wake-up; EfficientViT has 3-4x yolov5n's node count):

- every 1x1 conv of the FFNs, PatchMerging and the attention projection is a Conv; residual depthwise convs carry
  the identity in their kernel centre; the FFN and attention residuals are Adds right after a Conv (fused by ORT);
- window attention cuts the zero-padded, channels-last map into (B*nH*nW, r*r, C) token windows with one
  Reshape-Transpose-Reshape each way (the NCHW <-> NHWC permutes fold into ORT's NCHWc reorders) and projects on
  the whole map after the windows are put back;
- per head of the cascade (head i reads ``split_i + out_{i-1}``, so heads cannot be batched), q, k and v are
  ``tokens @ W`` MatMuls, activation first, which is also what INT8 quantizers need to run them without Transposes
  (with the previous form's ``W @ tokens`` on (windows, C, r*r) windows, ORT ran M0's INT8 graph at 640 with 103
  Transposes; now 43); q goes channels-first only around its depthwise conv. The k bias is dropped (it adds the
  same ``q . b_k`` to a whole row of logits, which softmax ignores), the attention scale is folded into q's
  depthwise conv and the relative-position biases are gathered once into (heads, N, N) constants.

Same function as the plain path, summed in another order (tests hold it within 1e-4 relative for M0-M5). It is built
from a fused backbone (``fuse()`` or ``fuse(exact=True)``) and used for ONNX export only, via ``onnx_export_form``.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from models.efficientvit import (
    FFN,
    ConvNorm,
    EfficientViT,
    EfficientViTBlock,
    LocalWindowAttention,
    PatchMerging,
    Residual,
    _fold_identity,
    _is_depthwise,
)


def _conv(w: torch.Tensor, b: torch.Tensor | None, groups: int = 1, padding: int = 0) -> nn.Conv2d:
    """A Conv2d holding copies of weight ``w`` (out, in/groups, k, k) and bias ``b``."""
    c = nn.Conv2d(w.shape[1] * groups, w.shape[0], w.shape[-1], padding=padding, groups=groups, bias=b is not None,
                  device=w.device, dtype=w.dtype)
    c.weight.data.copy_(w)
    if b is not None:
        c.bias.data.copy_(b)
    return c.requires_grad_(False)


class FFNForm(nn.Module):
    """``x + pw2(relu(pw1(x)))``: two Convs, the ReLU and the Add fused into them by ORT."""

    def __init__(self, ffn: FFN):
        super().__init__()
        self.pw1, self.pw2 = ffn.pw1, ffn.pw2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw2(self.pw1(x).relu())


class PatchMergingForm(nn.Module):
    """PatchMerging with the SE squeeze as a global average pool (an op ORT keeps in its blocked layout)."""

    def __init__(self, m: PatchMerging):
        super().__init__()
        self.conv1, self.conv2, self.conv3, self.se = m.conv1, m.conv2, m.conv3, m.se

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.conv1(x).relu()).relu()
        s = self.se.fc2(self.se.fc1(F.adaptive_avg_pool2d(x, 1)).relu()).sigmoid()
        return self.conv3(x * s)


class WindowAttentionForm(nn.Module):
    """``x + LocalWindowAttention(x)`` on token windows, the projection on the whole map (ORT fuses the residual).

    Windows are (B*nH*nW, r*r, C) tokens, cut from the channels-last map: ORT folds the NCHW -> NHWC permute into
    the preceding conv's NCHWc reorder, and the cut itself moves whole r*C rows, where cutting NCHW windows moved
    r floats at a time. Per head, q, k and v are MatMuls ``tokens @ W`` (the activation first and the constant
    second: one GEMM over all windows, and the form ORT's and OpenVINO's quantizers handle without Transposes);
    the k bias is dropped (it adds ``q . b_k`` to a whole row of logits, which softmax ignores). q goes
    channels-first only around its depthwise conv; ORT folds that permute pair into the conv's reorders (FP32)
    or into its NHWC QLinearConv (INT8).
    """

    def __init__(self, lwa: LocalWindowAttention, dynamic: bool = False):
        super().__init__()
        cga = lwa.attn
        self.window, self.dynamic = lwa.window, dynamic
        self.heads, self.kd, self.d = cga.num_heads, cga.key_dim, cga.d
        kd = self.kd
        self.dws = nn.ModuleList(_conv(dw.weight * cga.scale, dw.bias * cga.scale, groups=kd, padding=dw.padding[0])
                                 for dw in cga.dws)
        # 1-D biases: onnxslim makes ``x @ W + b`` a Gemm, and ORT's QDQ quantizer expects a Gemm's C to be 1-D
        for name, t in (('wq', [c.weight[:kd, :, 0, 0].t() for c in cga.qkvs]),
                        ('bq', [c.bias[:kd] for c in cga.qkvs]),
                        ('wk', [c.weight[kd:2 * kd, :, 0, 0].t() for c in cga.qkvs]),
                        ('wv', [c.weight[2 * kd:, :, 0, 0].t() for c in cga.qkvs]),
                        ('bv', [c.bias[2 * kd:] for c in cga.qkvs])):
            self.register_buffer(name, torch.stack(t).detach().clone(), persistent=False)
        self.proj = cga.proj[1]
        r = self.window
        self.register_buffer('bias', cga.window_bias(r, r).detach().clone(), persistent=False)
        self._window_bias = cga.window_bias  # the whole-map branch gathers its own (h*w)^2 bias while traced

    def heads_forward(self, t: torch.Tensor, h: int, w: int, bias: torch.Tensor) -> torch.Tensor:
        """Cascaded group attention on (windows, h*w, C) tokens, before the projection: (windows, h*w, C)."""
        splits = t.split(self.d, dim=2)
        outs = []
        for i in range(self.heads):
            feat = splits[i] if i == 0 else splits[i] + outs[-1]
            q = (feat @ self.wq[i] + self.bq[i]).reshape(-1, h, w, self.kd).permute(0, 3, 1, 2)
            q = self.dws[i](q).permute(0, 2, 3, 1).reshape(-1, h * w, self.kd)
            k, v = feat @ self.wk[i], feat @ self.wv[i] + self.bv[i]
            attn = (q @ k.transpose(1, 2) + bias[i]).softmax(dim=-1)
            outs.append(attn @ v)
        return torch.cat(outs, dim=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        r = self.window
        t = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        if H <= r and W <= r:
            t = self.heads_forward(t.reshape(B, H * W, C), H, W, self._window_bias(H, W)).relu()
            return x + self.proj(t.reshape(B, H, W, C).permute(0, 3, 1, 2))
        pad_b, pad_r = (r - H % r) % r, (r - W % r) % r
        crop = self.dynamic or pad_b or pad_r
        t = F.pad(t, (0, 0, 0, pad_r, 0, pad_b)) if crop else t
        nH, nW = (H + pad_b) // r, (W + pad_r) // r
        t = t.reshape(B * nH, r, nW, r * C).transpose(1, 2).reshape(B * nH * nW, r * r, C)
        t = self.heads_forward(t, r, r, self.bias).relu()  # the projection's ReLU, on tokens (ORT fuses what follows)
        t = t.reshape(B * nH, nW, r, r * C).transpose(1, 2).reshape(B, nH * r, nW * r, C)
        return x + self.proj((t[:, :H, :W] if crop else t).permute(0, 3, 1, 2))


def _form(m: nn.Module, dynamic: bool) -> nn.Module:
    """The export form of one fused backbone module."""
    if isinstance(m, EfficientViTBlock):
        return nn.Sequential(*(_form(p, dynamic) for p in (m.dw0, m.ffn0, m.mixer, m.dw1, m.ffn1)))
    if isinstance(m, nn.Sequential):
        return nn.Sequential(*(_form(p, dynamic) for p in m))
    if isinstance(m, nn.Conv2d):  # a residual depthwise conv, identity already folded in (fuse())
        return m
    if isinstance(m, Residual) and _is_depthwise(m.m):  # fuse(exact=True) keeps it apart
        return _fold_identity(m.m)
    if isinstance(m, Residual) and isinstance(m.m, FFN):
        return FFNForm(m.m)
    if isinstance(m, Residual) and isinstance(m.m, LocalWindowAttention):
        return WindowAttentionForm(m.m, dynamic)
    if isinstance(m, PatchMerging):
        return PatchMergingForm(m)
    raise TypeError(f'no export form for {type(m).__name__}: fuse the backbone first')


class EfficientViTForm(nn.Module):
    """The export form of a fused EfficientViT: same outputs [P3, P4, P5], NCHW throughout."""

    def __init__(self, backbone: EfficientViT, dynamic: bool = False):
        super().__init__()
        if any(isinstance(m, ConvNorm) for m in backbone.modules()):
            raise TypeError('the EfficientViT export form needs a fused backbone: call fuse() first')
        self.patch_embed = backbone.patch_embed
        self.stages = nn.ModuleList(_form(s, dynamic) for s in (backbone.blocks1, backbone.blocks2, backbone.blocks3))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


@contextmanager
def onnx_export_form(model: nn.Module, dynamic: bool = False) -> Iterator[list[EfficientViT]]:
    """Within the block, every EfficientViT in ``model`` (fused) forwards through its export form in eval mode;
    yields those backbones (an empty list: the model has none, nothing changes). ``dynamic``: the graph will be traced
    with dynamic height/width, so window padding and cropping are always traced, even where the trace size needs none.
    The form is a temporary submodule ``export_form`` of each backbone, removed on exit."""
    backbones = [m for m in model.modules() if isinstance(m, EfficientViT)]
    added = [b for b in backbones if 'export_form' not in b._modules]  # nested use: the outer block owns the form
    for b in added:
        b.export_form = EfficientViTForm(b, dynamic)
    try:
        yield backbones
    finally:
        for b in added:
            del b.export_form

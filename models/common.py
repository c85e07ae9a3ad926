"""YOLOv5 v7.0 building blocks with YOLOv5's constructor arguments and state-dict names.

Each block registered for YAML use says itself how it turns a YAML row into constructor arguments: the classmethod
``yaml_args(c1s, args, n, ctx) -> (args, n, c2)`` receives the input channel counts of the rows it reads from, the
parsed YAML arguments, the depth-scaled repeat count and the model-wide scaling (``YamlContext``); it returns the
constructor arguments, the number of copies parse_model should stack, and the output channel count. Modules without
``yaml_args`` (e.g. ``nn.Upsample``) keep their input channel count. So parse_model needs no list of module types.
"""
from __future__ import annotations

import ast
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from models.registry import register_module
from utils.core.sizes import round_up_to_multiple
from utils.core.torch_utils import channels_last_grad, fuse_conv_and_bn


@dataclass(frozen=True)
class YamlContext:
    """Model-wide YAML settings a block needs to size itself."""

    depth_multiple: float = 1.0
    width_multiple: float = 1.0
    channel_multiple: int = 8
    no: int = 0  # Detect's output channels na*(nc+5): a layer asking for exactly this width is not scaled


make_divisible = round_up_to_multiple  # YOLOv5's name for it, kept for code that imports models.common.make_divisible


def autopad(k: int | tuple[int, ...], p: int | None = None, d: int = 1) -> int | list[int]:
    """'Same' padding for stride 1: k//2 for the dilation-adjusted kernel, unless p is given."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


class ScaledBlock(nn.Module):
    """Base for blocks whose first two arguments are (c1, c2): c2 is width-scaled, c1 is the input width."""

    @classmethod
    def yaml_args(cls, c1s: list[int], args: list, n: int, ctx: YamlContext) -> tuple[list, int, int]:
        """[c2, *rest] from the YAML -> [c1, scaled c2, *rest]; the row is repeated n times by parse_model."""
        if not args:
            raise ValueError(f'{cls.__name__} needs its output channels as the first argument')
        c2 = args[0]
        if c2 != ctx.no:
            c2 = round_up_to_multiple(c2 * ctx.width_multiple, ctx.channel_multiple)
        return [c1s[0], c2, *args[1:]], n, c2


class CSPBlock(ScaledBlock):
    """Base for CSP blocks (C3, BottleneckCSP): the YAML repeat count becomes their internal depth argument."""

    @classmethod
    def yaml_args(cls, c1s: list[int], args: list, n: int, ctx: YamlContext) -> tuple[list, int, int]:
        """[c2, *rest] -> [c1, scaled c2, n, *rest], stacked once (the repeats happen inside the block)."""
        args, _, c2 = super().yaml_args(c1s, args, n, ctx)
        return [args[0], args[1], n, *args[2:]], 1, c2


def _activation(act: bool | nn.Module) -> nn.Module:
    """act=True -> a new SiLU; False/None -> Identity; a module is used as given (no shared process-wide default)."""
    if act is True:
        return nn.SiLU()
    if isinstance(act, nn.Module):
        return act
    return nn.Identity()


# Activations a model YAML's ``activation:`` key may name (parameter-free, so state dicts do not change).
ACTIVATIONS: dict[str, type[nn.Module]] = {c.__name__: c for c in (
    nn.SiLU, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.Mish, nn.GELU, nn.ELU, nn.SELU, nn.CELU, nn.Sigmoid,
    nn.Tanh, nn.Hardsigmoid, nn.Identity)}


def parse_activation(text: str) -> Callable[[], nn.Module]:
    """``'nn.LeakyReLU(0.1)'`` -> a factory of fresh ``nn.LeakyReLU(0.1)`` modules, without ``eval``.

    YOLOv5 evaluates this YAML text as Python; here it must be a call of a name in ``ACTIVATIONS`` (optionally written
    ``nn.`` or ``torch.nn.``) with literal arguments. Anything else is a ValueError saying what is accepted."""
    accepted = f"a call such as nn.LeakyReLU(0.1) of one of {', '.join(ACTIVATIONS)}"
    try:
        call = ast.parse(str(text).strip(), mode='eval').body
    except SyntaxError:
        raise ValueError(f'activation {text!r} is not {accepted}') from None
    name = ast.unparse(call.func) if isinstance(call, ast.Call) else ''
    base = name.removeprefix('torch.').removeprefix('nn.')
    if base not in ACTIVATIONS or '.' in base:
        raise ValueError(f'activation {text!r} is not {accepted}')
    if any(k.arg is None for k in call.keywords):
        raise ValueError(f'activation {text!r}: **kwargs are not accepted')

    def literal(node: ast.expr):
        try:
            return ast.literal_eval(node)
        except ValueError:
            raise ValueError(f'activation {text!r}: arguments must be literals, got {ast.unparse(node)}') from None

    args = [literal(a) for a in call.args]
    kwargs = {k.arg: literal(k.value) for k in call.keywords}
    try:
        ACTIVATIONS[base](*args, **kwargs)  # fail now, with the YAML's text, rather than deep in a build
    except (ValueError, TypeError) as e:
        raise ValueError(f'activation {text!r}: {e}') from None
    cls = ACTIVATIONS[base]
    return lambda: cls(*args, **kwargs)


def set_activation(model: nn.Module, make: Callable[[], nn.Module]) -> int:
    """Give every Conv that uses the default SiLU a fresh ``make()`` instead (YOLOv5 swaps ``Conv.default_act``, a
    process-wide class attribute; this touches only ``model``). Returns how many were changed."""
    n = 0
    for m in model.modules():
        if isinstance(m, Conv) and isinstance(m.act, nn.SiLU):
            m.act, n = make(), n + 1
    return n


@register_module()
class Conv(ScaledBlock):
    """Conv2d (no bias) -> BatchNorm2d -> activation. After fuse() the BN is folded into the conv and bn is None."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1, d: int = 1,
                 act: bool | nn.Module = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn: nn.BatchNorm2d | None = nn.BatchNorm2d(c2)
        self.act = _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
            if self.training:
                x = channels_last_grad(x)  # BN's backward then gets one layout (utils.core.torch_utils)
        return self.act(x)

    def fuse(self) -> Conv:
        """Fold the BatchNorm into the conv (eval-time speed-up); idempotent."""
        if self.bn is not None:
            self.conv = fuse_conv_and_bn(self.conv, self.bn)
            self.bn = None
        return self


@register_module()
class DWConv(Conv):
    """Depth-wise convolution: Conv with groups = gcd(c1, c2)."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, d: int = 1, act: bool | nn.Module = True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act)


@register_module()
class Bottleneck(ScaledBlock):
    """1x1 conv to c2*e channels, 3x3 conv back to c2, plus a residual when shortcut and c1 == c2."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


@register_module()
class BottleneckCSP(CSPBlock):
    """Cross Stage Partial bottleneck (CSPNet), YOLOv5's pre-v4 block: cv1..cv4, bn, act, m."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = nn.Conv2d(c1, c_, 1, 1, bias=False)
        self.cv3 = nn.Conv2d(c_, c_, 1, 1, bias=False)
        self.cv4 = Conv(2 * c_, c2, 1, 1)
        self.bn = nn.BatchNorm2d(2 * c_)
        self.act = nn.SiLU()
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = self.cv3(self.m(self.cv1(x)))
        y2 = self.cv2(x)
        return self.cv4(self.act(self.bn(torch.cat((y1, y2), 1))))


@register_module()
class C3(CSPBlock):
    """CSP bottleneck with 3 convs: cv3(cat(m(cv1(x)), cv2(x)))."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


@register_module()
class SPP(ScaledBlock):
    """Spatial pyramid pooling (YOLOv3-SPP): parallel max-pools of sizes k, concatenated."""

    def __init__(self, c1: int, c2: int, k: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


@register_module()
class SPPF(ScaledBlock):
    """Fast SPP: one k x k max-pool applied three times in sequence (= SPP with k, 2k-1, 3k-2)."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


@register_module()
class Focus(ScaledBlock):
    """Space-to-depth (2x2 pixel blocks to channels) then Conv: YOLOv5's pre-v6 stem."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1,
                 act: bool | nn.Module = True):
        super().__init__()
        self.conv = Conv(c1 * 4, c2, k, s, p, g, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1))


@register_module()
class Concat(nn.Module):
    """Concatenate a list of tensors along a dimension (channels by default)."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    @classmethod
    def yaml_args(cls, c1s: list[int], args: list, n: int, ctx: YamlContext) -> tuple[list, int, int]:
        """Output width is the sum of the inputs' widths."""
        return list(args), n, sum(c1s)

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


register_module('nn.Upsample')(nn.Upsample)

UPSAMPLE_MODES = ('nearest', 'nearest-exact', 'bilinear', 'bicubic')


def _upsample_yaml_args(c1s: list[int], args: list, n: int, ctx: YamlContext) -> tuple[list, int, int]:
    """nn.Upsample ``[size, scale_factor, mode]``: size None, a scale in (0, MAX_UPSAMPLE] and a known mode, so a
    model YAML (or a checkpoint's) cannot ask for a gigantic feature map or crash the first forward."""
    from utils.core.safety import MAX_UPSAMPLE

    size, scale, mode = (list(args) + [None, None, 'nearest'][len(args):])[:3] if len(args) <= 3 else (0, 0, 0)
    if len(args) > 3 or size is not None:
        raise ValueError(f'expected [None, scale_factor, mode], got {args}')
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= MAX_UPSAMPLE:
        raise ValueError(f'scale_factor must be a number in (0, {MAX_UPSAMPLE}], got {scale!r}')
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f'mode must be one of {", ".join(UPSAMPLE_MODES)}, got {str(mode)[:40]!r}')
    return list(args), n, c1s[0]


# yaml_args for registered classes we do not own (parse_model looks here when the class has none)
FOREIGN_YAML_ARGS: dict[type, Callable] = {nn.Upsample: _upsample_yaml_args}

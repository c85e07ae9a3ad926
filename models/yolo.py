"""YOLOv5 v7.0 detection model: Detect head, parse_model and DetectionModel (alias Model).

YAML rows ``[from, number, module, args]`` are resolved through models.registry (no eval). Each module sizes itself
with its ``yaml_args`` classmethod (see models/common.py). A ``models.backbone.Backbone`` (EfficientViT, Timm: several
outputs, declared in its ``feature_info``) must be the first row; it occupies layer indices 0-4, with its outputs at
the last indices (three outputs: P3=2, P4=3, P5=4) exposed by parameter-free ``FeatureSlot`` layers, so the next row
is index 5 and layer numbers agree in the printed table, ``from`` fields, state-dict keys and --freeze. Reading and
checking the YAML is models/config.py's (``ModelConfigError`` and ``load_model_cfg`` are importable from here too).

Usage: python models/yolo.py --cfg models/yolov5-efficientvit.yaml
"""
from __future__ import annotations

import sys
from pathlib import Path

if __name__ == '__main__':  # entry point only: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import itertools  # noqa: E402
import math  # noqa: E402
from collections.abc import Iterable  # noqa: E402
from copy import deepcopy  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models import common, efficientvit, timm_backbone  # noqa: E402,F401  (registers the blocks and backbones)
from models.backbone import Backbone  # noqa: E402
from models.common import FOREIGN_YAML_ARGS, Conv, YamlContext, parse_activation, set_activation  # noqa: E402
from models.config import ModelConfigError, check_model_dict, check_row, load_model_cfg, yaml_value  # noqa: E402,F401
from models.registry import get_module, register_module, weights_arg  # noqa: E402
from utils.core.logging import LOGGER, colorstr  # noqa: E402
from utils.core.safety import MAX_LAYER_REPEATS, MAX_MODEL_PARAMS  # noqa: E402
from utils.core.torch_utils import initialize_weights, meta_copy, model_info  # noqa: E402

BACKBONE_SLOTS = 5  # a multi-output backbone occupies layer indices 0..4 (YOLOv5-EfficientViT convention)
PROBE_SIZE = 256  # side of the zero image whose forward measures the strides (YOLOv5: 256)


class InputSizeError(ValueError):
    """An input image whose sides are not multiples of the model's largest stride."""


@register_module()
class Detect(nn.Module):
    """YOLOv5 detection head: one 1x1 conv per level, decoded to pixels (xywh, obj, cls) in eval mode."""

    def __init__(self, nc: int = 80, anchors: list | tuple = (), ch: list | tuple = (), inplace: bool = True):
        super().__init__()
        self.nc = nc
        self.no = nc + 5  # outputs per anchor
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]
        self.register_buffer('anchors', torch.tensor(anchors).float().view(self.nl, -1, 2))  # pixels, then grid units
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = inplace
        self.stride: torch.Tensor | None = None  # set by DetectionModel from the probe forward
        self.dynamic = False  # rebuild grids every call
        self.export = False  # eval forward returns (pred,) only

    @classmethod
    def yaml_args(cls, c1s: list[int], args: list, n: int, ctx: YamlContext) -> tuple[list, int, int]:
        """[nc, anchors] -> [nc, anchors, input widths]; an int k means k placeholder anchors per level."""
        if len(args) < 2:
            raise ValueError('Detect needs [nc, anchors]')
        args = list(args)
        if isinstance(args[1], int):
            args[1] = [list(range(args[1] * 2))] * len(c1s)
        if len(args[1]) != len(c1s):
            raise ValueError(f'Detect has {len(args[1])} anchor levels but reads {len(c1s)} layers')
        return [*args[:2], list(c1s), *args[2:]], n, 0

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor] | tuple:
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            if x[i].dtype == torch.bfloat16:  # bf16 autocast (CPU): 8 mantissa bits round a 224-px coordinate to 1 px
                x[i] = x[i].float()  # so decode (and the loss on the raw outputs) in float32
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:
                z.append(self._decode(x[i], i))
        if self.training:
            return x
        return (torch.cat(z, 1),) if self.export else (torch.cat(z, 1), x)

    def _decode(self, p: torch.Tensor, i: int) -> torch.Tensor:
        """Raw level-i output (bs, na, ny, nx, no) -> (bs, na*ny*nx, no) boxes in input pixels."""
        bs, _, ny, nx, _ = p.shape
        g = self.grid[i]
        if self.dynamic or g.shape[2:4] != p.shape[2:4] or g.device != p.device or g.dtype != p.dtype:
            self.grid[i], self.anchor_grid[i] = self._make_grid(nx, ny, i, p)
        xy, wh, conf = p.sigmoid().split((2, 2, self.nc + 1), 4)
        xy = (xy * 2 + self.grid[i]) * self.stride[i]
        wh = (wh * 2) ** 2 * self.anchor_grid[i]
        return torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no)

    def _make_grid(self, nx: int, ny: int, i: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell offsets (minus 0.5) and anchor sizes in pixels, both shaped (1, na, ny, nx, 2)."""
        d, t = like.device, like.dtype
        shape = 1, self.na, ny, nx, 2
        yv, xv = torch.meshgrid(torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t),
                                indexing='ij')
        grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
        anchor_grid = (self.anchors[i] * self.stride[i]).to(d, t).view((1, self.na, 1, 1, 2)).expand(shape)
        return grid, anchor_grid


class FeatureSlot(nn.Module):
    """Parameter-free layer exposing output ``index`` of the multi-output backbone at layer 0 (None: unused slot)."""

    def __init__(self, index: int | None):
        super().__init__()
        self.index = index

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor | None:
        return None if self.index is None else x[self.index]


def check_anchor_order(m: Detect) -> None:
    """Flip Detect's anchors if their size order (small to large) disagrees with the stride order."""
    a = m.anchors.prod(-1).mean(-1).view(-1)  # mean anchor area per level
    da = a[-1] - a[0]
    ds = m.stride[-1] - m.stride[0]
    if da and (da.sign() != ds.sign()):
        LOGGER.info('AutoAnchor: Reversing anchor order')
        m.anchors[:] = m.anchors.flip(0)


def _resolve_from(f: int | list[int], i: int, ch: list[int], where: str) -> list[int]:
    """Absolute indices of the layers row i reads from; each must be an earlier layer with a known width."""
    out = []
    for j in [f] if isinstance(f, int) else f:
        a = i + j if j < 0 else j
        if not 0 <= a < i:
            raise ModelConfigError(f'{where}: layer {i}: from index {j} does not name an earlier layer (0..{i - 1})')
        if ch[a] <= 0:
            raise ModelConfigError(f'{where}: layer {i}: from index {j} names layer {a}, which has no single output; '
                                   f'a backbone exposes its outputs at the last of layers 1..{BACKBONE_SLOTS - 1}')
        out.append(a)
    return out


def _type_name(obj: Any) -> str:
    name = f'{obj.__module__}.{obj.__qualname__}'
    return name.replace('__main__.', 'models.yolo.')


def _tag(m: nn.Module, i: int, f: int | list[int], type_name: str, n: int, args: list) -> nn.Module:
    """YOLOv5's per-layer attributes (.i .f .type .np) plus .n and .args for the layer table."""
    m.i, m.f, m.type, m.n, m.args = i, f, type_name, n, args
    m.np = sum(p.numel() for p in m.parameters())
    return m


def _backbone_layers(m: Backbone, name: str, args: list, where: str) -> tuple[list, list[int]]:
    """Layer 0 (the backbone) and the FeatureSlots 1..4 placing its k declared outputs at the last k indices."""
    outs = m.out_channels
    k = len(outs)
    if not 1 <= k < BACKBONE_SLOTS:
        raise ModelConfigError(f'{where}: {name} declares {k} outputs; a backbone row supports 1..{BACKBONE_SLOTS - 1}')
    layers = [_tag(m, 0, -1, name, 1, args)]
    ch = [0]
    for s in range(1, BACKBONE_SLOTS):
        j = s - (BACKBONE_SLOTS - k)
        index = j if j >= 0 else None
        layers.append(_tag(FeatureSlot(index), s, 0, _type_name(FeatureSlot), 1, [index]))
        ch.append(outs[j] if j >= 0 else 0)
    return layers, ch


def _build(module: Any, args: list, n: int, name: str, i: int, where: str) -> nn.Module:
    try:
        return nn.Sequential(*(module(*args) for _ in range(n))) if n > 1 else module(*args)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ModelConfigError(f'{where}: layer {i}: {name}{args} failed: {e}') from None


def parse_model(d: dict, ch: list[int], yaml_file: str = '') -> tuple[nn.Sequential, list[int]]:
    """Build the layers of a model YAML dict; return (nn.Sequential, sorted indices whose outputs are kept).

    Under ``torch.device('meta')`` nothing is allocated: ``check_model_size`` counts a model that way first."""
    where = yaml_file or 'model yaml'
    check_model_dict(d, where)
    nc, anchors = d['nc'], d['anchors']
    na = (len(anchors[0]) // 2) if isinstance(anchors, list) else anchors
    ctx = YamlContext(d['depth_multiple'], d['width_multiple'], d.get('channel_multiple', 8), na * (nc + 5))
    layers, chs, save = [], [], set()
    for row_i, row in enumerate(d['backbone'] + d['head']):
        i = len(layers)
        f, n, name, args = check_row(row, row_i, where)
        try:
            module = get_module(name)
        except KeyError as e:
            raise ModelConfigError(f'{where}: layer {i}: {e.args[0]}') from None
        args = [yaml_value(a, nc, anchors) for a in args]
        if i == 0 and f != -1:
            raise ModelConfigError(f'{where}: layer 0: from must be -1 (the input image), got {f}')
        src = [] if i == 0 else _resolve_from(f, i, chs, where)
        c1s = ch[:1] if i == 0 else [chs[j] for j in src]
        n = max(round(n * ctx.depth_multiple), 1) if n > 1 else n
        if n > MAX_LAYER_REPEATS:
            raise ModelConfigError(f'{where}: layer {i}: {n} repeats after depth_multiple, over the limit of '
                                   f'{MAX_LAYER_REPEATS}')
        yaml_args = getattr(module, 'yaml_args', None) or FOREIGN_YAML_ARGS.get(module)
        if yaml_args:
            try:
                args, n, c2 = yaml_args(c1s, args, n, ctx)
            except (TypeError, ValueError, IndexError) as e:
                raise ModelConfigError(f'{where}: layer {i}: {name}: {e}') from None
        else:
            c2 = c1s[0]
        m = _build(module, args, n, name, i, where)
        f_norm = (-1 if f == -1 else src[0]) if isinstance(f, int) else [-1 if j == -1 else a for j, a in zip(f, src)]
        if isinstance(m, Backbone):
            if i != 0:
                raise ModelConfigError(f'{where}: layer {i}: {name} returns several feature maps; '
                                       'such a backbone must be the first row')
            new, new_ch = _backbone_layers(m, _type_name(module), args, where)
            layers += new
            chs += new_ch
            save.add(0)
            continue
        layers.append(_tag(m, i, f_norm, _type_name(module), n, args))
        chs.append(c2)
        save.update(a for j, a in zip([f] if isinstance(f, int) else f, src) if j != -1)
    model = nn.Sequential(*layers)
    if d.get('activation') is not None:
        try:
            make = parse_activation(d['activation'])
        except ValueError as e:
            raise ModelConfigError(f'{where}: {e}') from None
        set_activation(model, make)
        LOGGER.info(f"{colorstr('activation:')} {d['activation']}")
    return model, sorted(save)


@contextlib.contextmanager
def _logger_off():
    """The shape-only build repeats nothing to the user (activation line, pretrained-weights report)."""
    was, LOGGER.disabled = LOGGER.disabled, True
    try:
        yield
    finally:
        LOGGER.disabled = was


def meta_layers(d: dict, ch: int, where: str = 'model yaml') -> nn.Sequential:
    """The layers of model yaml ``d`` with shape-only (meta) tensors: no memory, nothing logged."""
    with torch.device('meta'), _logger_off():
        return parse_model(deepcopy(d), ch=[ch], yaml_file=where)[0]


def without_pretrained(cfg: dict) -> dict:
    """The yaml with the backbone's weights-file argument cleared: a checkpoint carries the weights already."""
    cfg = dict(cfg)
    if not isinstance(cfg.get('backbone'), list):
        return cfg  # not a model yaml: DetectionModel says why
    rows = [list(r) if isinstance(r, (list, tuple)) else r for r in cfg['backbone']]
    row = rows[0] if rows and isinstance(rows[0], list) and len(rows[0]) == 4 else None
    j = weights_arg(row[2]) if row and isinstance(row[2], str) else None  # where that backbone takes its file
    if j is not None and isinstance(row[3], list) and len(row[3]) > j and isinstance(row[3][j], str):
        row[3] = [*row[3][:j], '', *row[3][j + 1:]]
        cfg['backbone'] = rows
    return cfg


def check_model_size(d: dict, ch: int, where: str = 'model yaml') -> int:
    """Parameters + buffers of the model ``d`` describes, counted on the meta device (no memory); a model over
    MAX_MODEL_PARAMS is refused with one line before any real tensor exists (width_multiple 16 asks for 27 GiB)."""
    layers = meta_layers(without_pretrained(d), ch, where)  # shapes only: the weights file is not read here
    n = sum(t.numel() for t in itertools.chain(layers.parameters(), layers.buffers()))
    if n > MAX_MODEL_PARAMS:
        raise ModelConfigError(f'{where}: the model would have {n:,} parameters ({n * 4 / 2**30:.1f} GiB), over the '
                               f'limit of {MAX_MODEL_PARAMS:,}')
    return n


def layer_table(model: nn.Sequential) -> str:
    """YOLOv5's layer table: index, from, n, params, module, arguments."""
    lines = [f"{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<40}{'arguments':<30}"]
    for m in model:
        np_ = sum(p.numel() for p in m.parameters())
        lines.append(f'{m.i:>3}{str(m.f):>18}{m.n:>3}{np_:10.0f}  {m.type:<40}{str(m.args):<30}')
    return '\n'.join(lines)


class DetectionModel(nn.Module):
    """YOLOv5 detection model built from a YAML (path or dict); see the module docstring for layer numbering."""

    def __init__(self, cfg: str | Path | dict = 'yolov5s.yaml', ch: int = 3, nc: int | None = None,
                 anchors: Any = None, verbose: bool = True):
        super().__init__()
        self.frozen_layers: set[int] = set()  # whole layers frozen by freeze() (--freeze)
        self.yaml, self.yaml_file = load_model_cfg(cfg)
        ch = self.yaml['ch'] = self.yaml.get('ch', ch)
        if nc and nc != self.yaml.get('nc'):
            LOGGER.info(f"Overriding model.yaml nc={self.yaml.get('nc')} with nc={nc}")
            self.yaml['nc'] = nc
        if anchors:
            LOGGER.info(f'Overriding model.yaml anchors with anchors={anchors}')
            self.yaml['anchors'] = round(anchors)
        check_model_size(self.yaml, ch, self.yaml_file or 'model yaml')  # refuse before allocating
        self.model, self.save = parse_model(deepcopy(self.yaml), ch=[ch], yaml_file=self.yaml_file)
        self.nc: int = self.yaml['nc']
        self.names: dict[int, str] = {i: f'{i}' for i in range(self.nc)}
        self.inplace: bool = self.yaml.get('inplace', True)
        self.hyp: dict = {}
        m = self.model[-1]
        if not isinstance(m, Detect):
            raise ModelConfigError(f'{self.yaml_file or "model yaml"}: the last row must be Detect')
        m.inplace = self.inplace
        m.stride = self._probe_strides(ch)
        check_anchor_order(m)
        m.anchors /= m.stride.view(-1, 1, 1)  # pixels -> grid units
        self.stride = m.stride
        self._initialize_biases()
        for layer in self.model:
            if not isinstance(layer, Backbone):  # a backbone keeps its own BN settings (pretrained statistics)
                initialize_weights(layer)
        if verbose:
            self.info()

    def _probe_strides(self, ch: int) -> torch.Tensor:
        """Detect's strides from one forward of a 256x256 image, run on a shape-only (meta) copy of the model: no
        compute and no BN statistics change. A backbone's measured output strides must equal the ones it declares.
        """
        x = torch.zeros(1, ch, PROBE_SIZE, PROBE_SIZE)
        try:
            with torch.no_grad():
                shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else None
                          for t in meta_copy(self).eval()._forward_layers(x.to('meta'), stop=len(self.model) - 1)]
        except (NotImplementedError, RuntimeError):  # an op without a meta kernel: probe for real, in eval mode
            was_training = self.training
            try:
                with torch.no_grad():
                    shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else None
                              for t in self.eval()._forward_layers(x, stop=len(self.model) - 1)]
            finally:
                self.train(was_training)
        layer0 = self.model[0]
        if isinstance(layer0, Backbone):  # a check of the declaration, which alone wires the head
            declared = layer0.strides
            measured = [PROBE_SIZE // shapes[m.i][-2] for m in self.model[1:BACKBONE_SLOTS] if m.index is not None]
            if measured != declared:
                raise ModelConfigError(f'{self.yaml_file}: backbone {layer0.type} declares strides {declared} '
                                       f'but its outputs have strides {measured}')
        return torch.tensor([PROBE_SIZE / shapes[j][-2] for j in self.model[-1].f])

    def _initialize_biases(self, cf: torch.Tensor | None = None) -> None:
        """Detect bias priors: objectness ~8 objects per 640x640 image, classes 0.6/nc (or class frequencies cf)."""
        m = self.model[-1]
        for mi, s in zip(m.m, m.stride):
            b = mi.bias.detach().view(m.na, -1).clone()
            b[:, 4] += math.log(8 / (640 / float(s)) ** 2)
            b[:, 5:5 + m.nc] += math.log(0.6 / (m.nc - 0.99999)) if cf is None else torch.log(cf / cf.sum())
            mi.bias = nn.Parameter(b.view(-1), requires_grad=True)

    def _forward_layers(self, x: torch.Tensor, stop: int | None = None) -> list:
        """Run layers [0, stop) and return every layer's output (None where no later layer needs it)."""
        y: list = []
        for m in self.model[:stop]:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if (stop is not None or m.i in self.save) else None)
        return y

    def _forward_once(self, x: torch.Tensor) -> Any:
        y: list = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def _check_input(self, x: torch.Tensor) -> None:
        if self.stride is None or x.device.type == 'meta' or torch.jit.is_tracing() or torch.jit.is_scripting() \
                or torch.compiler.is_compiling():
            return
        gs = int(self.stride.max())
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if h % gs or w % gs:
            hp, wp = math.ceil(h / gs) * gs, math.ceil(w / gs) * gs
            raise InputSizeError(f'input size {h}x{w} is not a multiple of the model stride {gs}; '
                                 f'pad or resize it (e.g. letterbox) to {hp}x{wp}')

    def forward(self, x: torch.Tensor, augment: bool = False) -> Any:
        """Train mode: list of nl tensors (bs, na, ny, nx, no). Eval: (pred (bs, N, 5+nc), raw list)."""
        if augment:
            return self._forward_augment(x)
        self._check_input(x)
        return self._forward_once(x)

    def _forward_augment(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Test-time augmentation: scales 1, 0.83, 0.67 with a left-right flip on the second; merged predictions."""
        img_size = x.shape[-2:]
        gs = int(self.stride.max())
        y = []
        for s, flip in zip((1, 0.83, 0.67), (None, 3, None)):
            xi = _scale_img(x.flip(flip) if flip else x, s, gs)
            yi = self._forward_once(xi)[0]
            y.append(_descale_pred(yi, flip, s, img_size))
        return torch.cat(self._clip_augmented(y), 1), None

    def _clip_augmented(self, y: list[torch.Tensor]) -> list[torch.Tensor]:
        """Drop the coarsest level's predictions of the full-size pass and the finest level's of the smallest pass."""
        nl = self.model[-1].nl
        g = sum(4 ** k for k in range(nl))  # grid cells relative to the coarsest level
        y[0] = y[0][:, :-(y[0].shape[1] // g)]
        y[-1] = y[-1][:, (y[-1].shape[1] // g) * 4 ** (nl - 1):]
        return y

    def _apply(self, fn: Any, recurse: bool = True) -> DetectionModel:
        """.to()/.half()/.cuda() also convert Detect's stride and grid caches (plain attributes, not buffers)."""
        self = super()._apply(fn, recurse)
        m = self.model[-1]
        if m.stride is not None:
            m.stride = fn(m.stride)
            self.stride = m.stride
        m.grid = [fn(g) for g in m.grid]
        m.anchor_grid = [fn(g) for g in m.anchor_grid]
        return self

    def fuse(self, exact: bool = False, verbose: bool = True) -> DetectionModel:
        """Fold every BatchNorm into its conv (YOLO layers and the backbone); print the fused summary (``verbose``: its
        FLOP count runs a profiled forward, ~0.2 s for M0, which the trainer's per-epoch fused copy skips).

        A backbone takes its fastest inference path computing the same function (EfficientViT: the fast path, another
        float summation order); ``exact=True`` asks it for the plain path's arithmetic instead.
        """
        if verbose:
            LOGGER.info('Fusing layers... ')
        for layer in self.model:
            if isinstance(layer, Backbone):
                layer.fuse(exact=exact)
                continue
            for m in layer.modules():
                if isinstance(m, Conv):
                    m.fuse()
        if verbose:
            self.info(table=False)
        return self

    def freeze(self, layers: Iterable[int]) -> list[str]:
        """Freeze whole layers (``--freeze`` indices; the backbone is layer 0) on top of what is frozen already
        (e.g. a backbone's ``frozen_stages``): no gradients, BatchNorm statistics fixed. Never unfreezes anything.
        Returns the names of every frozen parameter."""
        for i in sorted({int(i) for i in layers if 0 <= int(i) < len(self.model)}):
            layer = self.model[i]
            if isinstance(layer, Backbone):
                layer.freeze(len(layer.stages()))
            for p in layer.parameters():
                p.requires_grad_(False)
            self.frozen_layers.add(i)
        self.train(self.training)
        return [n for n, p in self.named_parameters() if not p.requires_grad]

    def frozen_modules(self) -> list[nn.Module]:
        """Frozen layers and the frozen stages of a backbone: the parts whose state must never change."""
        out = [self.model[i] for i in sorted(self.frozen_layers)]
        return out + [m for layer in self.model if isinstance(layer, Backbone) and layer.i not in self.frozen_layers
                      for m in layer.frozen_modules()]

    def frozen_state_keys(self) -> set[str]:
        """State-dict keys (parameters and BN statistics) of the frozen parts: EMA copies these instead of averaging
        them, so they stay bit-identical."""
        names = {id(m): n for n, m in self.named_modules()}  # a backbone's stage may be an unregistered container
        subs = {id(s): s for m in self.frozen_modules() for s in m.modules() if id(s) in names}
        return {f'{names[i]}.{k}' for i, s in subs.items()
                for k, _ in (*s.named_parameters(recurse=False), *s.named_buffers(recurse=False))}

    def no_weight_decay(self) -> set[str]:
        """Parameter names the optimizer must not decay, as the backbone declares them (timm's convention)."""
        return {f'model.{layer.i}.{n}' for layer in self.model if isinstance(layer, Backbone)
                for n in layer.no_weight_decay()}

    def train(self, mode: bool = True) -> DetectionModel:
        """Train mode except the frozen layers (a backbone keeps its own frozen stages in eval mode). A frozen Detect
        stays in train mode: it holds no statistics, and its mode only picks raw outputs (what the loss reads) or
        decoded ones."""
        super().train(mode)
        if mode:
            for i in self.frozen_layers:
                if not isinstance(self.model[i], Detect):
                    self.model[i].eval()
        return self

    def info(self, verbose: bool = False, imgsz: int | tuple[int, int] = 640,
             table: bool = True) -> tuple[int, int, int, float]:
        """Log the layer table (unless table=False) and the summary line; return (layers, params, grads, GFLOPs)."""
        if table:
            LOGGER.info('\n' + layer_table(self.model))
        return model_info(self, verbose, imgsz)


Model = DetectionModel  # YOLOv5 name; weights pickled before v6.2 name models.yolo.Model


def _scale_img(img: torch.Tensor, ratio: float, gs: int = 32) -> torch.Tensor:
    """Resize by ratio, then pad right/bottom with 0.447 up to a multiple of gs."""
    if ratio == 1.0:
        return img
    h, w = img.shape[2:]
    s = int(h * ratio), int(w * ratio)
    img = F.interpolate(img, size=s, mode='bilinear', align_corners=False)
    h, w = (math.ceil(v / gs) * gs for v in s)
    return F.pad(img, [0, w - s[1], 0, h - s[0]], value=0.447)


def _descale_pred(p: torch.Tensor, flip: int | None, scale: float, img_size: torch.Size) -> torch.Tensor:
    """Undo _scale_img and a flip on decoded predictions (bs, N, no)."""
    p = p.clone()
    p[..., :4] /= scale
    if flip == 2:
        p[..., 1] = img_size[0] - p[..., 1]
    elif flip == 3:
        p[..., 0] = img_size[1] - p[..., 0]
    return p


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Build a model YAML and print its layer table and summary.')
    parser.add_argument('--cfg', type=str, default='yolov5s.yaml', help='model.yaml')
    parser.add_argument('--nc', type=int, default=None, help='override the number of classes')
    parser.add_argument('--imgsz', type=int, default=640, help='image side for the GFLOPs count')
    parser.add_argument('--no-fuse', action='store_true', help='skip the fused-model summary')
    return parser.parse_args(argv)


def main(opt: argparse.Namespace) -> DetectionModel:
    from utils.core.errors import exit_on

    with exit_on('ERROR', (ModelConfigError, InputSizeError, FileNotFoundError)):
        model = DetectionModel(opt.cfg, nc=opt.nc, verbose=False)
    model.info(imgsz=opt.imgsz)
    if not opt.no_fuse:
        model.eval().fuse()
    return model


if __name__ == '__main__':
    main(parse_opt())

"""Any timm model as a YOLO backbone, by name: ``[-1, 1, Timm, ['resnet18']]``.

The model is built with ``timm.create_model(name, features_only=True, pretrained=False)``; its channels and strides
come from timm's own ``feature_info``, and by default the deepest outputs at strides 8, 16 and 32 feed P3/P4/P5
(layer indices 2, 3, 4, as for EfficientViT). YAML arguments: ``[name, weights='', frozen_stages=0,
out_indices=None]`` — ``weights`` a local file (a timm or plain state dict; nothing is ever downloaded),
``frozen_stages`` counts timm's feature levels (for resnet18: 1 the stem, 2 +layer1, ... 5 the whole backbone),
``out_indices`` picks other levels of ``feature_info`` (e.g. ``[1, 2, 3, 4]`` adds stride 4).
"""
from __future__ import annotations

import difflib
import re
from collections import Counter
from pathlib import Path

import torch
import torch.fx as fx
from torch import nn

from models.backbone import Backbone
from models.backbone_weights import LoadReport, load_matching, read_state_dict
from models.registry import register_module
from utils.core.logging import LOGGER

YOLO_STRIDES = (8, 16, 32)
REMOTE_PREFIXES = ('hf-hub:', 'hf_hub:', 'local-dir:', 'http:', 'https:', 'ftp:', 's3:', 'gs:')
MAX_OUTPUTS = 4  # a backbone row exposes at most 4 outputs (layer slots 1-4)


def _timm():
    import timm  # imported on first use: building a YOLOv5 or EfficientViT model does not need it
    return timm


def check_name(name: object) -> str:
    """A timm architecture name (optionally with a pretrained tag, which changes nothing without weights)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"Timm needs a timm model name as its first argument (e.g. ['resnet18']), got {name!r}")
    if name.lower().startswith(REMOTE_PREFIXES) or '://' in name:
        raise ValueError(f"timm model {name!r} names a hub or URL config; nothing is downloaded: give an "
                         "architecture name such as 'resnet18'")
    timm = _timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else '; see timm.list_models()'
        raise ValueError(f'unknown timm model {name!r}{hint}')
    return name


def check_weights(weights: object) -> str:
    """'' or the path of a local weights file; a URL, hub tag or ``True`` is refused (nothing is downloaded)."""
    if weights is None or weights == '':
        return ''
    if not isinstance(weights, (str, Path)):
        raise ValueError(f'Timm weights must be a local file path, got {weights!r}; nothing is downloaded')
    text = str(weights)
    if '://' in text or text.lower().startswith(REMOTE_PREFIXES):
        raise ValueError(f'Timm weights {text!r} are a URL or hub tag; nothing is downloaded: give a local '
                         '.pth/.pt/.safetensors file')
    return text


def _create(name: str, **kwargs) -> nn.Module:
    try:
        return _timm().create_model(name, features_only=True, pretrained=False, **kwargs)
    except Exception as e:  # timm raises many types for models without a feature extractor
        text = ' '.join(str(e).split())[:150]
        raise ValueError(f'timm model {name!r} cannot return feature maps (features_only): '
                         f'{type(e).__name__}: {text}') from None


def select_outputs(strides: list[int], out_indices: object, name: str) -> list[int]:
    """Indices into timm's feature levels: the deepest level at each of strides 8/16/32, or ``out_indices``."""
    if out_indices is None:
        missing = [s for s in YOLO_STRIDES if s not in strides]
        if missing:
            msra = re.fullmatch(r'efficientvit_m([0-5])', name.split('.')[0])
            hint = (f": timm's efficientvit_m* is the stride-16 classification model; use our "
                    f"EfficientViT_M{msra.group(1)} (strides 8/16/32)" if msra else '; pick levels with out_indices')
            raise ValueError(f'timm model {name!r} has feature strides {sorted(set(strides))}, no stride '
                             f"{'/'.join(map(str, missing))} output for P3/P4/P5{hint}")
        return [max(i for i, s in enumerate(strides) if s == t) for t in YOLO_STRIDES]
    ok = isinstance(out_indices, (list, tuple)) and 1 <= len(out_indices) <= MAX_OUTPUTS and all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(strides) for i in out_indices)
    if not ok:
        raise ValueError(f'out_indices must be 1-{MAX_OUTPUTS} indices into the {len(strides)} feature levels of '
                         f'{name!r} (strides {strides}), got {out_indices!r}')
    return list(out_indices)


def _resolve(body: nn.Module, module_name: str) -> str | None:
    """The path of a feature_info module inside timm's feature wrapper (FeatureListNet flattens one level)."""
    for path in (module_name, module_name.replace('.', '_', 1)):
        try:
            body.get_submodule(path)
            return path
        except AttributeError:
            continue
    return None


def _units(module: nn.Module, prefix: str, ends: set[str]):
    """Module paths in registration (forward) order, split finely enough that each stage end is one unit."""
    for name, child in module.named_children():
        path = prefix + name
        if path in ends or not any(e.startswith(path + '.') for e in ends):
            yield path
        else:
            yield from _units(child, path + '.', ends)


def stage_paths(body: nn.Module, module_names: list[str]) -> list[list[str]] | None:
    """Group the body's modules into one stage per feature level (up to and including that level's module).

    None when a level's module cannot be found or some parameter would belong to no stage; the backbone then has
    a single stage (freezable only as a whole).
    """
    ends = [_resolve(body, n) for n in module_names]
    if any(e is None for e in ends):
        return None
    stages, current = [], []
    for path in _units(body, '', set(ends)):
        current.append(path)
        if len(stages) < len(ends) and path == ends[len(stages)]:
            stages.append(current)
            current = []
    if len(stages) != len(ends):
        return None
    stages[-1] += current  # modules after the last level (timm truncates them; kept for completeness)
    covered = {id(p) for paths in stages for path in paths for p in body.get_submodule(path).parameters()}
    return stages if all(id(p) in covered for p in body.parameters()) else None


class _BatchNormLeafTracer(fx.Tracer):
    """Traces the real graph but keeps every BatchNorm (timm's BatchNormAct2d included) as one call."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, nn.BatchNorm2d) or super().is_leaf_module(m, qualname)


def conv_bn_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module paths where a plain Conv2d's only consumer is a BatchNorm2d, each called once.

    Read from the traced graph, not from module order, so a conv whose output also feeds something else (where
    folding would change that other use) is never paired. An untraceable model gives no pairs.
    """
    graph = _BatchNormLeafTracer().trace(module)
    calls = Counter(n.target for n in graph.nodes if n.op == 'call_module')
    pairs = []
    for node in graph.nodes:
        if node.op != 'call_module' or not isinstance(module.get_submodule(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if not (isinstance(src, fx.Node) and src.op == 'call_module' and len(src.users) == 1):
            continue
        bn, conv = module.get_submodule(node.target), module.get_submodule(src.target)
        if type(conv) is nn.Conv2d and bn.track_running_stats and calls[src.target] == calls[node.target] == 1:
            pairs.append((src.target, node.target))
    return pairs


def _after_norm(bn: nn.BatchNorm2d) -> nn.Module | None:
    """What a BN module does after normalising: nothing for a plain BN, drop + activation for timm's BatchNormAct2d
    (its forward is batch_norm, then ``drop``, then ``act``); None for any other subclass."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if type(bn) is _timm().layers.BatchNormAct2d:
        return nn.Sequential(bn.drop, bn.act)
    return None


@torch.no_grad()
def fold_batchnorm(module: nn.Module, conv_path: str, bn_path: str) -> None:
    """Fold an eval-mode BN into the conv before it. The BN is replaced by what it does after normalising; a BN
    subclass of unknown behaviour stays, as an exact identity normalisation (mean 0, variance 1, eps 0)."""
    conv, bn = module.get_submodule(conv_path), module.get_submodule(bn_path)
    scale = (bn.weight if bn.affine else 1.0) / (bn.running_var + bn.eps).sqrt()
    shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
    bias = shift if conv.bias is None else conv.bias * scale + shift
    conv.weight.mul_(scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype))
    after = _after_norm(bn)
    if after is not None:
        parent, _, name = bn_path.rpartition('.')
        setattr(module.get_submodule(parent) if parent else module, name, after)
        return
    bn.running_mean.zero_()
    bn.running_var.fill_(1.0)
    bn.eps = 0.0
    if bn.affine:
        bn.weight.fill_(1.0)
        bn.bias.zero_()


def _timm_key(key: str, own: dict) -> str:
    """A full timm model's key as the feature wrapper names it (``stages.0.x`` may be ``stages_0.x``)."""
    key = key.removeprefix('module.')
    if key in own:
        return key
    flat = key.replace('.', '_', 1)
    return flat if flat in own else key


def load_timm_weights(body: nn.Module, path: str | Path, name: str) -> LoadReport:
    """Load a timm (or plain) state dict by name and shape; the classifier and other extra keys are reported."""
    sd = read_state_dict(path, f'timm {name}')
    own = body.state_dict()
    return load_matching(body, {_timm_key(k, own): v for k, v in sd.items()}, path, f'timm {name}')


@register_module('Timm', kind='backbone', weights_arg=1)
class Timm(Backbone):
    """A timm feature extractor behind the backbone contract (see the module docstring for the YAML arguments)."""

    def __init__(self, name: str, weights: str = '', frozen_stages: int = 0, out_indices: list[int] | None = None):
        name, weights = check_name(name), check_weights(weights)
        body = _create(name)
        levels = body.feature_info.info
        strides = [int(f['reduction']) for f in levels]
        take = select_outputs(strides, out_indices, name)
        if max(take) < len(levels) - 1:  # drop the levels past the last output (timm truncates the model)
            body = _create(name, out_indices=tuple(range(max(take) + 1)))
            levels = body.feature_info.info[:max(take) + 1]
        super().__init__(channels=[int(levels[i]['num_chs']) for i in take], strides=[strides[i] for i in take])
        self.name, self.take = name, take
        self.body = body
        self._stage_paths = stage_paths(body, [f['module'] for f in levels])
        self.pretrained_report = load_timm_weights(body, weights, name) if weights else None
        self.freeze(frozen_stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = self.body(x)
        return [outs[i] for i in self.take]

    def stages(self) -> list[nn.Module]:
        """One part per timm feature level (built from paths each call, so module swaps such as SyncBN hold)."""
        if self._stage_paths is None:
            return [self.body]
        return [nn.ModuleList([self.body.get_submodule(p) for p in paths]) for paths in self._stage_paths]

    def no_weight_decay(self) -> set[str]:
        """timm's own rule: no decay on any tensor of one dimension or less (norms, biases, layer scales)."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1}

    @torch.no_grad()
    def fuse(self, exact: bool = False) -> Timm:
        """timm's own re-parameterisation (RepVGG-style blocks), then BN folded into each conv that only feeds it.

        One path only: ``exact`` changes nothing. A model fx cannot trace keeps its BNs (same outputs, a warning).
        """
        was_training = self.training
        self.eval()
        _timm().utils.reparameterize_model(self.body, inplace=True)
        try:
            pairs = conv_bn_pairs(self.body)
        except Exception as e:  # any Python control flow fx cannot follow
            LOGGER.warning(f'WARNING {self.name}: BatchNorm not folded, the model cannot be traced '
                           f'({type(e).__name__}); outputs are unchanged')
            pairs = []
        for conv_path, bn_path in pairs:
            fold_batchnorm(self.body, conv_path, bn_path)
        return self.train(was_training)

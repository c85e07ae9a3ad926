"""The training options, built once: the command line, a dataset's ``train_defaults``, ``opt.yaml`` on ``--resume``
and the ``--evolve`` conventions become one frozen ``TrainOptions`` here, in this order, and nowhere else.

The launcher (utils/engine/launch.py) passes it to the Trainer, which reads it and never changes it; the run
directory (chosen after DDP starts) and each evolution generation's hyperparameters are new copies made with
``dataclasses.replace``. Checkpoints and ``opt.yaml`` store ``TrainOptions.to_dict()``: the same keys, order and plain
values as YOLOv5's ``vars(opt)``, with ``hyp`` as the loaded, unscaled hyperparameters.

Importing this module imports no torch (train.py reads its defaults from here, and ``--help`` stays fast); reading a
checkpoint for ``--resume`` does, when it happens.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from utils.checkpoint.file_kind import export_name
from utils.core.logging import LOGGER
from utils.core.safety import read_yaml
from utils.data.config import ConfigError, find_config, load_hyp

ROOT = Path(__file__).resolve().parents[2]  # the repository root
DEFAULT_CFG = 'models/yolov5-efficientvit.yaml'
DEFAULT_DATA = 'data/shapes.yaml'
DEFAULT_HYP = 'data/hyps/hyp.scratch-low.yaml'
DEFAULT_PROJECT, EVOLVE_PROJECT = str(ROOT / 'runs/train'), str(ROOT / 'runs/evolve')
OPTIMIZERS = ('SGD', 'Adam', 'AdamW')
# YOLOv5 v7.0's defaults for the flags a dataset YAML may recommend other values for (its `train_defaults:` mapping).
YOLOV5_DEFAULTS = {'epochs': 100, 'batch_size': 16, 'imgsz': 640, 'hyp': DEFAULT_HYP, 'patience': 100,
                   'optimizer': 'SGD', 'cache': None}
# Ours, beside them: `time` (hours; see utils/engine/time_budget.py), which a dataset may recommend instead of a fixed
# epoch count. A recommended time applies only when neither --epochs nor --time is given, and never to --evolve.
OUR_DEFAULTS = {'time': None}
TRAIN_DEFAULTS = {**OUR_DEFAULTS, **YOLOV5_DEFAULTS}  # every flag train_defaults may set, and its value otherwise
RECOMMENDABLE = tuple(TRAIN_DEFAULTS)
CACHE_KINDS = ('ram', 'disk', 'val', 'off')  # --cache values; 'off' overrides a dataset's cache recommendation


class TrainError(Exception):
    """A problem with the training options or files; the message is one line."""


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C during the epochs, with a message saying what was saved and how to continue. Still a KeyboardInterrupt,
    so a Python caller's ``except Exception`` does not swallow it; train.py's command line prints the message."""


@dataclass(frozen=True)
class TrainOptions:
    """Every train.py option, resolved: files located, defaults filled, ``hyp`` loaded (read-only). Field order is
    YOLOv5's flag order, then ours (``time``), then ``save_dir``: the key order of ``opt.yaml``."""

    weights: str = ''
    cfg: str = ''
    data: str | Mapping = DEFAULT_DATA
    hyp: Mapping[str, float] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    epochs: int = 100
    batch_size: int = 16
    imgsz: int = 640
    rect: bool = False
    resume: bool | str = False
    nosave: bool = False
    noval: bool = False
    noautoanchor: bool = False
    noplots: bool = False
    evolve: int | None = None
    bucket: str = ''
    cache: str | None = None
    image_weights: bool = False
    device: str = ''
    multi_scale: bool = False
    single_cls: bool = False
    optimizer: str = 'SGD'
    sync_bn: bool = False
    workers: int = 8
    project: str = DEFAULT_PROJECT
    name: str = 'exp'
    exist_ok: bool = False
    quad: bool = False
    cos_lr: bool = False
    label_smoothing: float = 0.0
    patience: int = 100
    freeze: tuple[int, ...] = (0,)
    save_period: int = -1
    seed: int = 0
    no_amp: bool = False
    local_rank: int = -1
    entity: str | None = None
    upload_dataset: bool | str = False
    bbox_interval: int = -1
    artifact_alias: str = 'latest'
    time: float | None = None  # ours: hours; the epoch count is decided after epoch 0 (utils/engine/time_budget.py)
    save_dir: str = ''

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, dicts, str): what ``opt.yaml`` and a checkpoint's ``opt`` hold."""
        return {f.name: plain_data(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def with_run(self, save_dir: str | Path, hyp: Mapping[str, float] | None = None) -> TrainOptions:
        """A copy for one run: its directory and (evolution) its hyperparameters; this object is left as it is."""
        new_hyp = self.hyp if hyp is None else MappingProxyType(dict(hyp))
        return dataclasses.replace(self, save_dir=str(save_dir), hyp=new_hyp)


def plain_data(v: Any) -> Any:
    """``v`` as YAML- and weights_only-safe plain data: Paths -> str, tuples -> lists, mappings -> dicts."""
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [plain_data(x) for x in v]
    if isinstance(v, Mapping):
        return {k: plain_data(x) for k, x in v.items()}
    return v


def save_yaml(file: str | Path, data: Mapping) -> None:
    """Write ``data`` as YAML in its own key order (opt.yaml, hyp.yaml)."""
    with open(file, 'w') as f:
        yaml.safe_dump(plain_data(data), f, sort_keys=False)


FIELDS = tuple(f.name for f in dataclasses.fields(TrainOptions))


# ----------------------------------------------------------------------------------------------------- building
# The steps below take the command line's argparse.Namespace and return a new one; none changes its argument.
def build_options(args: argparse.Namespace | Mapping[str, Any]) -> TrainOptions:
    """THE place options are merged: ``--evolve`` conventions; then, on ``--resume``, the killed run's opt.yaml;
    otherwise the dataset's ``train_defaults`` and YOLOv5's defaults, ``--cfg`` from ``--weights``, the files found.
    Last the hyperparameter file is loaded. Every problem is a one-line TrainError (or the loader's ConfigError)."""
    ns = _copy(args)
    if ns.evolve:
        ns = evolve_options(ns)
    if ns.resume:
        ns = resume_options(ns)
    else:
        ns = check_files(cfg_from_weights(apply_train_defaults(ns)))
        if ns.evolve:
            ns.noval = ns.nosave = True  # YOLOv5: each generation is validated and saved once, at its end
    raw = vars(ns)
    raw['hyp'] = MappingProxyType(anchor_hyp(load_hyp(ns.hyp), ns.noautoanchor and not ns.resume))
    raw['freeze'] = tuple(int(x) for x in ns.freeze or ())
    raw['project'], raw['save_dir'] = str(ns.project), str(getattr(ns, 'save_dir', '') or '')
    if isinstance(ns.data, Path):
        raw['data'] = str(ns.data)
    return TrainOptions(**{k: v for k, v in raw.items() if k in FIELDS})


def anchor_hyp(hyp: Mapping[str, float], noautoanchor: bool) -> dict:
    """``anchors: N`` in a hyp file asks for N anchors per level evolved for the data (YOLOv5), which only AutoAnchor
    does: with --noautoanchor the model would train on placeholder anchors (YOLOv5 does, silently), so the key is
    dropped, with a line saying so, and the model YAML's anchors are kept."""
    hyp = dict(hyp)
    if noautoanchor and hyp.pop('anchors', None) is not None:
        LOGGER.info('hyp: anchors ignored: --noautoanchor keeps the model YAML\'s anchors (AutoAnchor would evolve '
                    'new ones for the data)')
    return hyp


def _copy(args: argparse.Namespace | Mapping[str, Any]) -> argparse.Namespace:
    return argparse.Namespace(**(vars(args) if isinstance(args, argparse.Namespace) else args))


def evolve_options(args: argparse.Namespace) -> argparse.Namespace:
    """YOLOv5's --evolve conventions: the default project becomes runs/evolve, and --resume means "continue the
    evolution in --project/--name" (its evolve.csv seeds the next generations) rather than resuming a checkpoint."""
    ns = _copy(args)
    if ns.project == DEFAULT_PROJECT:
        ns.project = EVOLVE_PROJECT
    ns.exist_ok, ns.resume = bool(ns.exist_ok or ns.resume), False
    return ns


def apply_train_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the flags the user left unset (None): first from the dataset YAML's ``train_defaults:``, then YOLOv5's
    defaults. A dataset can recommend a budget that fits it (the embedded shapes dataset trains in minutes on a CPU at
    a small image size), while every flag given on the command line or to ``run()`` still wins, and a dataset without
    ``train_defaults`` trains with exactly YOLOv5's defaults. A recommended ``time`` yields to an explicit --epochs
    (and to --evolve, whose generations must train alike); an explicit --time with --epochs is an error."""
    ns = _copy(args)
    time_given = getattr(ns, 'time', None) is not None
    if time_given and ns.epochs is not None:
        raise TrainError('give --epochs or --time, not both (--time fixes the epoch count after epoch 0)')
    if time_given and getattr(ns, 'evolve', None):
        raise TrainError('--time cannot be used with --evolve: every generation must train the same epochs; give '
                         '--epochs')
    unset = [k for k in RECOMMENDABLE if getattr(ns, k, None) is None]
    recommended = dataset_train_defaults(ns.data) if unset else {}
    if ns.epochs is not None or getattr(ns, 'evolve', None):
        recommended.pop('time', None)
    used = {k: recommended[k] for k in unset if k in recommended}
    if 'time' in used:
        used.pop('epochs', None)  # kept only as the LR schedule's placeholder until epoch 0 fixes the count
    if used:
        shown = ', '.join(f'{k}={v}' + (' h (epochs decided after epoch 0)' if k == 'time' else '')
                          for k, v in used.items())
        LOGGER.info(f'train: using {ns.data} train_defaults: {shown} (override with the flags)')
    for k in unset:
        setattr(ns, k, recommended.get(k, TRAIN_DEFAULTS[k]))  # 'epochs' beside a 'time': the schedule's placeholder
    if ns.cache == 'off':
        ns.cache = None
    return ns


def dataset_train_defaults(data: str | Path | Mapping) -> dict:
    """The ``train_defaults:`` mapping of a dataset YAML (empty if absent); unknown keys are a one-line error."""
    if isinstance(data, Mapping):
        d = data
    else:
        file = find_config(data, 'data')
        if file is None:
            return {}  # check_dataset reports the missing file with its own message
        try:
            d = read_yaml(file) or {}  # no aliases, bounded size
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f'{file}: cannot read YAML ({e})') from None
    rec = d.get('train_defaults') or {} if isinstance(d, Mapping) else {}
    if not isinstance(rec, Mapping):
        raise TrainError(f'{data}: train_defaults must be a mapping of flag: value')
    bad = sorted(set(rec) - set(RECOMMENDABLE))
    if bad:
        raise TrainError(f"{data}: train_defaults keys {bad} are not allowed; use {', '.join(RECOMMENDABLE)}")
    t = rec.get('time')
    if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0):
        raise TrainError(f'{data}: train_defaults time must be a positive number of hours, got {t!r}')
    if rec.get('optimizer', 'SGD') not in OPTIMIZERS:
        raise TrainError(f"{data}: train_defaults optimizer {rec['optimizer']!r} is not one of {', '.join(OPTIMIZERS)}")
    if rec.get('cache') is not None and rec['cache'] not in CACHE_KINDS:
        raise TrainError(f"{data}: train_defaults cache {rec['cache']!r} is not one of {', '.join(CACHE_KINDS)}")
    return dict(rec)


def cfg_from_weights(args: argparse.Namespace) -> argparse.Namespace:
    """--weights with --cfg left at its default trains the architecture stored in the weights (fine-tuning yolov5s.pt
    stays a yolov5s); an explicit --cfg builds that model and transfers what matches."""
    ns = _copy(args)
    if ns.weights and ns.cfg == DEFAULT_CFG:
        LOGGER.info(f'--cfg not set: using the model YAML stored in {ns.weights}')
        ns.cfg = ''
    return ns


def _check_not_export(w: Path, flag: str) -> None:
    """An exported model holds no training state: say so in one line instead of 'not found' or a pickle error."""
    kind = export_name(w)
    if kind:
        raise TrainError(f'{flag} {w} is {kind}: train.py starts from PyTorch .pt weights (exports run in '
                         'detect.py and val.py)')
    if w.is_dir():
        raise TrainError(f'{flag} {w} is a directory: give a .pt file')


def check_files(args: argparse.Namespace) -> argparse.Namespace:
    """Resolve --cfg/--weights for a new run and check the numbers; every problem is a one-line TrainError."""
    ns = _copy(args)
    if ns.cfg:
        cfg = find_config(ns.cfg, 'models')
        if cfg is None:
            raise TrainError(f'model YAML {ns.cfg} not found')
        ns.cfg = str(cfg)
    if ns.weights:
        w = Path(ns.weights)
        _check_not_export(w, '--weights')
        if not w.is_file():
            raise TrainError(f'weights {ns.weights} not found; nothing is downloaded, give a local .pt file '
                             f"(or --weights '' to train from scratch)")
        ns.weights = str(w.resolve())
    if not (ns.cfg or ns.weights):
        raise TrainError('either --cfg or --weights must be specified')
    for flag, v in (('--epochs', ns.epochs), ('--imgsz', ns.imgsz)):
        if v is not None and v < 1:
            raise TrainError(f'{flag} must be a positive integer, got {v}')
    if ns.batch_size is not None and ns.batch_size != -1 and ns.batch_size < 1:
        raise TrainError(f'--batch-size must be positive, or -1 for AutoBatch; got {ns.batch_size}')
    if ns.evolve is not None and ns.evolve < 1:
        raise TrainError(f'--evolve needs a positive number of generations, got {ns.evolve}')
    return ns


# ----------------------------------------------------------------------------------------------------- --resume
def latest_run(search_dir: str | Path) -> Path:
    """The newest ``last*.pt`` under ``search_dir`` (what a bare ``--resume`` continues)."""
    found = sorted(Path(search_dir).rglob('last*.pt'), key=lambda p: p.stat().st_ctime)
    if not found:
        raise TrainError(f'--resume: no last.pt found under {search_dir}; pass the checkpoint path')
    return found[-1]


def resume_options(args: argparse.Namespace) -> argparse.Namespace:
    """A killed run's options from <run>/opt.yaml (or the checkpoint), --weights pointing at its last.pt."""
    from utils.checkpoint.format import load_checkpoint  # torch: imported when resuming, not with train.py --help
    from utils.checkpoint.resume import saved_options

    resume = args.resume
    last = Path(resume) if isinstance(resume, (str, Path)) else latest_run(args.project)
    _check_not_export(last, '--resume')
    if not last.is_file():
        raise TrainError(f'--resume checkpoint {last} not found')
    ckpt = load_checkpoint(last)
    if ckpt.get('epoch', -1) < 0 or ckpt.get('optimizer') is None:
        raise TrainError(f'{last} training to {ckpt.get("opt", {}).get("epochs", "?")} epochs is finished, nothing '
                         f'to resume. Start a new training without --resume, i.e. python train.py --weights {last}')
    ns = argparse.Namespace(**{**vars(args), **saved_options(last, ckpt, vars(args))})  # checked: kinds, weights
    ns.cfg, ns.weights, ns.resume = '', str(last.resolve()), True
    ns.save_dir = str(last.resolve().parent.parent)  # where the run really is, even if it was moved
    LOGGER.info(f'Resuming training from {last}')
    return ns

"""The training loop (YOLOv5 v7.0 semantics) as a small class: setup, train_one_epoch, validate, save, finish.

``train(opt)`` is what train.py's ``main`` calls: it resolves options (including ``--resume``), joins DDP when the
process was launched by torch.distributed.run, and runs a ``Trainer``.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import random
import time
from copy import deepcopy
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from models.backbone import Backbone
from models.yolo import Model, without_pretrained
from utils import evolve as evolution
from utils import optim
from utils.autoanchor import check_anchors
from utils.autobatch import autobatch
from utils.callbacks import EarlyStopping, RunLogger, plot_evolve, plot_results, progress_header, progress_row
from utils.checkpoint.format import load_checkpoint, save_checkpoint
from utils.checkpoint.model import load_model, saved_options, strip_optimizer, transfer_weights
from utils.core.logging import LOGGER, TQDM_BAR_FORMAT, colorstr, increment_path
from utils.core.torch_utils import de_parallel, init_seeds, select_device, training_memory_format
from utils.data.config import check_dataset, find_config, load_hyp
from utils.data.loader import create_dataloader
from utils.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    check_ddp_options,
    cleanup_distributed,
    dist_info,
    init_distributed,
    wrap_ddp,
    zero_first,
)
from utils.ema import ModelEMA
from utils.ops.loss import ComputeLoss
from utils.ops.metrics import fitness
from utils.viz.charts import plot_labels
from utils.viz.drawing import plot_images

CKPT_FORMAT, CKPT_VERSION = 'yolov5-efficientvit', 1
MAX_GRAD_NORM = 10.0
EMA_ATTRS = ('yaml', 'nc', 'hyp', 'names', 'stride', 'class_weights')


class TrainError(Exception):
    """A problem with the training options or files; the message is one line."""


# ----------------------------------------------------------------------------------------------------- options
def _plain(v):
    """Options as YAML/weights_only-safe plain data (Paths -> str)."""
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def check_options(opt: argparse.Namespace) -> argparse.Namespace:
    """Resolve --cfg/--weights/--hyp for a new run; every problem is a one-line TrainError."""
    if opt.cfg:
        cfg = find_config(opt.cfg, 'models')
        if cfg is None:
            raise TrainError(f'model YAML {opt.cfg} not found')
        opt.cfg = str(cfg)
    if opt.weights:
        w = Path(opt.weights)
        if not w.is_file():
            raise TrainError(f'weights {opt.weights} not found; nothing is downloaded, give a local .pt file '
                             f"(or --weights '' to train from scratch)")
        opt.weights = str(w.resolve())
    if not (opt.cfg or opt.weights):
        raise TrainError('either --cfg or --weights must be specified')
    for flag, v in (('--epochs', opt.epochs), ('--imgsz', opt.imgsz)):
        if v is not None and v < 1:
            raise TrainError(f'{flag} must be a positive integer, got {v}')
    if opt.batch_size is not None and opt.batch_size != -1 and opt.batch_size < 1:
        raise TrainError(f'--batch-size must be positive, or -1 for AutoBatch; got {opt.batch_size}')
    if opt.evolve is not None and opt.evolve < 1:
        raise TrainError(f'--evolve needs a positive number of generations, got {opt.evolve}')
    opt.project, opt.save_dir = str(opt.project), str(getattr(opt, 'save_dir', '') or '')
    return opt


def latest_run(search_dir: str | Path) -> Path:
    """The newest ``last*.pt`` under ``search_dir`` (what a bare ``--resume`` continues)."""
    found = sorted(Path(search_dir).rglob('last*.pt'), key=lambda p: p.stat().st_ctime)
    if not found:
        raise TrainError(f'--resume: no last.pt found under {search_dir}; pass the checkpoint path')
    return found[-1]


def resume_options(opt: argparse.Namespace) -> argparse.Namespace:
    """Reload a killed run's options from <run>/opt.yaml (or the checkpoint) and point --weights at last.pt."""
    last = Path(opt.resume) if isinstance(opt.resume, (str, Path)) else latest_run(opt.project)
    if not last.is_file():
        raise TrainError(f'--resume checkpoint {last} not found')
    ckpt = load_checkpoint(last)
    if ckpt.get('epoch', -1) < 0 or ckpt.get('optimizer') is None:
        raise TrainError(f'{last} training to {ckpt.get("opt", {}).get("epochs", "?")} epochs is finished, nothing '
                         f'to resume. Start a new training without --resume, i.e. python train.py --weights {last}')
    new = argparse.Namespace(**{**vars(opt), **saved_options(last, ckpt, opt)})  # checked: kinds, weights
    new.cfg, new.weights, new.resume = '', str(last.resolve()), True
    new.save_dir = str(last.resolve().parent.parent)  # where the run really is, even if it was moved
    LOGGER.info(f'Resuming training from {last}')
    return new


def check_img_size(imgsz: int, gs: int) -> int:
    """Round imgsz up to a multiple of the grid size gs, at least 2*gs (YOLOv5 prints a warning when it changes)."""
    new = max(math.ceil(imgsz / gs) * gs, 2 * gs)
    if new != imgsz:
        LOGGER.warning(f'WARNING --img-size {imgsz} must be multiple of max stride {gs}, updating to {new}')
    return new


def train(opt: argparse.Namespace) -> Path:
    """Run one training (single process or one DDP rank), or ``--evolve`` generations of them; returns the run dir."""
    info = dist_info()
    if opt.evolve:
        return evolve(opt, info)
    opt = resume_options(opt) if opt.resume else check_options(opt)
    try:
        check_ddp_options(info, opt.batch_size, opt.image_weights)  # --evolve returned above
    except ValueError as e:
        raise TrainError(str(e)) from None
    device = init_distributed(info, select_device(opt.device, opt.batch_size))
    try:
        if not opt.resume:  # rank 0 names the run dir; others use its choice (no race on exp{N})
            name = str(increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok)) if info.is_main else None
            opt.save_dir = broadcast_object(name, info)
        Trainer(opt, device, info).fit()
    finally:
        if info.ddp:
            cleanup_distributed()
    return Path(opt.save_dir)


def evolve(opt: argparse.Namespace, info: DistInfo | None = None) -> Path:
    """``--evolve N``: N trainings in one run dir, each with hyperparameters mutated from the fittest so far.

    As YOLOv5: every generation trains with --noval and --nosave (validated and saved once, at its end), plots are
    off, ``anchors: 3`` joins the evolved keys unless --noautoanchor, and the results go to ``evolve.csv``,
    ``hyp_evolve.yaml`` (the fittest hyperparameters, a complete --hyp file) and ``evolve.png``."""
    info = info or DistInfo()
    opt = check_options(opt)
    try:
        check_ddp_options(info, opt.batch_size, opt.image_weights, evolve=True)
    except ValueError as e:
        raise TrainError(str(e)) from None
    device = select_device(opt.device, opt.batch_size)
    opt.noval, opt.nosave = True, True
    save_dir = Path(increment_path(Path(opt.project) / opt.name, exist_ok=opt.exist_ok))
    save_dir.mkdir(parents=True, exist_ok=True)
    base, meta = _evolution_space(load_hyp(opt.hyp), opt.noautoanchor)
    keys = evolution.evolvable_keys(base, meta)
    csv_file, yaml_file = save_dir / 'evolve.csv', save_dir / 'hyp_evolve.yaml'
    try:
        rows = evolution.read_evolve_csv(csv_file, keys)
    except evolution.EvolveError as e:
        raise TrainError(str(e)) from None
    rng = np.random.default_rng([int(opt.seed), len(rows)])
    prefix = colorstr('evolve: ')
    LOGGER.info(f'{prefix}{opt.evolve} generations of {len(keys)} hyperparameters in {save_dir}'
                + (f' (continuing after {len(rows)} rows of {csv_file.name})' if len(rows) else ''))
    for g in range(opt.evolve):
        hyp = evolution.next_hyp(rows, base, keys, rng, meta)
        run_opt = argparse.Namespace(**{**vars(opt), 'hyp': dict(hyp), 'save_dir': str(save_dir)})
        trainer = Trainer(run_opt, device, info)
        trainer.fit()
        evolution.append_evolve_row(csv_file, keys, trainer.results, hyp)
        rows = evolution.read_evolve_csv(csv_file, keys)
        best, _ = evolution.write_best_hyp(rows, keys, base, yaml_file)
        fit = fitness(rows)
        LOGGER.info(f'{prefix}generation {g + 1}/{opt.evolve} (row {len(rows) - 1}): fitness {fit[-1]:.5g}; '
                    f'best {fit[best]:.5g} at row {best}')
    plot_evolve(csv_file)
    LOGGER.info(f'Hyperparameter evolution finished {opt.evolve} generations\n'
                f"Results saved to {colorstr('bold', str(save_dir))}\n"
                f'Usage example: $ python train.py --hyp {yaml_file}')
    return save_dir


def _evolution_space(hyp: dict, noautoanchor: bool) -> tuple[dict, dict]:
    """YOLOv5: the anchor count (``anchors: 3`` unless the hyp file sets it) is evolved too, except with
    --noautoanchor, where placeholder anchors could not be replaced. Returns (starting hyp, bounds table)."""
    base, meta = dict(hyp), dict(evolution.META)
    if noautoanchor:
        base.pop('anchors', None)
        meta.pop('anchors')
    else:
        base.setdefault('anchors', 3)
    return base, meta


# ----------------------------------------------------------------------------------------------------- trainer
class Trainer:
    """One training run. Everything rank-specific is decided from ``info``; only rank 0 validates/logs/saves."""

    def __init__(self, opt: argparse.Namespace, device: torch.device, info: DistInfo | None = None):
        self.opt, self.device, self.info = opt, device, info or DistInfo()
        self.save_dir = Path(opt.save_dir)
        self.wdir = self.save_dir / 'weights'
        self.last, self.best = self.wdir / 'last.pt', self.wdir / 'best.pt'
        self.epochs, self.start_epoch = opt.epochs, 0
        self.plots = not opt.noplots and not opt.evolve
        self.amp = device.type == 'cuda'  # YOLOv5's check_amp is False on CPU/MPS
        self.memory_format = training_memory_format(device)  # channels-last on CPU (measured faster)
        self.best_fitness = 0.0
        self.results, self.maps = (0.0,) * 7, None  # P, R, mAP50, mAP50-95, val box/obj/cls (kept under --noval)
        self.ema = self.logger = None
        self.last_opt_step = -1  # iteration of the last optimizer step (accumulation counts from it)
        self._warned_val = False

    # ---------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Everything before the first epoch, in YOLOv5's order."""
        opt, main = self.opt, self.info.is_main
        self.hyp = load_hyp(opt.hyp)
        opt.hyp = dict(self.hyp)  # saved in opt.yaml and checkpoints (unscaled)
        if main:
            self.wdir.mkdir(parents=True, exist_ok=True)
            LOGGER.info(colorstr('hyperparameters: ') + ', '.join(f'{k}={v}' for k, v in self.hyp.items()))
            if not opt.resume:
                _yaml_save(self.save_dir / 'hyp.yaml', self.hyp)
                _yaml_save(self.save_dir / 'opt.yaml', _plain(vars(opt)))
        init_seeds(opt.seed + 1 + self.info.rank, deterministic=True)
        with zero_first(self.info):
            self.data = check_dataset(opt.data)
        self.nc = 1 if opt.single_cls else int(self.data['nc'])
        names = self.data['names']
        self.names = {0: 'item'} if opt.single_cls and len(names) != 1 else names
        ckpt = self.build_model()
        self.gs = max(int(self.model.stride.max()), 32)
        self.imgsz = check_img_size(opt.imgsz, self.gs)
        self.batch_size = opt.batch_size
        if opt.batch_size == -1:  # single process only (check_ddp_options refuses it under DDP)
            self.batch_size = autobatch(self.model, self.imgsz, amp=self.amp)
        self.build_data()
        self.build_optimizer()
        if main and not opt.resume:
            self.check_labels_and_anchors()
        if main:
            self.ema = ModelEMA(self.model)
            self.logger = RunLogger(self.save_dir)
        self.stopper = EarlyStopping(patience=opt.patience)
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.amp)
        if opt.resume:
            try:
                self.restore(ckpt)
            except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:  # a damaged train_state
                raise TrainError(f'{opt.weights}: damaged training state ({type(e).__name__}: {e})') from None
        del ckpt
        self.set_model_attributes()
        self.train_model = wrap_ddp(self.model, self.info, self.device, opt.sync_bn)
        self.compute_loss = ComputeLoss(self.model)
        self.nb = len(self.train_loader)
        self.nw = optim.warmup_iterations(self.hyp['warmup_epochs'], self.nb)
        if main:
            LOGGER.info(f'Image sizes {self.imgsz} train, {self.imgsz} val\n'
                        f'Using {self.train_loader.num_workers} dataloader workers\n'
                        f"Logging results to {colorstr('bold', str(self.save_dir))}\n"
                        f'Starting training for {self.epochs} epochs...')

    def build_model(self) -> dict | None:
        """Model from --cfg / --weights (transfer by name and shape) or, on resume, exactly from last.pt."""
        opt, hyp = self.opt, self.hyp
        ckpt = None
        if opt.resume:
            ckpt = load_checkpoint(opt.weights)
            # the checkpoint carries the weights: do not re-read a pretrained backbone file named in the YAML
            model = Model(without_pretrained(ckpt['model_yaml']), ch=3, nc=self.nc, anchors=hyp.get('anchors'),
                          verbose=False)
            model.load_state_dict(ckpt['model'])
        elif opt.weights:
            src = load_model(opt.weights, device='cpu', fuse=False)
            model = Model(opt.cfg or deepcopy(src.yaml), ch=3, nc=self.nc, anchors=hyp.get('anchors'))
            exclude = ['anchor'] if (opt.cfg or hyp.get('anchors')) else []
            transfer_weights(model, src.float().state_dict(), exclude=exclude, source=opt.weights)
            del src
        else:
            model = Model(opt.cfg, ch=3, nc=self.nc, anchors=hyp.get('anchors'), verbose=self.info.is_main)
        self.model = model.to(self.device, memory_format=self.memory_format)
        frozen = self.model.freeze(optim.freeze_indices(opt.freeze))  # on top of the YAML's frozen_stages: the union
        if frozen:
            bb = self.model.model[0]
            LOGGER.info(f'freezing {len(frozen)} parameters (--freeze {opt.freeze}'
                        + (f', backbone frozen_stages {bb.frozen_stages})' if isinstance(bb, Backbone) else ')'))
        return ckpt

    def build_data(self) -> None:
        """Train loader on every rank (distributed sampler in DDP), val loader on rank 0 only."""
        opt, ws = self.opt, self.info.world_size
        self.train_loader, self.dataset = create_dataloader(
            self.data['train'], self.imgsz, self.batch_size // ws, self.gs, opt.single_cls, hyp=self.hyp,
            augment=True, cache=None if opt.cache == 'val' else opt.cache, rect=opt.rect, rank=self.info.local_rank,
            workers=opt.workers, image_weights=opt.image_weights, quad=opt.quad, prefix=colorstr('train: '),
            shuffle=True, seed=opt.seed, nc=self.nc, root=self.data['path'])
        labels = np.concatenate([lb.reshape(-1, 5) for lb in self.dataset.labels], 0)
        if len(labels) and int(labels[:, 0].max()) >= self.nc:
            raise TrainError(f'Label class {int(labels[:, 0].max())} exceeds nc={self.nc} in {opt.data}. '
                             f'Possible class labels are 0-{self.nc - 1}')
        self.labels = labels
        self.val_loader = None
        if self.info.is_main:
            self.val_loader = create_dataloader(
                self.data['val'], self.imgsz, self.batch_size // ws * 2, self.gs, opt.single_cls, hyp=self.hyp,
                cache=None if opt.noval else opt.cache, rect=True, rank=-1, workers=opt.workers * 2, pad=0.5,
                prefix=colorstr('val: '), nc=self.nc, root=self.data['path'])[0]

    def build_optimizer(self) -> None:
        """Nominal-batch accumulation, decay rescaling, the three groups and the per-epoch LambdaLR."""
        opt, hyp = self.opt, self.hyp
        self.nbs = optim.nominal_batch(hyp)
        self.accumulate = optim.accumulate_steps(self.batch_size, self.nbs)
        hyp['weight_decay'] = optim.scaled_weight_decay(hyp['weight_decay'], self.batch_size, self.nbs)
        self.optimizer = optim.build_optimizer(self.model, opt.optimizer, hyp['lr0'], hyp['momentum'],
                                               hyp['weight_decay'], skip_decay=self.model.no_weight_decay())
        self.lf = optim.lr_lambda(self.epochs, hyp['lrf'], opt.cos_lr)
        self.scheduler = optim.build_scheduler(self.optimizer, self.lf)

    def check_labels_and_anchors(self) -> None:
        """Before a new run: labels.jpg and AutoAnchor (unless --noautoanchor); anchors rounded through fp16."""
        if self.plots:
            plot_labels(self.labels, self.names, self.save_dir)
        if not self.opt.noautoanchor:
            check_anchors(self.dataset, model=self.model, thr=self.hyp['anchor_t'], imgsz=self.imgsz)
        frozen = {k: v.clone() for k, v in self.model.state_dict().items() if k in self.model.frozen_state_keys()}
        self.model.half().float()  # pre-reduce anchor precision as YOLOv5 does (rounds every weight through fp16) ...
        self.model.load_state_dict(frozen, strict=False)  # ... except the frozen ones, which stay bit-identical

    def set_model_attributes(self) -> None:
        """YOLOv5 scales the loss gains to the number of layers, classes and image size before the loss is built."""
        hyp, nl = self.hyp, self.model.model[-1].nl
        hyp['box'] *= 3 / nl
        hyp['cls'] *= self.nc / 80 * 3 / nl
        hyp['obj'] *= (self.imgsz / 640) ** 2 * 3 / nl
        hyp['label_smoothing'] = self.opt.label_smoothing
        self.model.nc, self.model.hyp, self.model.names = self.nc, hyp, self.names
        self.model.class_weights = labels_to_class_weights(self.dataset.labels, self.nc).to(self.device) * self.nc

    # ---------------------------------------------------------------------------------------------- resume
    def restore(self, ckpt: dict) -> None:
        """Continue exactly: epoch, optimizer (LRs and momentum buffers), scheduler, EMA + updates, best fitness,
        early-stopping state, AMP scaler and RNG states."""
        self.start_epoch = ckpt['epoch'] + 1
        if self.start_epoch <= 0:
            raise TrainError(f'{self.opt.weights} training to {self.epochs} epochs is finished, nothing to resume')
        self.optimizer.load_state_dict(ckpt['optimizer'])
        self.best_fitness = float(ckpt.get('best_fitness') or 0.0)
        state = ckpt.get('train_state') or {}
        if 'scheduler' in state:
            sched = {k: v for k, v in state['scheduler'].items() if k != 'lr_lambdas'}  # keep this run's lambdas
            self.scheduler.load_state_dict({**self.scheduler.state_dict(), **sched})
        else:
            self.scheduler.last_epoch = self.start_epoch - 1
        if self.ema and ckpt.get('ema') is not None:
            self.ema.ema.load_state_dict(ckpt['ema'])
            self.ema.updates = int(ckpt.get('updates') or 0)
        if 'stopper' in state:
            self.stopper.load_state_dict(state['stopper'])
        if self.amp and state.get('scaler'):
            self.scaler.load_state_dict(state['scaler'])
        self.last_opt_step = int(state.get('last_opt_step', -1))
        if not self.info.ddp:  # one saved RNG state cannot serve several ranks; they keep seed + rank
            _set_rng_state(state.get('rng'), self.train_loader)
        if self.epochs < self.start_epoch:  # asked for fewer epochs than done: fine-tune that many more
            LOGGER.info(f"{self.opt.weights} has been trained for {ckpt['epoch']} epochs. "
                        f'Fine-tuning for {self.epochs} more epochs.')
            self.epochs += ckpt['epoch']
        LOGGER.info(f'Resuming training from {self.opt.weights} from epoch {self.start_epoch} to '
                    f'{self.epochs} total epochs')
        if self.logger:
            self.logger.truncate(self.start_epoch)

    # ---------------------------------------------------------------------------------------------- loop
    def fit(self) -> None:
        """setup -> epochs (train, validate, save) -> finish."""
        self.setup()
        self.t0 = time.time()
        epoch = self.start_epoch - 1
        for epoch in range(self.start_epoch, self.epochs):
            self.train_one_epoch(epoch)
            if self.end_epoch(epoch):
                break
        self.finish(epoch)

    def train_one_epoch(self, epoch: int) -> None:
        """One pass over the train loader with warmup, AMP, accumulation, clipping and EMA."""
        model, main = self.train_model, self.info.is_main
        model.train()
        self._prepare_epoch(epoch)
        self.mloss = torch.zeros(3, device=self.device)
        pbar = enumerate(self.train_loader)
        if main:
            LOGGER.info('\n' + progress_header())
            pbar = tqdm(pbar, total=self.nb, bar_format=TQDM_BAR_FORMAT)
        self.optimizer.zero_grad()
        for i, (imgs, targets, paths, _) in pbar:
            ni = i + self.nb * epoch
            imgs = (imgs.to(self.device, non_blocking=True).float() / 255).contiguous(memory_format=self.memory_format)
            if ni <= self.nw:
                self.accumulate = optim.warmup(self.optimizer, ni, self.nw, epoch, self.lf, self.hyp,
                                               self.batch_size, self.nbs)
            if self.opt.multi_scale:
                imgs = self._multi_scale(imgs)
            with torch.autocast(self.device.type, enabled=self.amp):
                loss, loss_items = self.compute_loss(model(imgs), targets.to(self.device))
                loss = loss * (self.info.world_size if self.info.ddp else 1) * (4 if self.opt.quad else 1)
            self.scaler.scale(loss).backward()
            if ni - self.last_opt_step >= self.accumulate:
                self.optimizer_step()
                self.last_opt_step = ni
            if main:
                self.mloss = (self.mloss * i + loss_items) / (i + 1)
                mem = torch.cuda.memory_reserved() / 1e9 if self.device.type == 'cuda' else 0.0
                pbar.set_description(progress_row(epoch, self.epochs, mem, self.mloss.tolist(), targets.shape[0],
                                                  imgs.shape[-1]))
                if self.plots and ni < 3:
                    plot_images(imgs, targets, paths, self.save_dir / f'train_batch{ni}.jpg', names=self.names)
        self.lr = optim.group_lrs(self.optimizer)
        self.scheduler.step()

    def _prepare_epoch(self, epoch: int) -> None:
        """Per-epoch sampling: image weights (single process) or the distributed sampler's epoch."""
        if self.opt.image_weights and hasattr(self.dataset, 'indices'):
            maps = self.maps if self.maps is not None else np.zeros(self.nc)
            cw = self.model.class_weights.cpu().numpy() * (1 - maps) ** 2 / self.nc
            iw = labels_to_image_weights(self.dataset.labels, self.nc, cw)
            self.dataset.indices = random.choices(range(self.dataset.n), weights=iw, k=self.dataset.n)
        sampler = getattr(self.train_loader, 'sampler', None)
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(epoch)

    def _multi_scale(self, imgs: torch.Tensor) -> torch.Tensor:
        """Resize the batch so its long side is a random multiple of gs in [0.5, 1.5] x imgsz."""
        sz = random.randrange(int(self.imgsz * 0.5), int(self.imgsz * 1.5) + self.gs) // self.gs * self.gs
        sf = sz / max(imgs.shape[2:])
        if sf != 1:
            ns = [math.ceil(x * sf / self.gs) * self.gs for x in imgs.shape[2:]]
            imgs = F.interpolate(imgs, size=ns, mode='bilinear', align_corners=False)
        return imgs

    def optimizer_step(self) -> None:
        """unscale -> clip grad norm 10 -> step -> update scaler -> zero grad -> EMA update."""
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=MAX_GRAD_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        if self.ema:
            self.ema.update(self.model)

    def end_epoch(self, epoch: int) -> bool:
        """Rank 0 validates, logs and saves; every rank learns whether early stopping fired."""
        stop = False
        if self.info.is_main:
            self.ema.update_attr(self.model, include=list(EMA_ATTRS))
            final = epoch + 1 == self.epochs or self.stopper.possible_stop
            if not self.opt.noval or final:
                self.results, self.maps = self.validate(self.ema.ema)
            fi = float(fitness(np.array(self.results).reshape(1, -1))[0])
            stop = self.stopper(epoch, fi)
            self.best_fitness = max(self.best_fitness, fi)
            self.logger.log_epoch(epoch, [*self.mloss.tolist(), *self.results, *self.lr])
            if not self.opt.nosave or final:
                self.save(epoch, fi)
        return bool(broadcast_object(stop, self.info))

    # ---------------------------------------------------------------------------------------------- validation
    def validate(self, model, final: bool = False) -> tuple[tuple, np.ndarray]:
        """THE validation hook: utils.validator.validate (the val.py code path) -> (results(7), per-class maps)."""
        if importlib.util.find_spec('utils.validator') is None:  # before the validator lands: losses-free zeros
            if not self._warned_val:
                LOGGER.warning('WARNING utils.validator not available; validation metrics are reported as 0')
                self._warned_val = True
            return (0.0,) * 7, np.zeros(self.nc)
        from utils.validator import validate
        coco = str(self.opt.data).endswith('coco.yaml')
        results, maps, _ = validate(model, self.val_loader, self.names, compute_loss=self.compute_loss,
                                    half=self.amp, single_cls=self.opt.single_cls, save_dir=self.save_dir,
                                    plots=final and self.plots, verbose=final,
                                    iou_thres=0.65 if final and coco else 0.6, prefix=colorstr('val: '))
        return tuple(float(x) for x in results), np.asarray(maps)

    # ---------------------------------------------------------------------------------------------- saving
    def checkpoint(self, epoch: int) -> dict:
        """Our checkpoint: tensors and plain data only (loads with torch.load(weights_only=True))."""
        model = de_parallel(self.model)
        return {
            'format': CKPT_FORMAT, 'format_version': CKPT_VERSION,
            'model': deepcopy(model.state_dict()), 'ema': deepcopy(self.ema.ema.state_dict()),
            'updates': int(self.ema.updates), 'optimizer': self.optimizer.state_dict(),
            'model_yaml': _plain(model.yaml), 'yaml_file': str(getattr(model, 'yaml_file', '') or ''),
            'names': dict(self.names), 'nc': int(self.nc),
            'epoch': int(epoch), 'best_fitness': float(self.best_fitness), 'opt': _plain(vars(self.opt)),
            'hyp': dict(self.opt.hyp), 'date': datetime.now().isoformat(),
            'train_state': {'scheduler': _plain_sched(self.scheduler.state_dict()),
                            'scaler': self.scaler.state_dict() if self.amp else {},
                            'stopper': self.stopper.state_dict(), 'last_opt_step': int(self.last_opt_step),
                            'rng': _rng_state(self.train_loader)},
        }

    def save(self, epoch: int, fi: float) -> None:
        """last.pt every epoch, best.pt when fitness ties or beats the best, epoch{N}.pt every --save-period."""
        ckpt = self.checkpoint(epoch)
        save_checkpoint(ckpt, self.last)
        if self.best_fitness == fi:
            save_checkpoint(ckpt, self.best)
        if self.opt.save_period > 0 and epoch % self.opt.save_period == 0:
            save_checkpoint(ckpt, self.wdir / f'epoch{epoch}.pt')

    def finish(self, epoch: int) -> None:
        """Strip optimizers from last/best, validate best.pt with plots, draw results.png."""
        if self.info.is_main:
            LOGGER.info(f'\n{epoch - self.start_epoch + 1} epochs completed in '
                        f'{(time.time() - self.t0) / 3600:.3f} hours.')
            for f in (self.last, self.best):
                if f.exists():
                    strip_optimizer(f)
            if self.best.exists() and self.val_loader is not None:
                LOGGER.info(f'\nValidating {self.best}...')
                from utils.checkpoint.model import model_from_checkpoint
                model = model_from_checkpoint(load_checkpoint(self.best)).to(self.device)
                self.validate(model, final=True)
            if self.plots and self.logger.csv.exists():
                plot_results(file=self.logger.csv)
            self.logger.close()
            LOGGER.info(f"Results saved to {colorstr('bold', str(self.save_dir))}")
        barrier(self.info)
        if self.device.type == 'cuda':
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------- helpers
def _yaml_save(file: Path, data: dict) -> None:
    with open(file, 'w') as f:
        yaml.safe_dump(data, f, sort_keys=False)


def _plain_sched(state: dict) -> dict:
    return {k: v for k, v in state.items() if k != 'lr_lambdas'}


def _rng_state(loader=None) -> dict:
    """python / numpy / torch / data-order RNG states as plain data (weights_only-safe): a resumed run with
    --workers 0 then draws exactly what the uninterrupted run would have drawn."""
    np_state = np.random.get_state()
    gen = getattr(loader, 'generator', None)
    return {'python': _plain(random.getstate()), 'numpy': [np_state[0], np_state[1].tolist(), *np_state[2:]],
            'torch': torch.get_rng_state(), 'loader': gen.get_state() if gen is not None else None}


def _set_rng_state(state: dict | None, loader=None) -> None:
    if not state:
        return
    py = state['python']
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state['numpy']
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    torch.set_rng_state(state['torch'])
    gen = getattr(loader, 'generator', None)
    if gen is not None and state.get('loader') is not None:
        gen.set_state(state['loader'])


def labels_to_class_weights(labels: list[np.ndarray], nc: int = 80) -> torch.Tensor:
    """Inverse class frequency (normalised to sum 1) from the training labels; YOLOv5's class_weights."""
    if not labels or not sum(len(lb) for lb in labels):
        return torch.ones(nc) / nc
    classes = np.concatenate([lb.reshape(-1, 5) for lb in labels], 0)[:, 0].astype(int)
    weights = np.bincount(classes, minlength=nc).astype(float)
    weights[weights == 0] = 1  # empty classes count as one
    weights = 1 / weights
    return torch.from_numpy(weights / weights.sum()).float()


def labels_to_image_weights(labels: list[np.ndarray], nc: int, class_weights: np.ndarray) -> np.ndarray:
    """Per-image sampling weight = sum over its labels of the class weight (``--image-weights``)."""
    counts = np.array([np.bincount(lb[:, 0].astype(int), minlength=nc) for lb in labels]).reshape(-1, nc)
    return (class_weights.reshape(1, nc) * counts).sum(1)

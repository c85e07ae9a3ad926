"""The training loop (YOLOv5 v7.0 semantics) as one class: setup, train_one_epoch, end_epoch (validate, log, save),
finish. It reads its ``TrainOptions`` and never changes them; what it derives (image size, batch size, epochs on a
fine-tuning resume, the loss gains) it keeps as its own attributes. The one exception is the decision ``--time``
defers: the epoch count, decided after epoch 0 (and revised if the host's pace changes), goes into a replaced copy of
the options (opt.yaml and checkpoints record it, so ``--resume`` continues the run and ``--epochs N`` repeats it).
Launching it (DDP, run dir, --evolve) is utils/engine/launch.py; the options are built in utils/engine/options.py.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
from copy import deepcopy
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.backbone import Backbone
from models.yolo import Model, without_pretrained
from utils.checkpoint.format import FORMAT, FORMAT_VERSION, copy_checkpoint, load_checkpoint, save_checkpoint
from utils.checkpoint.model import load_model, strip_optimizer, transfer_weights
from utils.core.logging import LOGGER, TQDM_BAR_FORMAT, colorstr
from utils.core.precision import describe as describe_precision
from utils.core.precision import training_autocast_dtype
from utils.core.sizes import check_img_size
from utils.core.torch_utils import de_parallel, init_seeds, out_of_place_for_training, training_memory_format
from utils.data.coco import is_coco
from utils.data.config import check_dataset
from utils.data.loader import create_dataloader
from utils.data.weights import labels_to_class_weights, labels_to_image_weights
from utils.engine import optim
from utils.engine.autoanchor import check_anchors
from utils.engine.autobatch import autobatch
from utils.engine.distributed import DistInfo, barrier, broadcast_object, wrap_ddp, zero_first
from utils.engine.early_stopping import EarlyStopping
from utils.engine.ema import ModelEMA
from utils.engine.evaluator import NOT_EVALUATED, EvalOptions, EvalResults, Evaluator, validate, warm_up
from utils.engine.options import TrainError, TrainInterrupted, TrainOptions, plain_data, save_yaml
from utils.engine.result_plots import plot_results
from utils.engine.runlog import RunLogger, progress_header, progress_row
from utils.engine.time_budget import BudgetDecision, BudgetRevision, EpochTimer, decide_epochs, revise_epochs
from utils.engine.train_state import rng_state, scheduler_state, set_rng_state
from utils.ops.loss import ComputeLoss, LossGains
from utils.viz.charts import plot_labels
from utils.viz.drawing import plot_images
from utils.viz.imagefile import plot_or_warn

MAX_GRAD_NORM = 10.0
EMA_ATTRS = ('yaml', 'nc', 'hyp', 'names', 'stride', 'class_weights')


# ----------------------------------------------------------------------------------------------------- trainer
class Trainer:
    """One training run. Everything rank-specific is decided from ``info``; only rank 0 validates/logs/saves."""

    def __init__(self, options: TrainOptions, device: torch.device, info: DistInfo | None = None):
        self.options, self.device, self.info = options, device, info or DistInfo()
        opt = options
        self.save_dir = Path(opt.save_dir)
        self.wdir = self.save_dir / 'weights'
        self.last, self.best = self.wdir / 'last.pt', self.wdir / 'best.pt'
        self.epochs, self.start_epoch = opt.epochs, 0
        # --time: opt.epochs is the LR schedule's placeholder until epoch 0 has been timed (lf(0) = 1 for any total)
        self.epochs_pending = opt.time is not None and not opt.resume
        self.budgeted = self.epochs_pending  # and revised later if the host's speed moves the end off the budget
        self.t_start = 0.0  # fit() starts the --time clock, before setup
        self.train_s = self.val_s = self.save_s = 0.0  # the last epoch's steady training, validation and save seconds
        self.epoch_starts: dict[int, float] = {}  # --time revisions: when each epoch began
        self.revisions = 0
        self.plots = not opt.noplots and not opt.evolve
        # fp16 AMP on CUDA (YOLOv5), bf16 autocast on CPUs with AMX or AVX-512 BF16 (ours), else float32 / --no-amp
        self.autocast_dtype = training_autocast_dtype(device, enabled=not options.no_amp)
        self.amp = self.autocast_dtype == torch.float16  # CUDA AMP: GradScaler and half-precision validation
        self.memory_format = training_memory_format(device)  # channels-last on CPU (measured faster)
        self.best_fitness = 0.0
        self.results, self.maps = NOT_EVALUATED, None  # kept under --noval until the final epoch
        self.ema = self.logger = None
        self.last_opt_step = -1  # iteration of the last optimizer step (accumulation counts from it)
        self.saved_epoch: int | None = None  # the epoch last.pt holds (for the Ctrl-C message)

    # ---------------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Everything before the first epoch, in YOLOv5's order."""
        opt, main = self.options, self.info.is_main
        self.hyp = dict(opt.hyp)  # this run's copy; the options (saved in opt.yaml and checkpoints) stay unscaled
        if main:
            self.wdir.mkdir(parents=True, exist_ok=True)
            LOGGER.info(colorstr('hyperparameters: ') + ', '.join(f'{k}={v}' for k, v in self.hyp.items()))
            if not opt.resume:
                save_yaml(self.save_dir / 'hyp.yaml', self.hyp)
                save_yaml(self.save_dir / 'opt.yaml', opt.to_dict())
        init_seeds(opt.seed + 1 + self.info.rank, deterministic=True)
        with zero_first(self.info):
            self.data = check_dataset(opt.data)
        self.nc = 1 if opt.single_cls else int(self.data['nc'])
        names = self.data['names']
        self.names = {0: 'item'} if opt.single_cls and len(names) != 1 else names
        ckpt = self.build_model()
        self.gs = max(int(self.model.stride.max()), 32)
        self.imgsz = check_img_size(opt.imgsz, self.gs, floor=2 * self.gs)
        self.batch_size = opt.batch_size
        if opt.batch_size == -1:  # single process only (check_ddp_options refuses it under DDP)
            self.batch_size = autobatch(self.model, self.imgsz, amp=self.amp)
        self.build_data()
        self.build_optimizer()
        if main and not opt.resume:
            self.check_labels_and_anchors()
        if main:
            self.ema = ModelEMA(self.model)  # a copy before the next line: validation runs without autograd, in place
            self.logger = RunLogger(self.save_dir)
        out_of_place_for_training(self.model)
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
        gains = LossGains.scaled(self.hyp, self.model.model[-1].nl, self.nc, self.imgsz)
        self.compute_loss = ComputeLoss(self.model, gains=gains, label_smoothing=opt.label_smoothing)
        self.nb = len(self.train_loader)
        self.nw = optim.warmup_iterations(self.hyp['warmup_epochs'], self.nb)
        if main:
            LOGGER.info(describe_precision(self.autocast_dtype, self.device))
            backbone = self.model.model[0]
            note = backbone.input_size_note(self.imgsz, self.imgsz) if isinstance(backbone, Backbone) else None
            if note:
                LOGGER.info(note)
            LOGGER.info(f'Image sizes {self.imgsz} train, {self.imgsz} val\n'
                        f'Using {self.train_loader.num_workers} dataloader workers\n'
                        f"Logging results to {colorstr('bold', str(self.save_dir))}\n"
                        + (f'Starting training for {opt.time:g} hours (the epoch count is decided after epoch 0)...'
                           if self.epochs_pending else f'Starting training for {self.epochs} epochs...'))

    def build_model(self) -> dict | None:
        """Model from --cfg / --weights (transfer by name and shape) or, on resume, exactly from last.pt."""
        opt, hyp = self.options, self.hyp
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
        flag = f'--freeze {" ".join(map(str, opt.freeze))}'
        if not any(p.requires_grad for p in self.model.parameters()):
            raise TrainError(f'{flag} freezes every layer of the model (0-{len(self.model.model) - 1}): nothing is '
                             'left to train')
        if frozen:
            bb = self.model.model[0]
            LOGGER.info(f'freezing {len(frozen)} parameter tensors ({flag}'
                        + (f', backbone frozen_stages {bb.frozen_stages})' if isinstance(bb, Backbone) else ')'))
        return ckpt

    def build_data(self) -> None:
        """Train loader on every rank (distributed sampler in DDP), val loader on rank 0 only."""
        opt, ws = self.options, self.info.world_size
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
        opt, hyp = self.options, self.hyp
        self.nbs = optim.nominal_batch(hyp)
        self.accumulate = optim.accumulate_steps(self.batch_size, self.nbs)
        weight_decay = optim.scaled_weight_decay(hyp['weight_decay'], self.batch_size, self.nbs)
        self.optimizer = optim.build_optimizer(self.model, opt.optimizer, hyp['lr0'], hyp['momentum'],
                                               weight_decay, skip_decay=self.model.no_weight_decay())
        self.lf = optim.lr_lambda(self.epochs, hyp['lrf'], opt.cos_lr)
        self.scheduler = optim.build_scheduler(self.optimizer, self.lf)

    def check_labels_and_anchors(self) -> None:
        """Before a new run: labels.jpg and AutoAnchor (unless --noautoanchor); anchors rounded through fp16."""
        if self.plots:
            plot_or_warn(plot_labels, self.labels, self.names, self.save_dir)
        if not self.options.noautoanchor:
            check_anchors(self.dataset, model=self.model, thr=self.hyp['anchor_t'], imgsz=self.imgsz,
                          evolve=bool(self.hyp.get('anchors')))  # a hyp's anchors: N built placeholders
        frozen_keys = self.model.frozen_state_keys()  # once: it walks the model (per key: 1.3 s of M0 setup)
        frozen = {k: v.clone() for k, v in self.model.state_dict().items() if k in frozen_keys}
        self.model.half().float()  # pre-reduce anchor precision as YOLOv5 does (rounds every weight through fp16) ...
        self.model.load_state_dict(frozen, strict=False)  # ... except the frozen ones, which stay bit-identical

    def set_model_attributes(self) -> None:
        """What YOLOv5 attaches to the model: nc, hyp (unscaled: the loss scales its gains), names, class weights."""
        self.model.nc, self.model.hyp, self.model.names = self.nc, self.hyp, self.names
        self.model.class_weights = labels_to_class_weights(self.dataset.labels, self.nc).to(self.device) * self.nc

    # ---------------------------------------------------------------------------------------------- resume
    def restore(self, ckpt: dict) -> None:
        """Continue exactly: epoch, optimizer (LRs and momentum buffers), scheduler, EMA + updates, best fitness,
        early-stopping state, AMP scaler and RNG states."""
        self.start_epoch = ckpt['epoch'] + 1
        if self.start_epoch <= 0:
            raise TrainError(f'{self.options.weights} training to {self.epochs} epochs is finished, nothing to resume')
        self.optimizer.load_state_dict(ckpt['optimizer'])
        optim.use_fast_step(self.optimizer)  # the saved groups carry the saving machine's step kernel
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
            set_rng_state(state.get('rng'), self.train_loader)
        if self.epochs < self.start_epoch:  # asked for fewer epochs than done: fine-tune that many more
            LOGGER.info(f"{self.options.weights} has been trained for {ckpt['epoch']} epochs. "
                        f'Fine-tuning for {self.epochs} more epochs.')
            self.epochs += ckpt['epoch']
        LOGGER.info(f'Resuming training from {self.options.weights} from epoch {self.start_epoch} to '
                    f'{self.epochs} total epochs')
        if self.logger:
            self.logger.truncate(self.start_epoch)

    # ---------------------------------------------------------------------------------------------- loop
    def fit(self) -> None:
        """setup -> epochs (train, validate, save) -> finish."""
        self.t_start = time.time()  # --time counts setup too (dataset generation on first use, caching, AutoAnchor)
        self.setup()
        self.t0 = time.time()
        epoch = self.start_epoch - 1
        if self.start_epoch and self.last.is_file():  # --resume: last.pt holds the epoch before this one
            self.saved_epoch = epoch
        try:
            while epoch + 1 < self.epochs:  # not a range: --time sets self.epochs after epoch 0
                epoch += 1
                self.epoch_starts[epoch] = time.time()
                self.train_one_epoch(epoch)
                if self.end_epoch(epoch):
                    break
        except KeyboardInterrupt:  # Ctrl-C: one line saying what is kept, not a traceback from inside a layer
            raise TrainInterrupted(self.interrupted_message(epoch)) from None
        self.finish(epoch)

    def interrupted_message(self, epoch: int) -> str:
        """Where a run stopped by Ctrl-C stands: last.pt is written atomically, so it holds the last saved epoch."""
        if self.saved_epoch is None:
            return f'interrupted in epoch {epoch}; no epoch was saved yet'
        return (f'interrupted in epoch {epoch}; {self.last} holds epoch {self.saved_epoch}. Continue with: python '
                f'train.py --resume {self.last}')

    def train_one_epoch(self, epoch: int) -> None:
        """One pass over the train loader with warmup, AMP, accumulation, clipping and EMA."""
        model, main = self.train_model, self.info.is_main
        timer = EpochTimer(self.nb)
        model.train()
        self._prepare_epoch(epoch)
        self.mloss = torch.zeros(3, device=self.device)
        pbar = enumerate(self.train_loader)
        if main:
            LOGGER.info('\n' + progress_header())
            pbar = tqdm(pbar, total=self.nb, bar_format=TQDM_BAR_FORMAT)
        self.optimizer.zero_grad()
        for i, (imgs, targets, paths, _) in pbar:
            timer.step(i)
            ni = i + self.nb * epoch
            imgs = self.prepare_images(imgs)
            if ni <= self.nw:
                self.accumulate = optim.warmup(self.optimizer, ni, self.nw, epoch, self.lf, self.hyp,
                                               self.batch_size, self.nbs)
            if self.options.multi_scale:
                imgs = self._multi_scale(imgs)
            pred = self.predict(model, imgs)
            with self.autocast():
                loss, loss_items = self.compute_loss(pred, targets.to(self.device))
                loss = loss * (self.info.world_size if self.info.ddp else 1) * (4 if self.options.quad else 1)
            if not self.amp and not bool(torch.isfinite(loss_items).all()):  # AMP: the scaler skips inf steps
                raise TrainError(self.diverged_message(epoch, i, loss_items))
            self.scaler.scale(loss).backward()
            if ni - self.last_opt_step >= self.accumulate:
                self.optimizer_step()
                self.last_opt_step = ni
            if main:
                self.mloss = (self.mloss * i + loss_items) / (i + 1)
                mem = torch.cuda.memory_reserved() / 1e9 if self.device.type == 'cuda' else 0.0
                pbar.set_description(progress_row(epoch, None if self.epochs_pending else self.epochs, mem,
                                                  self.mloss.tolist(), targets.shape[0], imgs.shape[-1]))
                if self.plots and ni < 3:
                    plot_or_warn(plot_images, imgs, targets, paths, self.save_dir / f'train_batch{ni}.jpg',
                                 self.names)
        self.lr = optim.group_lrs(self.optimizer)
        self.scheduler.step()
        self.train_s = timer.steady_s()

    def _prepare_epoch(self, epoch: int) -> None:
        """Per-epoch sampling: image weights (single process) or the distributed sampler's epoch."""
        if self.options.image_weights and hasattr(self.dataset, 'indices'):
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

    def diverged_message(self, epoch: int, batch: int, loss_items: torch.Tensor) -> str:
        """One line for a loss that is no longer finite (YOLOv5 trains on, writing NaN rows and empty weights)."""
        box, obj, cls = (f'{float(x):.4g}' for x in loss_items)
        last = self.save_dir / 'weights/last.pt'
        kept = f'{last} holds the last finished epoch' if last.is_file() else 'no epoch finished, nothing was saved'
        return (f'epoch {epoch}, batch {batch}: training diverged (box {box}, obj {obj}, cls {cls} loss); {kept}. '
                f'Lower lr0 (now {self.hyp["lr0"]:g}) in a copy of the --hyp file')

    def prepare_images(self, imgs: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> float in [0, 1] on the device, in the model's memory format: the layout changes on uint8
        (a quarter of the bytes), then one float conversion keeps it (the same values as converting first)."""
        imgs = imgs.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return imgs.float().div_(255)

    def autocast(self) -> torch.autocast:
        """The training step's autocast (``self.autocast_dtype``; disabled in float32)."""
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def predict(self, model: torch.nn.Module, imgs: torch.Tensor) -> list[torch.Tensor]:
        """The forward pass under the step's autocast. Under bf16, Detect returns float32, so the loss (sigmoids,
        IoUs, BCE) is computed in float32; CUDA keeps YOLOv5's fp16 AMP as it is."""
        with self.autocast():
            return model(imgs)

    def optimizer_step(self) -> None:
        """unscale -> clip grad norm 10 -> step -> update scaler -> zero grad -> EMA update."""
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=MAX_GRAD_NORM, foreach=True)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        if self.ema:
            self.ema.update(self.model)

    def end_epoch(self, epoch: int) -> bool:
        """Rank 0 validates, logs and saves; every rank learns whether early stopping fired."""
        stop, pending = False, self.epochs_pending
        if self.info.is_main:
            self.ema.update_attr(self.model, include=list(EMA_ATTRS))
            if self.budgeted and not pending:
                self.revise_budget(epoch)
            final = not pending and (epoch + 1 == self.epochs or self.stopper.possible_stop)
            if not self.options.noval or final or pending:  # --time: epoch 0's validation is timed even with --noval
                t = time.time()
                model = self.validation_model()
                if pending:  # timed as later epochs will take it, without the first pass's one-off costs
                    w = time.time()
                    warm_up(model, self.val_loader, half=self.amp, bf16=self.validates_in_bf16)
                    t += time.time() - w
                self.results = self.validate(model)
                self.val_s = time.time() - t
                self.maps = self.results.maps
            if pending:
                decision = self.budget_decision()
                self.fix_epochs(decision.epochs)  # before the save, which records the count
                final = epoch + 1 == self.epochs or self.stopper.possible_stop
            fi = self.results.fitness
            stop = self.stopper(epoch, fi)
            self.best_fitness = max(self.best_fitness, fi)
            self.logger.log_epoch(epoch, [*self.mloss.tolist(), *self.results.as_tuple(), *self.lr])
            if not self.options.nosave or final:
                t = time.time()
                self.save(epoch, fi)
                self.save_s = time.time() - t
                if pending:
                    decision = self.count_the_saves(decision, epoch, fi, self.save_s)
            if pending:
                LOGGER.info(colorstr('time: ') + decision.describe(self.options.time))
        stop, epochs = broadcast_object((stop, self.epochs), self.info)
        if self.epochs_pending or epochs != self.epochs:  # DDP: the other ranks take rank 0's decision or revision
            self.fix_epochs(epochs)
        return bool(stop)

    # ---------------------------------------------------------------------------------------------- --time
    def budget_decision(self, save_s: float = 0.0) -> BudgetDecision:
        """The epoch count --time allows, from the setup and epoch 0 just timed (and its save, once measured)."""
        return decide_epochs(self.options.time, time.time() - self.t_start, self.train_s, self.val_s,
                             validate_every_epoch=not self.options.noval, save_s=save_s)

    def count_the_saves(self, decision: BudgetDecision, epoch: int, fi: float, save_s: float) -> BudgetDecision:
        """Decide again with epoch 0's save timed (every epoch writes last.pt, most also best.pt: ~0.5 s of a 15-s
        quick-start epoch); a lower count is fixed and saved again, so last.pt records the count the run trains."""
        again = self.budget_decision(save_s)  # in practice fewer or the same: more time spent, longer epochs
        if again.epochs != decision.epochs:  # the run trains, and last.pt records, the count this returns
            self.fix_epochs(again.epochs)
            self.save(epoch, fi)
        return again

    def revise_budget(self, epoch: int) -> None:
        """--time after epoch 0's decision: a new count when the recent epochs' pace projects the run's end off the
        budget (``time_budget.revise_epochs``), decided before this epoch's validation and save (counted as the last
        ones took) so that an epoch made final is validated and last.pt records the count."""
        now, ahead = time.time(), (0.0 if self.options.noval else self.val_s) + self.save_s
        starts = [self.epoch_starts[e] for e in range(1, epoch + 1)]
        durations = [b - a for a, b in zip(starts, starts[1:])] + [now - starts[-1] + ahead]
        revision = revise_epochs(self.options.time, now - self.t_start + ahead, epoch, self.epochs, durations,
                                 self.val_s)
        if revision:
            self.fix_epochs(revision.new)
            self.revisions += 1
            LOGGER.info(colorstr('time: ') + revision.describe(self.options.time))

    def fix_epochs(self, epochs: int) -> None:
        """Set the epoch count --time deferred: the options copy (opt.yaml, checkpoints), the LR factor (warm-up and
        scheduler) and the LRs of the coming epoch, all as if ``--epochs`` had said so from the start."""
        self.epochs, self.epochs_pending = epochs, False
        self.options = dataclasses.replace(self.options, epochs=epochs)
        self.lf = optim.lr_lambda(epochs, self.hyp['lrf'], self.options.cos_lr)
        optim.reschedule(self.scheduler, self.lf)
        if self.info.is_main:
            save_yaml(self.save_dir / 'opt.yaml', self.options.to_dict())

    # ---------------------------------------------------------------------------------------------- validation
    @property
    def validates_in_bf16(self) -> bool:
        """A run training under bf16 validates its epochs under bf16 (best.pt's final validation: float32)."""
        return self.autocast_dtype == torch.bfloat16

    @torch.no_grad()
    def validation_model(self) -> Model:
        """The model an epoch is validated with: a BN-fused copy of the EMA, as val.py and detect.py run last.pt
        (EfficientViT's fast path). YOLOv5 validates the unfused EMA; the fused copy computes the same function
        (another float summation order) faster: M0 at the quick start's 256-px val batches 6.0 against 8.2 ms of
        inference per image, the copy and fusion 0.08 s, one validation 1.70 against 1.92 s."""
        return deepcopy(self.ema.ema).fuse(verbose=False).eval()

    def validate(self, model, final: bool = False) -> EvalResults:
        """THE validation hook, val.py's code path: the Evaluator with the losses of this run's loss; the final
        validation of best.pt also plots and lists every class (NMS IoU 0.65 on COCO, as YOLOv5). A run training
        under bf16 validates its epochs under bf16 too (as YOLOv5 validates in fp16 under CUDA AMP; a quick-start
        validation in ~0.74x the time), and best.pt in float32, so the final numbers are val.py's."""
        options = EvalOptions(iou_thres=0.65 if final and is_coco(self.data) else 0.6,
                              single_cls=self.options.single_cls, half=self.amp, save_dir=self.save_dir,
                              bf16=self.validates_in_bf16 and not final,
                              plots=final and self.plots, verbose=final, prefix=colorstr('val: '),
                              say_saved=False)  # the trainer's own last line says where results are
        evaluator = Evaluator(self.names, options, dataset=self.val_loader.dataset, compute_loss=self.compute_loss,
                              device=self.device)
        return validate(model, self.val_loader, evaluator)

    # ---------------------------------------------------------------------------------------------- saving
    def checkpoint(self, epoch: int) -> dict:
        """Our checkpoint: tensors and plain data only (loads with torch.load(weights_only=True)). It refers to the
        live tensors (YOLOv5 deep-copies them): write it before training goes on."""
        model = de_parallel(self.model)
        return {
            'format': FORMAT, 'format_version': FORMAT_VERSION,
            'model': model.state_dict(), 'ema': self.ema.ema.state_dict(),  # saved at once: no copies needed
            'updates': int(self.ema.updates), 'optimizer': self.optimizer.state_dict(),
            'model_yaml': plain_data(model.yaml), 'yaml_file': str(getattr(model, 'yaml_file', '') or ''),
            'names': dict(self.names), 'nc': int(self.nc),
            'epoch': int(epoch), 'best_fitness': float(self.best_fitness), 'opt': self.options.to_dict(),
            'hyp': dict(self.options.hyp), 'date': datetime.now().isoformat(),
            'train_state': {'scheduler': scheduler_state(self.scheduler.state_dict()),
                            'scaler': self.scaler.state_dict() if self.amp else {},
                            'stopper': self.stopper.state_dict(), 'last_opt_step': int(self.last_opt_step),
                            'rng': rng_state(self.train_loader)},
        }

    def save(self, epoch: int, fi: float) -> None:
        """last.pt every epoch, best.pt when fitness ties or beats the best, epoch{N}.pt every --save-period."""
        save_checkpoint(self.checkpoint(epoch), self.last)
        self.saved_epoch = epoch
        if self.best_fitness == fi:  # the same bytes: copied, not serialised again
            copy_checkpoint(self.last, self.best)
        if self.options.save_period > 0 and epoch % self.options.save_period == 0:
            copy_checkpoint(self.last, self.wdir / f'epoch{epoch}.pt')

    def finish(self, epoch: int) -> None:
        """Strip optimizers from last/best, validate best.pt with plots, draw results.png."""
        if self.info.is_main:
            LOGGER.info(f'\n{epoch - self.start_epoch + 1} epochs completed in '
                        f'{(time.time() - self.t0) / 3600:.3f} hours.')
            if self.revisions:
                LOGGER.info(colorstr('time: ') + BudgetRevision.summary(self.revisions, self.epochs))
            for f in (self.last, self.best):
                if f.exists():
                    strip_optimizer(f)
            if self.best.exists() and self.val_loader is not None:
                LOGGER.info(f'\nValidating {self.best}...')
                self.validate(load_model(self.best, self.device), final=True)  # fused, as YOLOv5's attempt_load
            if self.plots and self.logger.csv.exists():
                plot_or_warn(plot_results, file=self.logger.csv)
            self.logger.close()
            LOGGER.info(f"Results saved to {colorstr('bold', str(self.save_dir))}")
        barrier(self.info)
        if self.device.type == 'cuda':
            torch.cuda.empty_cache()

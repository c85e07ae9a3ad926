"""Evaluation as one narrow object, as detectron2's DatasetEvaluator: ``Evaluator.reset / process(batch, predictions)
/ evaluate() -> EvalResults``, fed by ``validate(model, dataloader, evaluator)``; val.py and the trainer both use them
(YOLOv5 v7.0 metrics, table, plots and outputs).

Predictions and labels are rescaled to the original image space (utils.ops.postprocess) before matching at the 10 IoU
thresholds 0.50:0.95, so the numbers are comparable with published YOLOv5 results and with pycocotools on the same
predictions. ``EvalOptions.ap_method``: 'coco' (default, project decision) integrates AP as pycocotools does, so a
perfect set scores 1.0; 'interp' is YOLOv5 v7.0's trapezoid (a perfect set scores 0.995).
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from utils.core.logging import LOGGER, TQDM_BAR_FORMAT, colorstr
from utils.core.safety import names_dict
from utils.core.torch_utils import Timer
from utils.data.coco import coco_evaluate, numeric_ids, prediction_records, save_json, yolo_labels_to_coco
from utils.ops.boxes import scale_boxes, xywh2xyxy
from utils.ops.metrics import ConfusionMatrix, ap_per_class, fitness, process_batch
from utils.ops.postprocess import postprocess, write_label_lines
from utils.viz.charts import plot_ap_curves, plot_confusion_matrix
from utils.viz.drawing import output_to_target, plot_images
from utils.viz.imagefile import plot_or_warn

HEADER = ('%22s' + '%11s' * 6) % ('Class', 'Images', 'Instances', 'P', 'R', 'mAP50', 'mAP50-95')
ROW = '%22s' + '%11i' * 2 + '%11.3g' * 4


@dataclass(frozen=True)
class EvalOptions:
    """What to compute and write: val.py's flags (the trainer sets the few it needs)."""

    conf_thres: float = 0.001
    iou_thres: float = 0.6
    max_det: int = 300
    single_cls: bool = False
    half: bool = False  # fp16 autocast for PyTorch models on CUDA
    bf16: bool = False  # bf16 autocast for PyTorch models on the CPU (the trainer's per-epoch validation under bf16)
    augment: bool = False  # test-time augmentation
    save_dir: Path | None = None  # needed by save_txt, save_json and plots
    plots: bool = False
    verbose: bool = False  # per-class rows also when training
    save_txt: bool = False
    save_hybrid: bool = False  # labels + predictions as the txt files (implies save_txt)
    save_conf: bool = False
    save_json: bool = False
    anno_json: Path | None = None  # COCO annotations; None: the dataset's COCO JSON, else built from its labels
    class_map: tuple[int, ...] | None = None  # class index -> COCO category id; None: the COCO JSON's own ids
    json_name: str = ''  # <json_name>_predictions.json
    ap_method: str = 'coco'  # 'coco' (pycocotools' integration) or 'interp' (YOLOv5's)
    prefix: str = ''  # in front of the table header, e.g. 'val: '
    say_saved: bool = True  # end with 'Results saved to <dir>' when files were written (the trainer says it once)

    @property
    def writes_txt(self) -> bool:
        return self.save_txt or self.save_hybrid


@dataclass(frozen=True)
class EvalResults:
    """One evaluation: mean precision, recall, mAP50, mAP50-95, the mean validation losses, per-class mAP50-95 (classes
    without labels get the overall mAP, as YOLOv5) and the ms per image of pre-processing, inference and NMS."""

    precision: float
    recall: float
    map50: float
    map: float
    losses: tuple[float, float, float]  # box, obj, cls
    maps: np.ndarray
    times: tuple[float, float, float]

    def as_tuple(self) -> tuple[float, ...]:
        """YOLOv5's seven numbers (P, R, mAP50, mAP50-95, box, obj, cls loss): the columns of results.csv and
        evolve.csv that a validation fills."""
        return self.precision, self.recall, self.map50, self.map, *self.losses

    @property
    def fitness(self) -> float:
        """best.pt's criterion: 0.1 mAP50 + 0.9 mAP50-95."""
        return float(fitness(np.array(self.as_tuple()).reshape(1, -1))[0])


NOT_EVALUATED = EvalResults(0.0, 0.0, 0.0, 0.0, (0.0, 0.0, 0.0), np.zeros(0), (0.0, 0.0, 0.0))


class StageTimers(NamedTuple):
    """Accumulated time of the three stages the Speed line reports."""

    preprocess: Timer
    inference: Timer
    nms: Timer


class Evaluator:
    """Scores a model's predictions against a dataset's labels, batch by batch.

    ``reset()`` starts over; ``process(batch, predictions)`` takes one batch as the dataloader gives it (images
    already on the device in [0, 1]) and the model's output (predictions, train outputs or None): loss, NMS and
    rescale, matching, txt/json/plot outputs; ``evaluate()`` prints the table and returns ``EvalResults``.
    ``compute_loss`` marks a call from the trainer: losses are averaged, per-class rows (unless verbose) and the
    Speed line are not printed."""

    def __init__(self, names, options: EvalOptions = EvalOptions(), *, dataset=None, compute_loss=None,
                 device: torch.device | str = 'cpu'):
        if (options.writes_txt or options.save_json or options.plots) and options.save_dir is None:
            raise ValueError('Evaluator: save_dir is required for save_txt, save_json and plots')
        self.names, self.options = names_dict(names), options
        self.nc = 1 if options.single_cls else len(self.names)
        self.dataset, self.compute_loss, self.device = dataset, compute_loss, torch.device(device)
        self.training = compute_loss is not None
        self.save_dir = Path(options.save_dir) if options.save_dir is not None else None
        self.numeric_ids = numeric_ids(getattr(dataset, 'im_files', []))
        sources = getattr(dataset, 'annotation_sources', [])
        coco = sources[0] if len(sources) == 1 and sources[0].spec['format'] == 'coco' \
            and len(sources[0].image_ids) == len(dataset.im_files) else None
        self.coco_ids = coco.image_ids if coco else None  # a COCO JSON dataset: its own image and category ids
        self.class_map = options.class_map if options.class_map is not None or not coco else coco.class_map
        self.anno_json = options.anno_json or (Path(coco.spec['annotations']) if coco else None)
        if options.writes_txt:
            (self.save_dir / 'labels').mkdir(parents=True, exist_ok=True)
        self.reset()

    def reset(self) -> None:
        """Forget every processed batch."""
        self.seen, self.batches, self.stats, self.jdict = 0, 0, [], []
        self.iouv = torch.linspace(0.5, 0.95, 10, device=self.device)
        self.loss = torch.zeros(3, device=self.device)
        self.confusion = ConfusionMatrix(nc=self.nc) if self.options.plots else None
        self.timers = StageTimers(Timer(self.device), Timer(self.device), Timer(self.device))
        self.input_shape = (0, 3, 0, 0)  # the Speed line's (batch, 3, h, w)

    # ------------------------------------------------------------------------------------------------ process
    def process(self, batch: tuple, predictions: tuple[torch.Tensor, list | None]) -> None:
        """Score one batch: (images, targets (n, 6) [img, cls, cx, cy, w, h] normalised, paths, shapes)."""
        im, targets, paths, shapes = batch
        pred, train_out = predictions
        o = self.options
        nb, _, height, width = im.shape
        if self.compute_loss is not None and train_out is not None:
            self.loss += self.compute_loss([x.float() for x in train_out], targets)[1].to(self.device)
        targets[:, 2:] *= torch.tensor((width, height, width, height), device=self.device)
        hybrid = [targets[targets[:, 0] == i, 1:] for i in range(nb)] if o.save_hybrid else []
        with self.timers.nms:
            out = postprocess(pred, (height, width), [s[0] for s in shapes], [s[1] for s in shapes],
                              conf_thres=o.conf_thres, iou_thres=o.iou_thres, labels=hybrid, multi_label=True,
                              agnostic=o.single_cls, max_det=o.max_det)
        for si in range(nb):
            labels = targets[targets[:, 0] == si, 1:]
            if self._score_image(out.letterboxed[si], out.detections[si], labels, im[si].shape[1:], shapes[si]):
                self._write_image(out.detections[si].cpu(), paths[si], shapes[si][0])
        if o.plots and self.batches < 3:
            plot_or_warn(plot_images, im, targets, paths, self.save_dir / f'val_batch{self.batches}_labels.jpg',
                         self.names)
            plot_or_warn(plot_images, im, output_to_target(out.letterboxed, max_det=o.max_det), paths,
                         self.save_dir / f'val_batch{self.batches}_pred.jpg', self.names)
        self.batches += 1
        self.input_shape = (max(self.input_shape[0], nb), 3, height, width)

    def _score_image(self, pred: torch.Tensor, predn: torch.Tensor, labels: torch.Tensor, im_hw: Sequence[int],
                     shape: tuple) -> bool:
        """Match one image's detections (``predn`` in original pixels) with its labels at the 10 IoU thresholds and
        record the stats; False when it has no detections."""
        nl, npr = labels.shape[0], pred.shape[0]
        correct = torch.zeros(npr, len(self.iouv), dtype=torch.bool, device=self.device)
        self.seen += 1
        if npr == 0:
            if nl:
                self.stats.append((correct, *torch.zeros((2, 0), device=self.device), labels[:, 0]))
                if self.confusion is not None:
                    self.confusion.process_batch(detections=None, labels=labels[:, 0])
            return False
        if self.options.single_cls:
            pred[:, 5] = predn[:, 5] = 0
        if nl:
            tbox = xywh2xyxy(labels[:, 1:5])
            scale_boxes(im_hw, tbox, shape[0], shape[1])
            labelsn = torch.cat((labels[:, 0:1], tbox), 1)
            correct = process_batch(predn, labelsn, self.iouv)
            if self.confusion is not None:
                self.confusion.process_batch(predn, labelsn)
        self.stats.append((correct, pred[:, 4], pred[:, 5], labels[:, 0]))
        return True

    def _write_image(self, predn: torch.Tensor, path: str, image_hw: Sequence[int]) -> None:
        """--save-txt label lines and --save-json records of one image's detections."""
        o = self.options
        if o.writes_txt:
            write_label_lines(self.save_dir / 'labels' / f'{Path(path).stem}.txt', predn, image_hw, o.save_conf)
        if o.save_json:
            iid = self.coco_ids.get(path) if self.coco_ids else None
            self.jdict += prediction_records(predn.numpy(), path, self.class_map, self.numeric_ids, iid)

    # ------------------------------------------------------------------------------------------------ evaluate
    def evaluate(self) -> EvalResults:
        """AP per class, the table (and Speed line), confusion matrix and PR curves, pycocotools when saving json."""
        o = self.options
        mean, per_class, nt = self._summarise()
        self._print_table(nt, mean, per_class)
        times = tuple(t.t / max(self.seen, 1) * 1e3 for t in self.timers)
        if not self.training:
            size = getattr(self.dataset, 'img_size', None) or max(self.input_shape[2:])
            LOGGER.info(f'Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape '
                        f'{(self.input_shape[0], 3, size, size)}' % times)
        if self.confusion is not None:
            plot_or_warn(plot_confusion_matrix, self.confusion.matrix, self.save_dir / 'confusion_matrix.png',
                         names=list(self.names.values()))
        mp, mr, map50, map_ = (float(x) for x in mean)
        if o.save_json and self.jdict:
            coco = self._coco_eval(mean)
            if coco is not None:
                map_, map50 = coco
        losses = (self.loss.cpu() / max(self.batches, 1)).tolist()
        if o.say_saved and (o.writes_txt or o.save_json or o.plots):
            LOGGER.info(f'Results saved to {colorstr("bold", str(self.save_dir))}')
        return EvalResults(mp, mr, map50, map_, tuple(losses), self._per_class_maps(map_, per_class), times)

    def _summarise(self) -> tuple[tuple, tuple | None, np.ndarray]:
        """ap_per_class over all stats -> (mp, mr, map50, map), per-class arrays, instances per class."""
        stats = [torch.cat(x, 0).cpu().numpy() for x in zip(*self.stats)] if self.stats else []
        nt = np.bincount(stats[3].astype(int), minlength=self.nc) if stats else np.zeros(self.nc, int)
        if stats and stats[0].any():
            result = ap_per_class(*stats, method=self.options.ap_method)
            if self.options.plots:
                plot_or_warn(plot_ap_curves, result.curves, self.save_dir, self.names)
            p, r, ap, ap_class = result.p, result.r, result.ap, result.classes
            ap50, ap = ap[:, 0], ap.mean(1)
            return (p.mean(), r.mean(), ap50.mean(), ap.mean()), (p, r, ap50, ap, ap_class), nt
        return (0.0, 0.0, 0.0, 0.0), None, nt

    def _print_table(self, nt: np.ndarray, mean: tuple, per_class: tuple | None) -> None:
        LOGGER.info(ROW % ('all', self.seen, nt.sum(), *mean))
        if nt.sum() == 0:
            LOGGER.warning('WARNING ⚠️ no labels found in val set, can not compute metrics without labels')
        if (self.options.verbose or (self.nc < 50 and not self.training)) and self.nc > 1 and per_class is not None:
            p, r, ap50, ap, ap_class = per_class
            for i, c in enumerate(ap_class):
                LOGGER.info(ROW % (self.names.get(int(c), str(c)), self.seen, nt[c], p[i], r[i], ap50[i], ap[i]))

    def _per_class_maps(self, map_: float, per_class: tuple | None) -> np.ndarray:
        """Per-class mAP50-95; classes without labels get the overall mAP, as YOLOv5."""
        maps = np.zeros(self.nc) + map_
        if per_class is not None:
            for i, c in enumerate(per_class[4]):
                maps[c] = per_class[3][i]
        return maps

    def _coco_eval(self, mean: tuple) -> tuple[float, float] | None:
        """Write predictions (and, for YOLO-format data, ground truth) as COCO json; pycocotools -> (map, map50)."""
        o, ds = self.options, self.dataset
        pred_json = save_json(self.jdict, self.save_dir / (f'{o.json_name}_predictions.json' if o.json_name
                                                            else 'predictions.json'))
        LOGGER.info(f'\nEvaluating pycocotools mAP... saving {pred_json}...')
        try:
            img_ids, anno_json = None, self.anno_json
            if anno_json is None:
                gt = yolo_labels_to_coco(ds.im_files, ds.labels, ds.shapes, self.names, self.class_map)
                anno_json = save_json(gt, self.save_dir / 'annotations.json')
            elif self.coco_ids:  # the user's COCO file: evaluate only the images that were validated
                img_ids = sorted(set(self.coco_ids.values()), key=str)
            elif o.class_map is not None:  # COCO: evaluate only the images that were validated
                num = numeric_ids(ds.im_files)
                img_ids = sorted({r['image_id'] for r in self.jdict} | {int(Path(f).stem) if num else Path(f).stem
                                                                        for f in ds.im_files})
            cmap, cmap50 = coco_evaluate(anno_json, pred_json, img_ids)
            LOGGER.info(f'pycocotools mAP50 {cmap50:.4g} mAP50-95 {cmap:.4g} | '
                        f'this project mAP50 {mean[2]:.4g} mAP50-95 {mean[3]:.4g}')
            return cmap, cmap50
        except Exception as e:  # pycocotools errors must not lose the project's own metrics
            LOGGER.warning(f'pycocotools unable to run: {e}')
            return None


def _model_device(model) -> torch.device:
    if hasattr(model, 'device'):
        return torch.device(model.device)
    return next(model.parameters()).device


def _autocast_dtype(model, device: torch.device, half: bool, bf16: bool) -> torch.dtype | None:
    """fp16 for ``half`` on CUDA, bf16 for ``bf16`` on the CPU, else None (exported backends: always None)."""
    if getattr(model, 'is_backend', False):
        return None
    if half and device.type == 'cuda':
        return torch.float16
    return torch.bfloat16 if bf16 and device.type == 'cpu' else None


def _forward(model, im: torch.Tensor, augment: bool, dtype: torch.dtype | None) -> tuple[torch.Tensor, list | None]:
    """(pred, train_out or None): eval-mode DetectionModels return a tuple, exported backends a bare tensor."""
    with torch.autocast(im.device.type, dtype=dtype, enabled=dtype is not None):
        out = model(im, augment=augment) if augment else model(im)
    if isinstance(out, (list, tuple)):
        return out[0].float(), (out[1] if len(out) > 1 else None)
    return out.float(), None


@contextlib.contextmanager
def _eval_mode(model):
    """``model`` in eval mode for the block, the caller's train/eval mode restored after it (exported backends have
    no mode)."""
    was_training = getattr(model, 'training', False)
    model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()


@torch.no_grad()
def warm_up(model, dataloader, half: bool = False, bf16: bool = False) -> None:
    """One untimed forward pass over ``dataloader`` (no NMS, no scoring), so that a validation timed after it takes
    as long as later ones. The first pass after training pays one-off costs (the loader's workers starting, memory
    first touched): the quick start's epoch 0 validation took 2.7 s, a second pass right after it 1.6 s."""
    device = _model_device(model)
    dtype = _autocast_dtype(model, device, half, bf16)
    with _eval_mode(model):
        for im, *_ in dataloader:
            _forward(model, im.to(device, non_blocking=True).float() / 255, False, dtype)


@torch.no_grad()
def validate(model, dataloader, evaluator: Evaluator) -> EvalResults:
    """Run ``model`` (DetectionModel or DetectBackend, eval mode for the call) over ``dataloader`` and let
    ``evaluator`` (reset first) score every batch; the caller's train/eval mode is restored."""
    device = _model_device(model)
    evaluator.reset()
    o, t = evaluator.options, evaluator.timers
    dtype = _autocast_dtype(model, device, o.half, o.bf16)
    LOGGER.info(o.prefix + HEADER)
    with _eval_mode(model):
        for im, targets, paths, shapes in tqdm(dataloader, leave=False, bar_format=TQDM_BAR_FORMAT):
            with t.preprocess:
                im = im.to(device, non_blocking=True).float() / 255
                targets = targets.to(device)
            with t.inference:
                predictions = _forward(model, im, o.augment, dtype)
            evaluator.process((im, targets, paths, shapes), predictions)
    return evaluator.evaluate()

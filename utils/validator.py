"""The validation loop shared by val.py and the trainer (YOLOv5 v7.0 metrics, table, plots and outputs).

Predictions and labels are rescaled to the original image space before matching at the 10 IoU thresholds
0.50:0.95, so the numbers are comparable with published YOLOv5 results and with pycocotools on the same predictions.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils.core.logging import LOGGER, TQDM_BAR_FORMAT, colorstr
from utils.data.coco import coco_evaluate, numeric_ids, prediction_records, save_json, yolo_labels_to_coco
from utils.ops.boxes import scale_boxes, xywh2xyxy, xyxy2xywh
from utils.ops.metrics import ConfusionMatrix, ap_per_class, process_batch
from utils.ops.nms import non_max_suppression
from utils.viz.charts import plot_ap_curves, plot_confusion_matrix
from utils.viz.drawing import output_to_target, plot_images

HEADER = ('%22s' + '%11s' * 6) % ('Class', 'Images', 'Instances', 'P', 'R', 'mAP50', 'mAP50-95')
ROW = '%22s' + '%11i' * 2 + '%11.3g' * 4


class Timer:
    """Accumulated wall time of a code block, synchronising CUDA so GPU work is counted where it happens."""

    def __init__(self, device: torch.device):
        self.cuda, self.t = device.type == 'cuda', 0.0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *args):
        if self.cuda:
            torch.cuda.synchronize()
        self.t += time.perf_counter() - self.start


@dataclass
class _State:
    """What the loop accumulates across batches."""

    nc: int
    device: torch.device
    iouv: torch.Tensor
    seen: int = 0
    stats: list = field(default_factory=list)
    jdict: list = field(default_factory=list)
    loss: torch.Tensor | None = None


def _model_device(model) -> torch.device:
    if hasattr(model, 'device'):
        return torch.device(model.device)
    return next(model.parameters()).device


def _forward(model, im: torch.Tensor, augment: bool, half: bool):
    """(pred, train_out or None): eval-mode DetectionModels return a tuple, exported backends a bare tensor."""
    use_amp = half and im.device.type == 'cuda' and not getattr(model, 'is_backend', False)
    with torch.autocast('cuda', enabled=use_amp):
        out = model(im, augment=augment) if augment else model(im)
    if isinstance(out, (list, tuple)):
        return out[0].float(), (out[1] if len(out) > 1 else None)
    return out.float(), None


def _save_txt(predn: torch.Tensor, save_conf: bool, shape: tuple, file: Path) -> None:
    """Append ``cls cx cy w h [conf]`` lines, normalised by the original image size (YOLOv5 ``%g`` format)."""
    gn = torch.tensor(shape, dtype=torch.float32)[[1, 0, 1, 0]]
    with open(file, 'a') as f:
        for *xyxy, conf, cls in predn.tolist():
            xywh = (xyxy2xywh(torch.tensor(xyxy).view(1, 4)) / gn).view(-1).tolist()
            line = (cls, *xywh, conf) if save_conf else (cls, *xywh)
            f.write(('%g ' * len(line)).rstrip() % line + '\n')


def _process_image(st: _State, pred, labels, im_shape, shape0, ratio_pad, single_cls, cm):
    """Rescale one image's predictions and labels to original space, match them and record the stats."""
    nl, npr = labels.shape[0], pred.shape[0]
    correct = torch.zeros(npr, len(st.iouv), dtype=torch.bool, device=st.device)
    st.seen += 1
    if npr == 0:
        if nl:
            st.stats.append((correct, *torch.zeros((2, 0), device=st.device), labels[:, 0]))
            if cm is not None:
                cm.process_batch(detections=None, labels=labels[:, 0])
        return None
    if single_cls:
        pred[:, 5] = 0
    predn = pred.clone()
    scale_boxes(im_shape, predn[:, :4], shape0, ratio_pad)
    if nl:
        tbox = xywh2xyxy(labels[:, 1:5])
        scale_boxes(im_shape, tbox, shape0, ratio_pad)
        labelsn = torch.cat((labels[:, 0:1], tbox), 1)
        correct = process_batch(predn, labelsn, st.iouv)
        if cm is not None:
            cm.process_batch(predn, labelsn)
    st.stats.append((correct, pred[:, 4], pred[:, 5], labels[:, 0]))
    return predn


def _summarise(st: _State, names: dict, plots: bool, save_dir: Path | None, method: str = 'coco'):
    """ap_per_class over all stats -> (mp, mr, map50, map, per-class arrays, instances per class)."""
    stats = [torch.cat(x, 0).cpu().numpy() for x in zip(*st.stats)] if st.stats else []
    nt = np.bincount(stats[3].astype(int), minlength=st.nc) if stats else np.zeros(st.nc, int)
    if stats and stats[0].any():
        result = ap_per_class(*stats, method=method)
        if plots:
            plot_ap_curves(result.curves, save_dir or Path('.'), names)
        _, _, p, r, _, ap, ap_class = result.as_tuple()
        ap50, ap = ap[:, 0], ap.mean(1)
        return (p.mean(), r.mean(), ap50.mean(), ap.mean()), (p, r, ap50, ap, ap_class), nt
    return (0.0, 0.0, 0.0, 0.0), None, nt


def _print_table(seen, nt, mean, per_class, names, nc, verbose, training):
    LOGGER.info(ROW % ('all', seen, nt.sum(), *mean))
    if nt.sum() == 0:
        LOGGER.warning('WARNING ⚠️ no labels found in val set, can not compute metrics without labels')
    if (verbose or (nc < 50 and not training)) and nc > 1 and per_class is not None:
        p, r, ap50, ap, ap_class = per_class
        for i, c in enumerate(ap_class):
            LOGGER.info(ROW % (names.get(int(c), str(c)), seen, nt[c], p[i], r[i], ap50[i], ap[i]))


def _coco_eval(st: _State, dataset, names, save_dir: Path, json_name: str, anno_json, class_map, mean):
    """Write predictions (and, for YOLO-format data, ground truth) as COCO json; pycocotools mAP -> (map, map50)."""
    pred_json = save_json(st.jdict, save_dir / (f'{json_name}_predictions.json' if json_name else 'predictions.json'))
    LOGGER.info(f'\nEvaluating pycocotools mAP... saving {pred_json}...')
    try:
        img_ids = None
        if anno_json is None:
            gt = yolo_labels_to_coco(dataset.im_files, dataset.labels, dataset.shapes, names, class_map)
            anno_json = save_json(gt, save_dir / 'annotations.json')
        elif class_map is not None:  # COCO: evaluate only the images that were validated
            num = numeric_ids(dataset.im_files)
            img_ids = sorted({r['image_id'] for r in st.jdict} | {int(Path(f).stem) if num else Path(f).stem
                                                                   for f in dataset.im_files})
        cmap, cmap50 = coco_evaluate(anno_json, pred_json, img_ids)
        LOGGER.info(f'pycocotools mAP50 {cmap50:.4g} mAP50-95 {cmap:.4g} | '
                    f'this project mAP50 {mean[2]:.4g} mAP50-95 {mean[3]:.4g}')
        return cmap, cmap50
    except Exception as e:  # pycocotools errors must not lose the project's own metrics
        LOGGER.warning(f'pycocotools unable to run: {e}')
        return None


@dataclass
class _Options:
    """validate()'s keyword options, passed down to the per-batch step."""

    conf_thres: float
    iou_thres: float
    max_det: int
    single_cls: bool
    half: bool
    augment: bool
    save_dir: Path | None
    plots: bool
    save_txt: bool
    save_hybrid: bool
    save_conf: bool
    save_json: bool
    class_map: list[int] | None
    numeric_ids: bool = True


def _run_batch(model, batch, batch_i: int, st: _State, o: _Options, names, compute_loss, cm, dt) -> tuple:
    """Forward, loss, NMS, matching and outputs for one batch; returns the batch's input shape."""
    im, targets, paths, shapes = batch
    with dt[0]:
        im = im.to(st.device, non_blocking=True).float() / 255
        targets = targets.to(st.device)
        nb, _, height, width = im.shape
    with dt[1]:
        preds, train_out = _forward(model, im, o.augment, o.half)
    if compute_loss is not None and train_out is not None:
        st.loss += compute_loss([x.float() for x in train_out], targets)[1].to(st.device)
    targets[:, 2:] *= torch.tensor((width, height, width, height), device=st.device)
    lb = [targets[targets[:, 0] == i, 1:] for i in range(nb)] if o.save_hybrid else []
    with dt[2]:
        preds = non_max_suppression(preds, o.conf_thres, o.iou_thres, labels=lb, multi_label=True,
                                    agnostic=o.single_cls, max_det=o.max_det)
    for si, pred in enumerate(preds):
        labels = targets[targets[:, 0] == si, 1:]
        predn = _process_image(st, pred, labels, im[si].shape[1:], shapes[si][0], shapes[si][1], o.single_cls, cm)
        if predn is None:
            continue
        if o.save_txt:
            _save_txt(predn.cpu(), o.save_conf, shapes[si][0], o.save_dir / 'labels' / f'{Path(paths[si]).stem}.txt')
        if o.save_json:
            st.jdict += prediction_records(predn.cpu().numpy(), paths[si], o.class_map, o.numeric_ids)
    if o.plots and batch_i < 3:
        plot_images(im, targets, paths, o.save_dir / f'val_batch{batch_i}_labels.jpg', names)
        plot_images(im, output_to_target(preds, max_det=o.max_det), paths,
                    o.save_dir / f'val_batch{batch_i}_pred.jpg', names)
    return nb, height, width


def _per_class_maps(nc: int, map_: float, per_class) -> np.ndarray:
    """Per-class mAP50-95; classes without labels get the overall mAP, as YOLOv5."""
    maps = np.zeros(nc) + map_
    if per_class is not None:
        for i, c in enumerate(per_class[4]):
            maps[c] = per_class[3][i]
    return maps


@torch.no_grad()
def validate(model, dataloader, names: dict[int, str], *, compute_loss=None, conf_thres: float = 0.001,
             iou_thres: float = 0.6, max_det: int = 300, single_cls: bool = False, half: bool = False,
             augment: bool = False, save_dir: Path | None = None, plots: bool = False, verbose: bool = False,
             save_txt: bool = False, save_hybrid: bool = False, save_conf: bool = False, save_json: bool = False,
             prefix: str = '', anno_json: str | Path | None = None, class_map: list[int] | None = None,
             json_name: str = '', ap_method: str = 'coco') -> tuple[tuple, np.ndarray, tuple]:
    """Validate ``model`` (DetectionModel or DetectBackend) on ``dataloader`` -> (results, maps, times).

    results = (mp, mr, map50, map, box_loss, obj_loss, cls_loss); maps = per-class mAP50-95 (nc,);
    times = (pre-process, inference, NMS) ms per image. ``compute_loss`` marks a call from the trainer
    (losses are averaged, per-class rows and the speed line are not printed). ``class_map`` maps class indices
    to COCO category ids in the json (COCO datasets); ``anno_json`` is a COCO annotation file, else the ground
    truth json is built from the dataset's labels. ``half`` runs CUDA inference under fp16 autocast.
    ``ap_method``: 'coco' (default, project decision) integrates AP as pycocotools does, so a perfect set scores 1.0
    and our numbers agree with pycocotools; 'interp' is YOLOv5 v7.0's trapezoid (a perfect set scores 0.995).
    """
    names = {int(k): v for k, v in (names.items() if isinstance(names, dict) else enumerate(names))}
    training, nc = compute_loss is not None, 1 if single_cls else len(names)
    save_dir = Path(save_dir) if save_dir is not None else None
    o = _Options(conf_thres, iou_thres, max_det, single_cls, half, augment, save_dir, plots,
                 save_txt or save_hybrid, save_hybrid, save_conf, save_json, class_map,
                 numeric_ids(getattr(dataloader.dataset, 'im_files', [])))
    if (o.save_txt or save_json or plots) and save_dir is None:
        raise ValueError('validate: save_dir is required for save_txt, save_json and plots')
    if o.save_txt:
        (save_dir / 'labels').mkdir(parents=True, exist_ok=True)
    device = _model_device(model)
    was_training = getattr(model, 'training', False)
    model.eval()
    st = _State(nc, device, torch.linspace(0.5, 0.95, 10, device=device), loss=torch.zeros(3, device=device))
    cm = ConfusionMatrix(nc=nc) if plots else None
    dt = (Timer(device), Timer(device), Timer(device))
    LOGGER.info(prefix + HEADER)
    shape = (0, 3, 0, 0)
    try:
        for batch_i, batch in enumerate(tqdm(dataloader, leave=False, bar_format=TQDM_BAR_FORMAT)):
            nb, h, w = _run_batch(model, batch, batch_i, st, o, names, compute_loss, cm, dt)
            shape = (getattr(dataloader, 'batch_size', None) or nb, 3, h, w)
    finally:
        if was_training:
            model.train()
    mean, per_class, nt = _summarise(st, names, plots, save_dir, ap_method)
    _print_table(st.seen, nt, mean, per_class, names, nc, verbose, training)
    times = tuple(x.t / max(st.seen, 1) * 1e3 for x in dt)
    if not training:
        size = getattr(dataloader.dataset, 'img_size', None) or max(shape[2:])
        LOGGER.info(f'Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape '
                    f'{(shape[0], 3, size, size)}' % times)
    if cm is not None:
        plot_confusion_matrix(cm.matrix, Path(save_dir) / 'confusion_matrix.png', names=list(names.values()))
    mp, mr, map50, map_ = (float(x) for x in mean)
    if save_json and st.jdict:
        coco = _coco_eval(st, dataloader.dataset, names, save_dir, json_name, anno_json, class_map, mean)
        if coco is not None:
            map_, map50 = coco
    losses = (st.loss.cpu() / max(len(dataloader), 1)).tolist()
    if o.save_txt or save_json or plots:
        LOGGER.info(f'Results saved to {colorstr("bold", str(save_dir))}')
    return (mp, mr, map50, map_, *losses), _per_class_maps(nc, map_, per_class), times

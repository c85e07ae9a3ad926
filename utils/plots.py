"""Drawing and plots: box annotation (OpenCV), batch mosaics, label statistics, training curves, PR/F1/P/R curves,
the confusion matrix and crops, with YOLOv5 v7.0's file names and layouts.

Figures use matplotlib's object API (``matplotlib.figure.Figure`` rendered by Agg), never pyplot: no display, no global
backend switch, nothing kept alive between calls, safe in worker threads.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.core.logging import LOGGER, increment_path
from utils.ops.boxes import clip_boxes, xywh2xyxy, xyxy2xywh
from utils.ops.metrics import fitness, smooth

# YOLOv5's class colour palette (RGB hex)
_PALETTE_HEX = ('FF3838', 'FF9D97', 'FF701F', 'FFB21D', 'CFD231', '48F90A', '92CC17', '3DDB86', '1A9334', '00D4BB',
                '2C99A8', '00C2FF', '344593', '6473FF', '0018EC', '8438FF', '520085', 'CB38FF', 'FF95C8', 'FF37C7')
_PALETTE = tuple(tuple(int(h[i:i + 2], 16) for i in (0, 2, 4)) for h in _PALETTE_HEX)

RESULTS_PANELS = (1, 2, 3, 4, 5, 8, 9, 10, 6, 7)  # results.csv columns shown in the 2x5 grid of results.png


def colors(i: int, bgr: bool = False) -> tuple[int, int, int]:
    """Colour of class ``i`` (cycling through 20), as RGB or BGR."""
    c = _PALETTE[int(i) % len(_PALETTE)]
    return (c[2], c[1], c[0]) if bgr else c


def _figure(*args, **kwargs):
    """A stand-alone matplotlib Figure (Agg), without pyplot's global state."""
    from matplotlib.figure import Figure

    return Figure(*args, **kwargs)


def _names_dict(names) -> dict[int, str]:
    """Class names from a dict {i: name} or a sequence, as a dict."""
    if names is None:
        return {}
    return {int(k): str(v) for k, v in (names.items() if isinstance(names, dict) else enumerate(names))}


def mpl_text(text) -> str:
    """Text for a matplotlib label: ``$`` escaped, so a class named ``$x^$`` is drawn as written instead of being
    parsed as mathtext (which raised ValueError and ended val.py / train.py while plotting)."""
    return str(text).replace('$', r'\$')


def _names_list(names) -> list[str]:
    """Class names from a dict {i: name} or a sequence, as a list of matplotlib-safe labels (see ``mpl_text``)."""
    if names is None:
        return []
    if isinstance(names, dict):
        return [mpl_text(names[k]) for k in sorted(names)]
    return [mpl_text(x) for x in names]


class Annotator:
    """Draws boxes with labels and text onto a uint8 HxWx3 image (in place when it is contiguous)."""

    def __init__(self, im: np.ndarray, line_width: int | None = None, example: str = 'abc'):
        if not isinstance(im, np.ndarray) or im.ndim != 3 or im.dtype != np.uint8:
            raise ValueError('Annotator: image must be a uint8 HxWxC numpy array; '
                             'convert tensors with .permute(1, 2, 0).numpy() first')
        self.im = im if im.flags.c_contiguous else np.ascontiguousarray(im)
        self.lw = line_width or max(round(sum(im.shape) / 2 * 0.003), 2)  # line width grows with image size
        self.example = example

    def _text_size(self, text: str) -> tuple[int, int, int, float]:
        tf = max(self.lw - 1, 1)  # font thickness
        fs = self.lw / 3  # font scale
        (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, fs, tf)
        return w, h, tf, fs

    def box_label(self, box, label: str = '', color=(128, 128, 128), txt_color=None) -> None:
        """Rectangle for ``box`` (xyxy) and, if given, ``label`` on a filled tab above it (inside if no room)."""
        p1, p2 = (int(box[0]), int(box[1])), (int(box[2]), int(box[3]))
        color = tuple(int(c) for c in color)
        cv2.rectangle(self.im, p1, p2, color, thickness=self.lw, lineType=cv2.LINE_AA)
        if not label:
            return
        w, h, tf, fs = self._text_size(label)
        outside = p1[1] - h - 3 >= 0  # room for the tab above the box
        q2 = (p1[0] + w, p1[1] - h - 3 if outside else p1[1] + h + 3)
        cv2.rectangle(self.im, p1, q2, color, -1, cv2.LINE_AA)  # filled
        cv2.putText(self.im, label, (p1[0], p1[1] - 2 if outside else p1[1] + h + 2), cv2.FONT_HERSHEY_SIMPLEX,
                    fs, txt_color or self.text_color(color), thickness=tf, lineType=cv2.LINE_AA)

    @staticmethod
    def text_color(bg) -> tuple[int, int, int]:
        """Black text on light fills, white on dark ones (BT.601 luma; the order RGB/BGR barely matters)."""
        luma = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
        return (0, 0, 0) if luma > 150 else (255, 255, 255)

    def rectangle(self, xy, fill=None, outline=None, width: int = 1) -> None:
        """Plain rectangle (xyxy); ``fill`` fills it, ``outline`` draws the border."""
        p1, p2 = (int(xy[0]), int(xy[1])), (int(xy[2]), int(xy[3]))
        if fill is not None:
            cv2.rectangle(self.im, p1, p2, tuple(int(c) for c in fill), -1)
        if outline is not None:
            cv2.rectangle(self.im, p1, p2, tuple(int(c) for c in outline), width)

    def text(self, xy, text: str, txt_color=(255, 255, 255), anchor: str = 'top') -> None:
        """Text whose top-left (``anchor='top'``) or bottom-left corner is at ``xy``."""
        w, h, tf, fs = self._text_size(text)
        y = int(xy[1]) + h if anchor == 'top' else int(xy[1])
        cv2.putText(self.im, text, (int(xy[0]), y), cv2.FONT_HERSHEY_SIMPLEX, fs, tuple(int(c) for c in txt_color),
                    thickness=tf, lineType=cv2.LINE_AA)

    def result(self) -> np.ndarray:
        """The annotated image."""
        return self.im


def detection_summary(det: torch.Tensor, names: dict) -> str:
    """``2 circles, 1 square, `` as YOLOv5 prints per image (its naive plural: one 's' appended)."""
    s = ''
    for c in det[:, 5].unique():
        n = int((det[:, 5] == c).sum())
        s += f"{n} {names[int(c)]}{'s' * (n > 1)}, "
    return s


def output_to_target(output: list[torch.Tensor], max_det: int = 300) -> np.ndarray:
    """NMS output (per image (n, 6) xyxy conf cls) -> (N, 7) [batch_id, cls, cx, cy, w, h, conf] for plot_images."""
    rows = []
    for i, o in enumerate(output):
        o = torch.as_tensor(o)[:max_det, :6].detach().cpu().float()
        box, conf, cls = o.split((4, 1, 1), 1)
        rows.append(torch.cat((torch.full_like(conf, i), cls, xyxy2xywh(box), conf), 1))
    return torch.cat(rows, 0).numpy() if rows else np.zeros((0, 7), dtype=np.float32)


def _mosaic(images: np.ndarray, ns: int) -> np.ndarray:
    """White (ns*h, ns*w, 3) canvas with the images placed column by column, as YOLOv5 lays them out."""
    _, _, h, w = images.shape
    mosaic = np.full((ns * h, ns * w, 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        x, y = w * (i // ns), h * (i % ns)
        mosaic[y:y + h, x:x + w] = im.transpose(1, 2, 0)
    return mosaic


def plot_images(images, targets, paths=None, fname: str | Path = 'images.jpg', names=None,
                max_size: int = 1920, max_subplots: int = 16) -> Path:
    """Save a mosaic of a batch with its boxes: labels (targets (N, 6) [batch_id, cls, cx, cy, w, h], normalised or
    pixels), or predictions when a 7th conf column is present (drawn only above conf 0.25). Images are RGB (B,3,H,W),
    uint8 or float 0-1; at most ``max_subplots`` images, the mosaic shrunk to fit ``max_size``."""
    images = images.detach().cpu().float().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    targets = targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    targets = targets.reshape(-1, targets.shape[-1] if targets.size else 6)
    if images.size and images.max() <= 1:
        images = images * 255  # de-normalise
    images = images[:max_subplots].clip(0, 255).astype(np.uint8)
    bs, _, h, w = images.shape
    ns = max(math.ceil(bs ** 0.5), 1)  # grid side
    mosaic = _mosaic(images, ns)
    scale = max_size / ns / max(h, w)
    if scale < 1:
        h, w = math.ceil(scale * h), math.ceil(scale * w)
        mosaic = cv2.resize(mosaic, (w * ns, h * ns), interpolation=cv2.INTER_AREA)
    fs = int((h + w) * ns * 0.01)  # font size
    annotator = Annotator(mosaic, line_width=round(fs / 10))
    names = _names_dict(names)
    for i in range(bs):
        x, y = w * (i // ns), h * (i % ns)
        annotator.rectangle([x, y, x + w, y + h], outline=(255, 255, 255), width=2)  # tile border
        if paths is not None and i < len(paths):
            annotator.text((x + 5, y + 5), Path(paths[i]).name[:40], txt_color=(220, 220, 220))
        _draw_targets(annotator, targets[targets[:, 0] == i] if len(targets) else targets, x, y, w, h, scale, names)
    fname = Path(fname)
    fname.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(fname), annotator.result()[..., ::-1])  # RGB -> BGR for OpenCV
    return fname


def _draw_targets(annotator: Annotator, ti: np.ndarray, x: int, y: int, w: int, h: int, scale: float,
                  names: dict[int, str]) -> None:
    """Draw one tile's boxes: labels always, predictions (7 columns) only above conf 0.25."""
    if not len(ti):
        return
    boxes = xywh2xyxy(ti[:, 2:6].astype(np.float64))
    is_labels = ti.shape[1] == 6
    if boxes.max() <= 1.01:  # normalised
        boxes[:, [0, 2]] *= w
        boxes[:, [1, 3]] *= h
    elif scale < 1:  # pixels of the un-shrunk image
        boxes *= scale
    boxes[:, [0, 2]] += x
    boxes[:, [1, 3]] += y
    for j, box in enumerate(boxes.tolist()):
        c = int(ti[j, 1])
        name = names.get(c, str(c))
        if is_labels:
            annotator.box_label(box, name, color=colors(c))
        elif ti[j, 6] > 0.25:
            annotator.box_label(box, f'{name} {ti[j, 6]:.1f}', color=colors(c))


def plot_labels(labels: np.ndarray, names=(), save_dir: str | Path = Path('')) -> Path:
    """labels.jpg: instances per class, boxes drawn at a common centre, centre (x, y) and size (w, h) 2D histograms.

    ``labels`` (n, 5) [cls, cx, cy, w, h] normalised, all the training labels stacked."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, 5)
    names = _names_list(names)
    c, b = labels[:, 0].astype(int), labels[:, 1:]
    nc = max(int(c.max()) + 1 if len(c) else 0, len(names), 1)
    LOGGER.info(f'Plotting labels to {Path(save_dir) / "labels.jpg"}... ')
    fig = _figure(figsize=(8, 8), tight_layout=True)
    ax = fig.subplots(2, 2).ravel()
    counts = np.bincount(c, minlength=nc)
    ax[0].bar(np.arange(nc), counts, width=0.8, color=[np.array(colors(i)) / 255 for i in range(nc)])
    ax[0].set_ylabel('instances')
    if 0 < len(names) < 30:
        ax[0].set_xticks(range(len(names)))
        ax[0].set_xticklabels(names, rotation=90, fontsize=10)
    else:
        ax[0].set_xlabel('classes')
    ax[1].imshow(_boxes_canvas(c, b))
    ax[1].axis('off')
    for a, (i, j, xl, yl) in zip(ax[2:], ((0, 1, 'x', 'y'), (2, 3, 'width', 'height'))):
        if len(b):
            a.hist2d(b[:, i], b[:, j], bins=50, cmap='Blues', cmin=1)
        a.set_xlabel(xl)
        a.set_ylabel(yl)
        a.set_xlim(0, 1)
        a.set_ylim(0, 1)
    for a in ax:
        for s in ('top', 'right', 'left', 'bottom'):
            a.spines[s].set_visible(False)
    f = Path(save_dir) / 'labels.jpg'
    f.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(f, dpi=200)
    return f


def _boxes_canvas(c: np.ndarray, b: np.ndarray, size: int = 1000, n: int = 1000) -> np.ndarray:
    """Up to ``n`` boxes drawn with a common centre on a white canvas: the spread of shapes at a glance."""
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    if len(b):
        wh = b[:n, 2:4]
        xyxy = np.concatenate((0.5 - wh / 2, 0.5 + wh / 2), 1) * size
        for cls, box in zip(c[:n].tolist(), xyxy.round().astype(int).tolist()):
            cv2.rectangle(canvas, tuple(box[:2]), tuple(box[2:]), colors(cls), 1)
    return canvas


def _gaussian_smooth(y: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    """Gaussian filter with mirrored edges (as scipy.ndimage.gaussian_filter1d's default), in numpy."""
    r = int(4 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    yp = np.pad(y, r, mode='symmetric')
    return np.convolve(yp, k / k.sum(), mode='valid')


def read_results_csv(file: str | Path) -> tuple[list[str], np.ndarray]:
    """Column names (stripped) and float values of a YOLOv5 results.csv (fields are padded with spaces)."""
    with open(file, newline='') as f:
        rows = [[x.strip() for x in row] for row in csv.reader(f) if any(x.strip() for x in row)]
    if not rows:
        raise ValueError('empty file')
    header = [x for x in rows[0] if x]
    data = np.array([[float(x) for x in r[:len(header)]] for r in rows[1:]], dtype=np.float64).reshape(-1, len(header))
    return header, data


def plot_results(file: str | Path = 'path/to/results.csv', dir: str | Path = '') -> Path | None:
    """results.png beside ``file``: 2x5 panels (train losses, P, R, val losses, mAPs) with a smoothed dotted line.

    Every ``results*.csv`` in ``dir`` is overlaid when no file is given; a bad file gets a one-line warning."""
    file = Path(file) if file else None
    save_dir = file.parent if file else Path(dir)
    files = [file] if file and file.is_file() else sorted(save_dir.glob('results*.csv'))
    if not files:
        LOGGER.warning(f'WARNING ⚠️ No results.csv files found in {save_dir.resolve()}, nothing to plot.')
        return None
    fig = _figure(figsize=(12, 6), tight_layout=True)
    ax = fig.subplots(2, 5).ravel()
    plotted = False
    for f in files:
        try:
            header, data = read_results_csv(f)
            if data.shape[1] <= max(RESULTS_PANELS):
                raise ValueError(f'expected at least {max(RESULTS_PANELS) + 1} columns, found {data.shape[1]}')
            x = data[:, 0]
            for i, j in enumerate(RESULTS_PANELS):
                y = data[:, j]
                ax[i].plot(x, y, marker='.', label=mpl_text(f.stem), linewidth=2, markersize=8)
                if len(y):
                    ax[i].plot(x, _gaussian_smooth(y), ':', label='smooth', linewidth=2)
                ax[i].set_title(mpl_text(header[j]), fontsize=12)
            plotted = True
        except Exception as e:
            LOGGER.warning(f'WARNING ⚠️ Plotting error for {f}: {e}')
    if plotted:
        ax[1].legend()
    out = save_dir / 'results.png'
    fig.savefig(out, dpi=200)
    return out


def plot_evolve(evolve_csv: str | Path = 'path/to/evolve.csv', n_results: int = 7) -> Path | None:
    """evolve.png beside ``evolve_csv``: one panel per evolved hyperparameter, its value against fitness for every
    generation (coloured by fitness), the fittest generation marked with a black cross and named in the title."""
    file = Path(evolve_csv)
    try:
        keys, data = read_results_csv(file)
    except (OSError, ValueError) as e:
        LOGGER.warning(f'WARNING ⚠️ {file}: cannot plot evolution ({e})')
        return None
    keys, values = keys[n_results:], data[:, n_results:]
    if not len(data) or not keys:
        LOGGER.warning(f'WARNING ⚠️ {file}: no generations to plot')
        return None
    fit = fitness(data)
    best = int(np.argmax(fit))
    cols = min(5, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = _figure(figsize=(2.6 * cols, 2.4 * rows), tight_layout=True)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, k, v in zip(axes, keys, values.T):
        ax.scatter(v, fit, c=fit, cmap='viridis', s=12, alpha=0.8, edgecolors='none')
        ax.plot(v[best], fit[best], 'k+', markersize=15)
        ax.set_title(f'{mpl_text(k)} = {v[best]:.3g}', fontdict={'size': 9})
        ax.tick_params(labelsize=7)
        ax.locator_params(axis='x', nbins=4)
    for ax in axes[::cols]:
        ax.set_ylabel('fitness', fontsize=8)
    for ax in axes[len(keys):]:
        ax.set_axis_off()
    out = file.with_suffix('.png')
    fig.savefig(out, dpi=200)
    LOGGER.info(f'Saved {out}')
    return out


STUDY_PANELS = (('P', 0), ('R', 1), ('mAP@.5', 2), ('mAP@.5:.95', 3), ('t_preprocess (ms/img)', 7),
                ('t_inference (ms/img)', 8), ('t_NMS (ms/img)', 9))


def plot_val_study(files: list[str | Path], sizes: list[int], out: str | Path = 'study.png') -> Path:
    """study.png for ``val.py --task study``: each metric and time against image size, one line per weights file,
    and mAP@.5:.95 against inference time (the speed/accuracy trade-off) in the last panel."""
    fig = _figure(figsize=(14, 6.5), tight_layout=True)
    ax = fig.subplots(2, 4).ravel()
    for f in files:
        y = np.loadtxt(f, ndmin=2)
        label = mpl_text(Path(f).stem.replace('study_', ''))
        for a, (title, j) in zip(ax, STUDY_PANELS):
            a.plot(sizes[:len(y)], y[:, j], '.-', linewidth=2, markersize=8, label=label)
            a.set_title(title)
        ax[-1].plot(y[:, 8], y[:, 3], '.-', linewidth=2, markersize=8, label=label)
    for a in ax[:-1]:
        a.set_xlabel('image size (pixels)')
    ax[-1].set_xlabel('inference (ms/img)')
    ax[-1].set_ylabel('mAP@.5:.95')
    ax[-1].set_title('accuracy vs speed')
    ax[-1].legend(fontsize=8)
    fig.savefig(out, dpi=200)
    LOGGER.info(f'Saved {out}')
    return Path(out)


def feature_visualization(x, module_type: str, stage: int, n: int = 32,
                          save_dir: str | Path = Path('runs/detect/exp')) -> Path | None:
    """``stage{i}_{type}_features.png``: image 0's first ``n`` channels as a grid, 8 per row (YOLOv5 v7.0's
    ``--visualize``), and the whole (C, H, W) map as ``.npy`` beside it. Detect, non-tensor outputs (a backbone's list,
    an empty slot) and maps of one pixel per side are skipped."""
    if 'Detect' in module_type or not isinstance(x, torch.Tensor) or x.dim() != 4 or min(x.shape[2:]) <= 1:
        return None
    maps = x[0].detach().float().cpu().numpy()
    channels = len(maps)
    n = min(n, channels)
    f = Path(save_dir) / f"stage{stage}_{module_type.split('.')[-1]}_features.png"
    cols, rows = min(8, n), math.ceil(n / 8)
    fig = _figure(figsize=(cols, rows), tight_layout=True)
    for i, ax in enumerate(np.atleast_1d(fig.subplots(rows, cols)).ravel()):
        if i < n:
            ax.imshow(maps[i])
        ax.axis('off')
    LOGGER.info(f'Saving {f}... ({n}/{channels})')
    fig.savefig(f, dpi=300, bbox_inches='tight')
    np.save(f.with_suffix('.npy'), maps)
    return f


@contextmanager
def features_saved(model: torch.nn.Module, save_dir: str | Path) -> Iterator[None]:
    """While active, every forward of a DetectionModel saves each layer's output with ``feature_visualization``
    (forward hooks, removed on exit: the model itself is not changed)."""
    def save(mod: torch.nn.Module, args, out) -> None:
        feature_visualization(out, getattr(mod, 'type', type(mod).__name__), mod.i, save_dir=save_dir)

    hooks = [m.register_forward_hook(save) for m in model.model]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def plot_pr_curve(px: np.ndarray, py: np.ndarray, ap: np.ndarray, save_dir: str | Path = Path('pr_curve.png'),
                  names=()) -> Path:
    """Precision-recall curve per class (py (nc, 1000) precision at recall px) and their mean (thick blue)."""
    names = _names_list(names)
    fig = _figure(figsize=(9, 6), tight_layout=True)
    ax = fig.subplots(1, 1)
    py = np.asarray(py).reshape(-1, len(px))
    if 0 < len(names) < 21:  # a legend entry per class
        for i, y in enumerate(py):
            ax.plot(px, y, linewidth=1, label=f'{names[i]} {ap[i, 0]:.3f}')
    else:
        ax.plot(px, py.T, linewidth=1, color='grey')
    map50 = ap[:, 0].mean() if len(ap) else 0.0
    ax.plot(px, py.mean(0) if len(py) else np.zeros_like(px), linewidth=3, color='blue',
            label=f'all classes {map50:.3f} mAP@0.5')
    _finish_axes(ax, 'Recall', 'Precision', 'Precision-Recall Curve')
    fig.savefig(save_dir, dpi=250)
    return Path(save_dir)


def plot_mc_curve(px: np.ndarray, py: np.ndarray, save_dir: str | Path = Path('mc_curve.png'), names=(),
                  xlabel: str = 'Confidence', ylabel: str = 'Metric') -> Path:
    """Metric-vs-confidence curve per class (py (nc, 1000)) and the smoothed class mean with its maximum."""
    names = _names_list(names)
    fig = _figure(figsize=(9, 6), tight_layout=True)
    ax = fig.subplots(1, 1)
    py = np.asarray(py).reshape(-1, len(px))
    if 0 < len(names) < 21:
        for i, y in enumerate(py):
            ax.plot(px, y, linewidth=1, label=f'{names[i]}')
    else:
        ax.plot(px, py.T, linewidth=1, color='grey')
    y = smooth(py.mean(0), 0.05) if len(py) else np.zeros_like(px)
    ax.plot(px, y, linewidth=3, color='blue', label=f'all classes {y.max():.2f} at {px[y.argmax()]:.3f}')
    _finish_axes(ax, xlabel, ylabel, f'{ylabel}-Confidence Curve')
    fig.savefig(save_dir, dpi=250)
    return Path(save_dir)


def _finish_axes(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(bbox_to_anchor=(1.04, 1), loc='upper left')
    ax.set_title(title)


def plot_confusion_matrix(matrix: np.ndarray, file: str | Path, normalize: bool = True, names=()) -> Path:
    """confusion_matrix.png: rows predicted, columns true, background last; cells < 0.005 left blank."""
    nc = matrix.shape[0] - 1
    array = matrix / ((matrix.sum(0).reshape(1, -1) + 1e-9) if normalize else 1)
    array = np.where(array < 0.005, np.nan, array)
    names = _names_list(names)
    ticks = names + ['background'] if 0 < len(names) < 99 and len(names) == nc else None
    fig = _figure(figsize=(12, 9), tight_layout=True)
    ax = fig.subplots(1, 1)
    im = ax.imshow(array, cmap='Blues', vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(im, ax=ax)
    if nc < 30:  # annotate the cells
        for (r, k), v in np.ndenumerate(array):
            if not np.isnan(v):
                ax.text(k, r, f'{v:.2f}' if normalize else f'{v:.0f}', ha='center', va='center', fontsize=8,
                        color='white' if normalize and v > 0.5 else 'black')
    if ticks is not None:
        ax.set_xticks(range(nc + 1), ticks, rotation=90)
        ax.set_yticks(range(nc + 1), ticks)
    ax.set_xlabel('True')
    ax.set_ylabel('Predicted')
    ax.set_title('Confusion Matrix')
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(file, dpi=250)
    return file


def save_one_box(xyxy, im: np.ndarray, file: str | Path = Path('im.jpg'), gain: float = 1.02, pad: int = 10,
                 square: bool = False, BGR: bool = False, save: bool = True) -> np.ndarray:
    """Crop ``xyxy`` from ``im`` enlarged by ``gain`` and ``pad`` pixels; returns the crop in BGR and, with ``save``,
    writes it to ``file`` (numbered if the name is taken). ``BGR`` says the channel order of ``im``."""
    xyxy = torch.as_tensor(np.asarray(xyxy, dtype=np.float64)).view(-1, 4)
    b = xyxy2xywh(xyxy)
    if square:
        b[:, 2:] = b[:, 2:].max(1, keepdim=True)[0]
    b[:, 2:] = b[:, 2:] * gain + pad
    box = clip_boxes(xywh2xyxy(b).long(), im.shape)[0].tolist()
    crop = im[box[1]:box[3], box[0]:box[2], ::(1 if BGR else -1)]
    if save:
        if crop.size == 0:
            LOGGER.warning(f'WARNING ⚠️ save_one_box: empty crop for box {xyxy[0].tolist()}, {file} not written')
            return crop
        file = Path(file)
        file.parent.mkdir(parents=True, exist_ok=True)
        f = increment_path(file).with_suffix('.jpg')
        cv2.imwrite(str(f), np.ascontiguousarray(crop), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return crop

"""Charts with matplotlib: label statistics (``labels.jpg``), training curves (``results.png``), evolution
(``evolve.png``), the val.py study, PR/F1/P/R curves and the confusion matrix, with YOLOv5 v7.0's file names and
layouts. They draw the numbers they are given; reading results files is utils/engine/runlog.py's job, computing the
curves utils/ops/metrics.py's.

Figures use matplotlib's object API (``matplotlib.figure.Figure`` rendered by Agg), never pyplot: no display, no global
backend switch, nothing kept alive between calls, safe in worker threads.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from utils.core.logging import LOGGER
from utils.core.safety import names_dict
from utils.ops.metrics import APCurves, smooth
from utils.viz.drawing import box_shapes_canvas, colors

RESULTS_PANELS = (1, 2, 3, 4, 5, 8, 9, 10, 6, 7)  # results.csv columns shown in the 2x5 grid of results.png


def figure(*args, **kwargs):
    """A stand-alone matplotlib Figure (Agg), without pyplot's global state."""
    from matplotlib.figure import Figure

    return Figure(*args, **kwargs)


def mpl_text(text) -> str:
    """Text for a matplotlib label: ``$`` escaped, so a class named ``$x^$`` is drawn as written instead of being
    parsed as mathtext (which raised ValueError and ended val.py / train.py while plotting)."""
    return str(text).replace('$', r'\$')


def _names_list(names) -> list[str]:
    """Class names from a dict {i: name} or a sequence, as a list of matplotlib-safe labels (see ``mpl_text``)."""
    return [mpl_text(v) for v in names_dict(names).values()]


def plot_labels(labels: np.ndarray, names=(), save_dir: str | Path = Path('')) -> Path:
    """labels.jpg: instances per class, boxes drawn at a common centre, centre (x, y) and size (w, h) 2D histograms.

    ``labels`` (n, 5) [cls, cx, cy, w, h] normalised, all the training labels stacked."""
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, 5)
    names = _names_list(names)
    c, b = labels[:, 0].astype(int), labels[:, 1:]
    nc = max(int(c.max()) + 1 if len(c) else 0, len(names), 1)
    LOGGER.info(f'Plotting labels to {Path(save_dir) / "labels.jpg"}... ')
    fig = figure(figsize=(8, 8), tight_layout=True)
    ax = fig.subplots(2, 2).ravel()
    counts = np.bincount(c, minlength=nc)
    ax[0].bar(np.arange(nc), counts, width=0.8, color=[np.array(colors(i)) / 255 for i in range(nc)])
    ax[0].set_ylabel('instances')
    if 0 < len(names) < 30:
        ax[0].set_xticks(range(len(names)))
        ax[0].set_xticklabels(names, rotation=90, fontsize=10)
    else:
        ax[0].set_xlabel('classes')
    ax[1].imshow(box_shapes_canvas(c, b))
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


def _gaussian_smooth(y: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    """Gaussian filter with mirrored edges (as scipy.ndimage.gaussian_filter1d's default), in numpy."""
    r = int(4 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    yp = np.pad(y, r, mode='symmetric')
    return np.convolve(yp, k / k.sum(), mode='valid')


def results_chart(runs: list[tuple[str, list[str], np.ndarray]], out: str | Path) -> Path:
    """results.png: 2x5 panels (train losses, P, R, val losses, mAPs), one line per run (its label, column names and
    rows as results.csv holds them) with a smoothed dotted line. utils.engine.runlog.plot_results reads the files."""
    fig = figure(figsize=(12, 6), tight_layout=True)
    ax = fig.subplots(2, 5).ravel()
    for label, header, data in runs:
        x = data[:, 0]
        for i, j in enumerate(RESULTS_PANELS):
            y = data[:, j]
            ax[i].plot(x, y, marker='.', label=mpl_text(label), linewidth=2, markersize=8)
            if len(y):
                ax[i].plot(x, _gaussian_smooth(y), ':', label='smooth', linewidth=2)
            ax[i].set_title(mpl_text(header[j]), fontsize=12)
    if runs:
        ax[1].legend()
    fig.savefig(out, dpi=200)
    return Path(out)


def evolution_chart(keys: list[str], values: np.ndarray, fit: np.ndarray, out: str | Path) -> Path:
    """evolve.png: one panel per evolved hyperparameter (``values`` (generations, len(keys))), its value against the
    generation's fitness (coloured by fitness), the fittest generation marked with a black cross and named in the
    title. utils.engine.runlog.plot_evolve reads evolve.csv."""
    best = int(np.argmax(fit))
    cols = min(5, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = figure(figsize=(2.6 * cols, 2.4 * rows), tight_layout=True)
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
    fig.savefig(out, dpi=200)
    return Path(out)


STUDY_PANELS = (('P', 0), ('R', 1), ('mAP@.5', 2), ('mAP@.5:.95', 3), ('t_preprocess (ms/img)', 7),
                ('t_inference (ms/img)', 8), ('t_NMS (ms/img)', 9))


def plot_val_study(files: list[str | Path], sizes: list[int], out: str | Path = 'study.png') -> Path:
    """study.png for ``val.py --task study``: each metric and time against image size, one line per weights file,
    and mAP@.5:.95 against inference time (the speed/accuracy trade-off) in the last panel."""
    fig = figure(figsize=(14, 6.5), tight_layout=True)
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


def plot_pr_curve(px: np.ndarray, py: np.ndarray, ap: np.ndarray, save_dir: str | Path = Path('pr_curve.png'),
                  names=()) -> Path:
    """Precision-recall curve per class (py (nc, 1000) precision at recall px) and their mean (thick blue)."""
    names = _names_list(names)
    fig = figure(figsize=(9, 6), tight_layout=True)
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
    fig = figure(figsize=(9, 6), tight_layout=True)
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
    fig = figure(figsize=(12, 9), tight_layout=True)
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


def plot_ap_curves(curves: APCurves, save_dir: str | Path, names=None, prefix: str = '') -> list[Path]:
    """{prefix}PR_curve.png, F1_curve.png, P_curve.png and R_curve.png from ``ap_per_class``'s curves (nothing when no
    class has labels); legends name only the classes with labels."""
    if not len(curves.classes):
        return []
    names = names_dict(names)
    names = {i: names.get(int(c), str(int(c))) for i, c in enumerate(curves.classes)}
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    px = curves.px
    return [plot_pr_curve(px, curves.precision_at_recall, curves.ap, save_dir / f'{prefix}PR_curve.png', names),
            plot_mc_curve(px, curves.f1, save_dir / f'{prefix}F1_curve.png', names, ylabel='F1'),
            plot_mc_curve(px, curves.precision, save_dir / f'{prefix}P_curve.png', names, ylabel='Precision'),
            plot_mc_curve(px, curves.recall, save_dir / f'{prefix}R_curve.png', names, ylabel='Recall')]

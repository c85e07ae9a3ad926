"""AutoAnchor (YOLOv5 v7.0): check how well the anchors fit the labels and, if badly, evolve new ones.

The fit metric for a label (w, h) and an anchor (aw, ah) is ``min(w/aw, aw/w, h/ah, ah/h)``: the anchor can predict the
label when it exceeds ``1/thr`` (the loss's ``anchor_t``). Best Possible Recall (BPR) is the fraction of labels with
at least one such anchor. Anchors live in Detect in grid units; this module works in pixels at ``imgsz``.
"""
from __future__ import annotations

import inspect

import numpy as np
import torch
from tqdm import tqdm

from models.yolo import check_anchor_order
from utils.core.logging import LOGGER, colorstr
from utils.core.torch_utils import de_parallel

BPR_GOOD = 0.98  # above this the current anchors are kept without searching


def _prefix() -> str:
    return colorstr('AutoAnchor: ')


def _label_wh(dataset, imgsz: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Label widths and heights (n, 2) in pixels once each image's long side is resized to ``imgsz``.

    ``dataset`` needs ``shapes`` (n, 2) image (w, h) and ``labels`` (list of (k, 5) [cls, x, y, w, h] normalised).
    With ``rng`` each image gets a random U(0.9, 1.1) scale, as YOLOv5 does when checking anchors.
    """
    shapes = np.asarray(dataset.shapes, dtype=np.float64).reshape(-1, 2)
    labels = dataset.labels
    if len(shapes) != len(labels):
        raise ValueError(f'AutoAnchor: dataset has {len(shapes)} shapes but {len(labels)} label arrays')
    shapes = imgsz * shapes / shapes.max(1, keepdims=True)
    if rng is not None:
        shapes = shapes * rng.uniform(0.9, 1.1, size=(shapes.shape[0], 1))
    wh = [np.asarray(lb, dtype=np.float64).reshape(-1, 5)[:, 3:5] * s for s, lb in zip(shapes, labels)]
    return np.concatenate(wh, 0) if wh else np.zeros((0, 2))


def _ratio_metric(k: np.ndarray, wh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per label and anchor the worse of the w and h ratios (n, na), and per label the best anchor's value (n,).

    numpy, float32: the evolution calls this 1000 times on small arrays, where torch's per-op overhead dominates.
    """
    with np.errstate(divide='ignore'):  # a zero-sized (placeholder) anchor gives inf, i.e. ratio 0: never a fit
        r = wh[:, None] / k[None]
        x = np.minimum(r, 1 / r).min(2)
    return x, (x.max(1) if x.shape[1] else np.zeros(len(x), x.dtype))


def anchor_metrics(anchors: torch.Tensor | np.ndarray, wh: torch.Tensor | np.ndarray,
                   thr: float = 4.0) -> tuple[float, float]:
    """(BPR, anchors above threshold per label) of pixel anchors (na, 2) for label sizes wh (n, 2)."""
    k = np.asarray(torch.as_tensor(anchors).detach().cpu(), dtype=np.float32).reshape(-1, 2)
    x, best = _ratio_metric(k, np.asarray(wh, dtype=np.float32).reshape(-1, 2))
    if not len(best):
        return 0.0, 0.0
    return float((best > 1 / thr).mean()), float((x > 1 / thr).sum(1).mean())


def check_anchors(dataset, model: torch.nn.Module, thr: float = 4.0, imgsz: int = 640, seed: int = 0,
                  evolve: bool = False) -> float:
    """Log the anchor fit (YOLOv5's AutoAnchor line); if BPR <= 0.98 evolve new anchors and keep them if better
    (always with ``evolve``).

    New anchors are written into ``Detect.anchors`` in grid units (pixels / stride) after the order check. The trainer
    then does ``model.half().float()`` as YOLOv5 does. Returns the BPR of the anchors the model has afterwards.
    ``evolve``: the model holds placeholder anchors (a hyp's ``anchors: N``) that are replaced whatever their fit; the
    log says so instead of calling them a poor fit.
    """
    m = de_parallel(model).model[-1]
    wh = _label_wh(dataset, imgsz, np.random.default_rng(seed))
    stride = m.stride.to(m.anchors.device).view(-1, 1, 1)
    anchors = (m.anchors.clone() * stride).cpu().view(-1, 2)
    bpr, aat = anchor_metrics(anchors, wh, thr)
    if evolve:
        LOGGER.info(f'\n{_prefix()}hyp anchors: {m.anchors.shape[1]}, so {m.anchors.numel() // 2} anchors are evolved '
                    f'for this dataset at {imgsz} px...')
    else:
        s = f'\n{_prefix()}{aat:.2f} anchors/target, {bpr:.3f} Best Possible Recall (BPR). '
        if bpr > BPR_GOOD:
            LOGGER.info(f'{s}Current anchors are a good fit to dataset')
            return bpr
        LOGGER.info(f'{s}Anchors are a poor fit to dataset, attempting to improve...')
    new = kmean_anchors(dataset, n=m.anchors.numel() // 2, img_size=imgsz, thr=thr, gen=1000, verbose=False,
                        seed=seed)
    new_bpr, _ = anchor_metrics(new, wh, thr)
    if evolve or new_bpr > bpr:
        new = torch.tensor(new, device=m.anchors.device).type_as(m.anchors)
        m.anchors[:] = new.clone().view_as(m.anchors)
        check_anchor_order(m)  # on pixel anchors, before the division by stride
        m.anchors /= stride
        LOGGER.info(f'{_prefix()}Done (optional: update model *.yaml to use these anchors in the future)')
        return new_bpr
    LOGGER.info(f'{_prefix()}Done (original anchors better than new anchors, proceeding with original anchors)')
    return bpr


def _kmeans(obs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """scipy's k-means (30 iterations) with a seeded generator, whichever keyword this scipy version uses."""
    from scipy.cluster.vq import kmeans  # lazy: only AutoAnchor needs scipy

    key = 'rng' if 'rng' in inspect.signature(kmeans).parameters else 'seed'
    return kmeans(obs, n, iter=30, **{key: rng})[0]


def _summary(k: np.ndarray, wh0: np.ndarray, thr: float, img_size: int) -> str:
    x, best = _ratio_metric(k.astype(np.float32), wh0)
    bpr, aat = (best > thr).mean(), (x > thr).mean() * len(k)
    past = x[x > thr]
    past_mean = past.mean() if len(past) else 0.0
    return (f'{_prefix()}thr={thr:.2f}: {bpr:.4f} best possible recall, {aat:.2f} anchors past thr\n'
            f'{_prefix()}n={len(k)}, img_size={img_size}, metric_all={x.mean():.3f}/{best.mean():.3f}-mean/best, '
            f'past_thr={past_mean:.3f}-mean: ' + ', '.join(f'{round(a)},{round(b)}' for a, b in k))


def kmean_anchors(dataset, n: int = 9, img_size: int = 640, thr: float = 4.0, gen: int = 1000,
                  verbose: bool = True, seed: int = 0) -> np.ndarray:
    """Anchors (n, 2) in pixels, small to large: k-means on whitened label sizes, then a mutation-only evolution.

    Fitness is the mean over labels of the best anchor's ratio metric, counting only values above ``1/thr``.
    Deterministic for a given ``seed``.
    """
    thr = 1 / thr
    rng = np.random.default_rng(seed)
    wh0 = _label_wh(dataset, img_size)
    tiny = int((wh0 < 3.0).any(1).sum())
    if tiny:
        LOGGER.info(f'{_prefix()}WARNING: Extremely small objects found: {tiny} of {len(wh0)} labels are < 3 pixels')
    wh = wh0[(wh0 >= 2.0).any(1)].astype(np.float32)  # labels with a side of at least 2 px
    k = None
    if 0 < n <= len(wh):
        LOGGER.info(f'{_prefix()}Running kmeans for {n} anchors on {len(wh)} points...')
        s = wh.std(0)
        s[s == 0] = 1.0
        k = _kmeans(wh / s, n, rng) * s
    if k is None or len(k) != n:  # too few labels or duplicated clusters
        LOGGER.info(f'{_prefix()}WARNING: switching strategies from kmeans to random init')
        k = np.sort(rng.random(n * 2)).reshape(n, 2) * img_size
    wh0 = wh0.astype(np.float32)

    def fitness(anchors: np.ndarray) -> float:
        _, best = _ratio_metric(anchors.astype(np.float32), wh)
        return float((best * (best > thr)).mean()) if len(best) else 0.0

    k = k[np.argsort(k.prod(1))]
    if verbose:
        LOGGER.info(_summary(k, wh0, thr, img_size))
    f, shape, mp, sigma = fitness(k), k.shape, 0.9, 0.1  # fitness, mutation probability, sigma
    pbar = tqdm(range(gen), desc=f'{_prefix()}Evolving anchors with Genetic Algorithm')
    for _ in pbar:
        v = np.ones(shape)
        while (v == 1).all():  # mutate until something changes
            v = ((rng.random(shape) < mp) * rng.random() * rng.standard_normal(shape) * sigma + 1).clip(0.3, 3.0)
        kg = (k * v).clip(min=2.0)
        fg = fitness(kg)
        if fg > f:
            f, k = fg, kg.copy()
            pbar.desc = f'{_prefix()}Evolving anchors with Genetic Algorithm: fitness = {f:.4f}'
    k = k[np.argsort(k.prod(1))]
    LOGGER.info(_summary(k, wh0, thr, img_size))
    return k.astype(np.float32)

"""The training/validation dataset: YOLO-format images and labels, cached images, rect batches and augmentation.

The label scan and its ``.cache`` are in utils/data/label_cache.py, the loader in utils/data/loader.py, the one image
reader in utils/data/images.py.

Semantics follow YOLOv5 v7.0 (labels found by the ``/images/`` -> ``/labels/`` rule, the scan summary line, mosaic,
rect batches, ``--cache ram|disk``, quad collate). Differences, on purpose:
- the label cache is an ``.npz`` of plain arrays loaded with ``allow_pickle=False`` (never unpickled), and its hash
  covers every file's path, size and mtime (YOLOv5 hashed only the total size, so edits of equal size went unseen);
- images are decoded once during the scan, so undecodable files are caught there, not mid-epoch;
- images are read with ``np.fromfile`` + ``cv2.imdecode`` (non-ASCII paths work) as 3-channel uint8 BGR, upright,
  after their header is checked against the pixel limit (utils.data.images.read_image);
- the scan never rewrites a file of the dataset, and the ``.cache`` is written only inside the dataset root;
- label rows with class >= ``nc`` are dropped with a warning instead of aborting training;
- the stats partition the images: found (with boxes) + missing + empty + corrupt == total.
"""
from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.pool import ThreadPool
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from utils.core.logging import LOGGER, TQDM_BAR_FORMAT
from utils.data import formats
from utils.data.augmentations import augment_hsv, build_mosaic, copy_paste, letterbox, mixup, random_perspective
from utils.data.coco_json import AnnotationError
from utils.data.config import IMG_FORMATS, DatasetError, image_files_in, load_hyp
from utils.data.images import read_image
from utils.data.label_cache import cache_path_for, io_threads, load_or_scan
from utils.ops.boxes import xywhn2xyxy, xyxy2xywhn


def img2label_paths(img_paths: list[str]) -> list[str]:
    """Label path of each image: the LAST ``/images/`` component becomes ``/labels/`` and the suffix ``.txt``."""
    sa, sb = f'{os.sep}images{os.sep}', f'{os.sep}labels{os.sep}'
    return [os.path.splitext(sb.join(str(x).rsplit(sa, 1)))[0] + '.txt' for x in img_paths]


def _list_images(path: str | Path | list, prefix: str) -> list[str]:
    files = []
    for p in path if isinstance(path, (list, tuple)) else [path]:
        p = Path(p)
        if not p.exists():
            raise DatasetError(f'{prefix}{p} does not exist')
        files += [str(f) for f in image_files_in(p)]
    if not files:
        raise DatasetError(f'{prefix}No images found in {path} (formats: {", ".join(IMG_FORMATS)})')
    return sorted(files)


def _with_prefix(msg: str, prefix: str) -> str:
    """A cached scan warning under this loader's prefix: the cache keeps the prefix of the loader that scanned it, so
    a val loader reading the train split's cache said ``train: WARNING ...`` (as YOLOv5 does)."""
    i = msg.find('WARNING ⚠️')
    return prefix + msg[i:] if i >= 0 else msg


def _available_ram() -> int | None:
    try:
        with open('/proc/meminfo') as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith('MemAvailable'))
    except (OSError, StopIteration, ValueError):
        return None


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Python's and numpy's global RNGs seeded with ``seed`` inside the block and given back unchanged after it (the
    augmentations draw from the global RNGs; the caller's own draws, e.g. multi-scale, must not shift)."""
    py, npy = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


class LoadImagesAndLabels(Dataset):
    """YOLO-format dataset: verified labels (cached), optional RAM/disk image cache, rect batches and augmentation.

    ``__getitem__`` returns (img uint8 (3,H,W) RGB, labels (n,6) [0, cls, cx, cy, w, h] normalised, path, shapes)
    with ``shapes = ((h0, w0), ((h/h0, w/w0), (padw, padh)))``, or None for mosaics. ``stats``: found (label file
    with boxes), missing / empty (background images), corrupt (skipped), total, cls_removed (rows with class >= nc).
    """

    def __init__(self, path: str | Path | list, img_size: int = 640, batch_size: int = 16, augment: bool = False,
                 hyp: dict | None = None, rect: bool = False, image_weights: bool = False,
                 cache_images: str | bool | None = False, single_cls: bool = False, stride: int = 32,
                 pad: float = 0.0, prefix: str = '', nc: int | None = None, verbose: bool = True,
                 root: str | Path | None = None):
        self.img_size, self.augment, self.image_weights = img_size, augment, image_weights
        self.hyp = (load_hyp(hyp) if hyp is not None else load_hyp('hyp.scratch-low.yaml')) if augment else hyp
        self.rect = False if image_weights else rect
        self.mosaic = augment and not self.rect  # load 4 images at a time into a mosaic (training only)
        self.mosaic_border = [-img_size // 2, -img_size // 2]
        self.stride, self.path, self.prefix = stride, path, prefix
        self.verbose = verbose
        cache = self._load_labels(path, prefix, root)  # root: the YAML's path:, bounds where caches are written
        nf, nm, ne, ncor, total = (int(v) for v in cache['results'])
        self.stats = dict(found=nf, missing=nm, empty=ne, corrupt=ncor, total=total, cls_removed=0)
        self.msgs = [_with_prefix(m, prefix) for m in cache['msgs']]
        for m in self.msgs if verbose else ():
            LOGGER.warning(m)
        self.im_files = list(cache['im_files'])
        if not self.im_files:
            raise DatasetError(f'{prefix}No usable images in {path}: all {total} corrupt (see warnings above)')
        if augment and nf == 0:
            raise DatasetError(f'{prefix}No labels found in {self.cache_path}, can not start training')
        self.label_files = list(cache['label_files'])
        self.labels = [np.asarray(lb, np.float32).reshape(-1, 5) for lb in cache['labels']]
        self.shapes = np.asarray(cache['shapes'], np.float64).reshape(-1, 2)
        self.segments = [list(x) for x in cache['segments']]  # normalised polygons, [] for box-only files
        self._filter_classes(nc, single_cls)
        self.n = len(self.shapes)
        self.batch = np.floor(np.arange(self.n) / batch_size).astype(int)
        self.indices = list(range(self.n))
        self.batch_shapes = self._rect_shapes(batch_size, pad) if self.rect else None
        self.ims: list[np.ndarray | None] = [None] * self.n
        self.im_hw0: list = [None] * self.n
        self.im_hw: list = [None] * self.n
        self.npy_files = [Path(f).with_suffix('.npy') for f in self.im_files]
        self.cache_images = 'ram' if cache_images is True else (cache_images or None)
        if self.cache_images:
            self._cache(self.cache_images)

    def _load_labels(self, path, prefix: str, root) -> dict:
        """Every part of the split (YOLO dirs/lists together, each COCO/VOC annotation split on its own) from its
        cache or a fresh scan, merged in that order. Sets ``cache_path`` (the first part's), ``annotation_sources``
        (one per COCO/VOC part: its spec, class map, image ids by file and annotation counts)."""
        items = list(path) if isinstance(path, (list, tuple)) else [path]
        yolo = [p for p in items if not isinstance(p, dict)]
        parts, self.annotation_sources = [], []
        if yolo:
            all_ims = _list_images(yolo if isinstance(path, (list, tuple)) else path, prefix)
            all_lbs = img2label_paths(all_ims)
            cache_path = cache_path_for(yolo if isinstance(path, (list, tuple)) else path, all_lbs)
            cache, from_cache = load_or_scan(all_ims, all_lbs, cache_path, prefix, root)
            cache['label_files'] = img2label_paths(cache['im_files'])
            parts.append((cache, from_cache, cache_path))
        for spec in (p for p in items if isinstance(p, dict)):
            if 'format' not in spec:  # as written in a YAML: paths relative to the dataset root
                try:
                    spec = formats.resolve_spec(Path(root or '.'), spec)
                except ValueError as e:
                    raise DatasetError(f'{prefix}{e}') from None
            try:
                cache, from_cache, cache_path = formats.load_split(spec, prefix, root)
            except AnnotationError as e:  # not COCO, unreadable, too large: this part has no images
                parts.append((formats.empty_cache(f'{prefix}WARNING ⚠️ {e}'), False, formats.cache_file(spec)))
                continue
            labels, msgs, class_map = formats.remap_classes(cache, spec, prefix)
            cache = {**cache, 'labels': labels, 'msgs': list(cache['msgs']) + msgs}
            self.annotation_sources.append(formats.AnnotationSource(
                spec, class_map, dict(zip(cache['im_files'], cache['image_ids'].tolist())),
                dict(zip((*formats.COUNT_KEYS, 'difficult'), cache['counts'].tolist()))))
            parts.append((cache, from_cache, cache_path))
        for cache, from_cache, cache_path in parts:
            nf, nm, ne, ncor, total = (int(v) for v in cache['results'])
            if from_cache and self.verbose:  # the same summary line as a fresh scan; warnings follow from the cache
                tqdm(None, desc=f"{prefix}Scanning '{cache_path.with_suffix('')}'... {nf + ne} images, "
                                f'{nm + ne} backgrounds, {ncor} corrupt', total=total, initial=total,
                     bar_format=TQDM_BAR_FORMAT).close()
        for src in self.annotation_sources if self.verbose else ():
            LOGGER.info(f'{prefix}{src.summary()}')
        self.cache_path = parts[0][2]
        return formats.merge_caches([p[0] for p in parts])

    def _filter_classes(self, nc: int | None, single_cls: bool) -> None:
        """Drop rows with class >= nc (one warning per file), then map every class to 0 with ``single_cls``."""
        for i, lb in enumerate(self.labels):
            if nc is not None and len(lb) and (lb[:, 0] >= nc).any():
                bad = lb[:, 0] >= nc
                m = (f'{self.prefix}WARNING ⚠️ {self.label_files[i]}: {int(bad.sum())} label(s) with class >= '
                     f'nc={nc} removed (classes {sorted({int(c) for c in lb[bad, 0]})})')
                if self.verbose:
                    LOGGER.warning(m)
                self.msgs.append(m)
                self.stats['cls_removed'] += int(bad.sum())
                self.labels[i] = lb[~bad]
                if self.segments[i]:
                    self.segments[i] = [x for x, b in zip(self.segments[i], bad) if not b]
            if single_cls and len(self.labels[i]):
                self.labels[i][:, 0] = 0

    def _rect_shapes(self, batch_size: int, pad: float) -> np.ndarray:
        """Sort by aspect ratio h/w and give each batch the smallest stride-multiple shape [h, w] that fits it."""
        ar = self.shapes[:, 1] / self.shapes[:, 0]
        order = ar.argsort()
        self.im_files = [self.im_files[i] for i in order]
        self.label_files = [self.label_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.segments = [self.segments[i] for i in order]
        self.shapes, ar = self.shapes[order], ar[order]
        nb = self.batch[-1] + 1
        shapes = np.ones((nb, 2))
        for i in range(nb):
            ari = ar[self.batch == i]
            mini, maxi = ari.min(), ari.max()
            if maxi < 1:
                shapes[i] = [maxi, 1]
            elif mini > 1:
                shapes[i] = [1, 1 / mini]
        return np.ceil(shapes * self.img_size / self.stride + pad).astype(int) * self.stride

    def _cache(self, kind: str) -> None:
        """``ram``: resized images in memory (if they fit); ``disk``: raw BGR ``.npy`` beside each image."""
        if kind == 'ram':
            sample = random.Random(0).sample(range(self.n), min(self.n, 30))  # leaves the global RNG alone
            need = sum(self.load_image(i)[0].nbytes for i in sample) * self.n / max(len(sample), 1) * 1.1
            avail = _available_ram()
            if avail is not None and need > avail:
                LOGGER.warning(f'{self.prefix}WARNING ⚠️ {need / 2**30:.1f}GB RAM needed to cache images, '
                               f'{avail / 2**30:.1f}GB available: not caching images')
                return
        fn = self._cache_to_disk if kind == 'disk' else self.load_image
        b = 0
        with ThreadPool(io_threads()) as pool:
            pbar = tqdm(enumerate(pool.imap(fn, range(self.n))), total=self.n, bar_format=TQDM_BAR_FORMAT)
            for i, x in pbar:
                if kind == 'disk':
                    b += self.npy_files[i].stat().st_size
                else:
                    self.ims[i], self.im_hw0[i], self.im_hw[i] = x
                    b += x[0].nbytes
                pbar.desc = f'{self.prefix}Caching images ({b / 2**30:.1f}GB {kind})'
            pbar.close()

    def _cache_to_disk(self, i: int) -> None:
        f = self.npy_files[i]
        if not f.exists() or f.stat().st_mtime_ns < os.stat(self.im_files[i]).st_mtime_ns:
            im = read_image(self.im_files[i])
            tmp = f.with_name(f'{f.name}.{os.getpid()}.tmp.npy')
            np.save(tmp, im, allow_pickle=False)
            os.replace(tmp, f)

    def _read(self, i: int) -> np.ndarray:
        f, npy = self.im_files[i], self.npy_files[i]
        if self.cache_images == 'disk' and npy.exists():
            try:  # memory-mapped first: a foreign .npy claiming a huge shape allocates nothing
                arr = np.load(npy, mmap_mode='r', allow_pickle=False)
                if arr.dtype == np.uint8 and arr.shape == (*self.shapes[i][::-1].astype(int), 3):
                    return np.array(arr)
            except (OSError, ValueError):  # unreadable or foreign .npy: fall back to the image itself
                pass
        try:
            return read_image(f)
        except ValueError:
            raise DatasetError(f'{self.prefix}{f}: image cannot be read (deleted or changed since the scan?)') from None

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Image i resized so that its long side is ``img_size``; returns (im, (h0, w0), (h, w))."""
        if self.ims[i] is not None:
            return self.ims[i], self.im_hw0[i], self.im_hw[i]
        im = self._read(i)
        h0, w0 = im.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            im = cv2.resize(im, (math.ceil(w0 * r), math.ceil(h0 * r)), interpolation=interp)
        return im, (h0, w0), im.shape[:2]

    def __len__(self) -> int:
        return self.n

    def load_mosaic(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """4-image mosaic (2s x 2s) warped by random_perspective down to s x s; labels pixel xyxy."""
        idx = [index] + random.choices(self.indices, k=3)
        random.shuffle(idx)
        img4, labels4, segs4 = build_mosaic([self.load_image(i)[0] for i in idx], [self.labels[i] for i in idx],
                                            self.img_size, [self.segments[i] for i in idx])
        h = self.hyp
        img4, labels4, segs4 = copy_paste(img4, labels4, segs4, p=h['copy_paste'])
        return random_perspective(img4, labels4, segs4, degrees=h['degrees'], translate=h['translate'],
                                  scale=h['scale'], shear=h['shear'], perspective=h['perspective'],
                                  border=self.mosaic_border)

    def _load_letterboxed(self, index: int) -> tuple[np.ndarray, np.ndarray, tuple]:
        img, (h0, w0), (h, w) = self.load_image(index)
        shape = self.batch_shapes[self.batch[index]] if self.rect else self.img_size
        img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
        labels = self.labels[index].copy()
        if labels.size:
            labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, padw=pad[0], padh=pad[1])
        if self.augment:
            hp = self.hyp
            img, labels = random_perspective(img, labels, degrees=hp['degrees'], translate=hp['translate'],
                                             scale=hp['scale'], shear=hp['shear'], perspective=hp['perspective'])
        return img, labels, ((h0, w0), ((h / h0, w / w0), pad))

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, str, tuple | None]:
        """Sample ``index``; given ``(index, seed)`` (utils.data.loader.SeededSampler) its random augmentation is
        drawn from ``seed`` alone, so it does not depend on which worker, or how many, load it."""
        if isinstance(index, tuple):
            index, seed = index
            with seeded_global_rngs(seed):
                return self._get(index)
        return self._get(index)

    def _get(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, tuple | None]:
        index = self.indices[index]  # reassigned by the trainer with --image-weights
        if self.mosaic and random.random() < self.hyp['mosaic']:
            img, labels = self.load_mosaic(index)
            shapes = None
            if random.random() < self.hyp['mixup']:
                img, labels = mixup(img, labels, *self.load_mosaic(random.choice(self.indices)))
        else:
            img, labels, shapes = self._load_letterboxed(index)
        nl = len(labels)
        if nl:
            labels[:, 1:5] = xyxy2xywhn(labels[:, 1:5], w=img.shape[1], h=img.shape[0], clip=True, eps=1e-3)
        if self.augment:
            augment_hsv(img, hgain=self.hyp['hsv_h'], sgain=self.hyp['hsv_s'], vgain=self.hyp['hsv_v'])
            if random.random() < self.hyp['flipud']:
                img = np.flipud(img)
                labels[:, 2] = 1 - labels[:, 2]
            if random.random() < self.hyp['fliplr']:
                img = np.fliplr(img)
                labels[:, 1] = 1 - labels[:, 1]
        out = torch.zeros((nl, 6))
        if nl:
            out[:, 1:] = torch.from_numpy(np.asarray(labels, np.float32))
        img = np.ascontiguousarray(img.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB
        return torch.from_numpy(img), out, self.im_files[index], shapes

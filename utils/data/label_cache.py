"""The label scan and its ``.cache``: every image and label file verified once, the result kept as plain arrays.

The scan never writes into the user's dataset: a JPEG
without its end marker is repaired in memory for decoding and the file is left as it is (YOLOv5 re-saved it in place).
The ``.cache`` is an ``.npz`` of plain arrays (``allow_pickle=False``), written only inside the dataset root (``path:``
of the dataset YAML); one that would land elsewhere is not written, with one line saying so. Reading it never
decompresses or allocates more than the file holds: members must be stored uncompressed, each array's header must fit
its member, and the hash member is compared before anything else is read.
"""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
from multiprocessing.pool import ThreadPool
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from utils.core.logging import LOGGER, TQDM_BAR_FORMAT
from utils.core.safety import MAX_ZIP_ENTRIES, UnsafeFileError, image_header_size
from utils.core.torch_utils import available_cpus
from utils.data.images import IMG_FORMATS, with_jpeg_end
from utils.ops.boxes import xywhn2xyxy

CACHE_VERSION = 3  # bump when the cache layout or the verification rules change (3: a folder at a label path)
# members only caches of COCO/VOC splits hold (utils.data.formats): per image its annotation file and original id;
# every referenced image and their stat hash; the file's categories (ids and names)
EXTRA_KEYS = ('label_files', 'image_ids', 'src_files', 'files_hash', 'cat_ids', 'cat_names', 'counts')


def io_threads() -> int:
    """Threads for scanning and caching image files (I/O bound): one less than the CPUs, 1 to 8."""
    return max(1, min(8, available_cpus() - 1))


def exif_size(img: Image.Image) -> tuple[int, int]:
    """(w, h) of the image as displayed: swapped when the EXIF orientation is a 90-degree one (5, 6, 7, 8)."""
    w, h = img.size
    try:
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            return h, w
    except Exception:  # unreadable EXIF: keep the stored size
        pass
    return w, h


def _one_line(e: BaseException | str) -> str:
    return ' '.join(str(e).split())


def _parse_labels(lb_file: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Rows ``cls cx cy w h`` or polygons ``cls x1 y1 x2 y2 ...`` -> (boxes (n, 5) float32, polygons).

    Polygons (normalised (k, 2) arrays) are returned only when the file has any, one per row: box rows then get
    their rectangle, so labels and polygons stay aligned for copy-paste and polygon warping.
    """
    with open(lb_file, encoding='utf-8-sig') as f:  # -sig: tolerate a byte-order mark
        rows = [line.split() for line in f.read().splitlines() if line.strip()]
    out, polys = [], []
    for row in rows:
        try:
            v = [float(x) for x in row]
        except ValueError:
            raise ValueError(f'non-numeric label value in row {" ".join(row)!r}') from None
        if len(v) == 5:
            out.append(v)
            polys.append(None)
        elif len(v) >= 7 and len(v) % 2 == 1:  # polygon segment -> its bounding box
            xy = np.array(v[1:], np.float32).reshape(-1, 2)
            (x1, y1), (x2, y2) = xy.min(0), xy.max(0)
            out.append([v[0], (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
            polys.append(xy)
        else:
            raise ValueError(f'labels require 5 columns, {len(v)} columns detected')
    lb = np.array(out, dtype=np.float32).reshape(-1, 5)
    if all(p is None for p in polys):
        return lb, []
    rect = xywhn2xyxy(lb[:, 1:], 1, 1)
    return lb, [p if p is not None else rect[i][[0, 1, 2, 1, 2, 3, 0, 3]].reshape(4, 2) for i, p in enumerate(polys)]


def _check_labels(lb: np.ndarray) -> None:
    if not np.isfinite(lb).all():
        raise ValueError('non-finite label values')
    if (lb < 0).any():
        raise ValueError(f'negative label values {lb[lb < 0].tolist()[:4]}')
    if (lb[:, 1:] > 1).any():
        raise ValueError(f'non-normalized or out of bounds coordinates {lb[:, 1:][lb[:, 1:] > 1].tolist()[:4]}')
    if (lb[:, 0] != np.round(lb[:, 0])).any():
        raise ValueError(f'non-integer class indices {lb[:, 0][lb[:, 0] != np.round(lb[:, 0])].tolist()[:4]}')


def _jpeg_end(im_file: str, prefix: str) -> tuple[np.ndarray, str]:
    """The file's bytes, with the FFD9 end marker appended in memory when a JPEG lacks it, and a warning then.

    YOLOv5 re-saved such files in place (a 623-byte file became 2.25 MB in the user's dataset); the file is now left
    unchanged and every later read (utils.data.images.read_image) repairs it the same way in memory."""
    data = np.fromfile(im_file, dtype=np.uint8)
    fixed = with_jpeg_end(data)
    if fixed is data:
        return data, ''
    return fixed, f'{prefix}WARNING ⚠️ {im_file}: corrupt JPEG restored in memory (the file is left unchanged)'


def _check_image(im_file: str, prefix: str) -> tuple[tuple[int, int], str]:
    """(w, h) of a valid image and an optional warning; raises on a corrupt one or one over the pixel limit (read from
    its header, before anything is decoded)."""
    try:
        image_header_size(im_file)  # UnsafeFileError over MAX_IMAGE_PIXELS (PIL's own bomb check included)
    except UnsafeFileError:
        raise
    except ValueError:
        pass  # no readable header: PIL says why just below, in its own words
    with Image.open(im_file) as im:
        im.verify()
        fmt = (im.format or '').lower()
    with Image.open(im_file) as im:
        shape = exif_size(im)
    if fmt not in IMG_FORMATS:
        raise ValueError(f'invalid image format {fmt}')
    if shape[0] < 10 or shape[1] < 10:
        raise ValueError(f'image size {shape} <10 pixels')
    data, msg = _jpeg_end(im_file, prefix) if fmt in ('jpeg', 'jpg') else (np.fromfile(im_file, np.uint8), '')
    try:
        ok = cv2.imdecode(data, cv2.IMREAD_REDUCED_GRAYSCALE_2) is not None
    except cv2.error:
        ok = False
    if not ok:
        raise ValueError('image cannot be decoded')
    return shape, msg


def verify_image_label(args: tuple[str, str, str]) -> tuple:
    """Check one (image, label file, prefix) pair.

    Returns (im_file | None, labels (n,5) | None, (w,h) | None, polygons, found, missing, empty, corrupt, message):
    exactly one of found/missing/empty/corrupt is 1. Missing and empty label files make background images.
    """
    im_file, lb_file, prefix = args
    try:
        shape, msg = _check_image(im_file, prefix)
    except Exception as e:
        return None, None, None, [], 0, 0, 0, 1, f'{prefix}WARNING ⚠️ {im_file}: ignoring corrupt image: {_one_line(e)}'
    if not os.path.isfile(lb_file):
        if os.path.exists(lb_file):  # a folder or a pipe where the label should be: not a background image
            kind = 'a folder' if os.path.isdir(lb_file) else 'not a regular file'
            return None, None, None, [], 0, 0, 0, 1, f'{prefix}WARNING ⚠️ {lb_file}: ignoring corrupt label: is {kind}'
        return im_file, np.zeros((0, 5), np.float32), shape, [], 0, 1, 0, 0, msg
    try:
        lb, segs = _parse_labels(lb_file)
        _check_labels(lb)
    except Exception as e:
        return None, None, None, [], 0, 0, 0, 1, f'{prefix}WARNING ⚠️ {lb_file}: ignoring corrupt label: {_one_line(e)}'
    if not len(lb):
        return im_file, lb, shape, [], 0, 0, 1, 0, msg
    _, keep = np.unique(lb, axis=0, return_index=True)
    if len(keep) < len(lb):
        dup = f'{prefix}WARNING ⚠️ {lb_file}: {len(lb) - len(keep)} duplicate labels removed'
        msg = f'{msg}\n{dup}' if msg else dup
        keep = np.sort(keep)
        lb, segs = lb[keep], [segs[i] for i in keep] if segs else []
    return im_file, lb, shape, segs, 1, 0, 0, 0, msg


def boxes_to_labels(boxes: np.ndarray, w: int, h: int) -> tuple[np.ndarray, int, int]:
    """Pixel boxes (n, 5) ``cls x1 y1 x2 y2`` -> (normalised ``cls cx cy w h`` float32 rows, inverted, outside):
    boxes are clipped to the image; inverted or empty ones (x2 <= x1 or y2 <= y1) and ones with nothing left after
    clipping (wholly outside) are dropped and counted."""
    b = np.asarray(boxes, np.float64).reshape(-1, 5).copy()
    inverted = (b[:, 3] <= b[:, 1]) | (b[:, 4] <= b[:, 2])
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, w)
    b[:, [2, 4]] = b[:, [2, 4]].clip(0, h)
    outside = ~inverted & ((b[:, 3] <= b[:, 1]) | (b[:, 4] <= b[:, 2]))
    b = b[~inverted & ~outside]
    lb = np.stack([b[:, 0], (b[:, 1] + b[:, 3]) / 2 / w, (b[:, 2] + b[:, 4]) / 2 / h, (b[:, 3] - b[:, 1]) / w,
                   (b[:, 4] - b[:, 2]) / h], 1).astype(np.float32)
    return lb, int(inverted.sum()), int(outside.sum())


def verify_image_boxes(args: tuple) -> tuple:
    """Check one image of an annotation file: ``(im_file, load, source, prefix)``, where ``load()`` returns (pixel
    boxes (n, 5) cls x1 y1 x2 y2, the (w, h) the annotation claims or None, warnings) or None when the image has no
    annotation file (a background, as a missing YOLO label file), and raises ValueError/OSError for an unusable one.
    Returns ``verify_image_label``'s tuple; warnings name ``source`` (the annotation file, and the image in it)."""
    im_file, load, source, prefix = args
    try:
        shape, msg = _check_image(im_file, prefix)
    except Exception as e:
        return None, None, None, [], 0, 0, 0, 1, f'{prefix}WARNING ⚠️ {im_file}: ignoring corrupt image: {_one_line(e)}'
    msgs = [msg] if msg else []
    try:
        got = load()
    except (ValueError, OSError) as e:
        return None, None, None, [], 0, 0, 0, 1, f'{prefix}WARNING ⚠️ {source}: ignoring corrupt label: {_one_line(e)}'
    if got is None:
        return im_file, np.zeros((0, 5), np.float32), shape, [], 0, 1, 0, 0, msg
    boxes, claimed, notes = got
    msgs += [f'{prefix}WARNING ⚠️ {source}: {n}' for n in notes]
    if claimed is not None and tuple(claimed) not in (tuple(shape), tuple(shape[::-1])):
        msgs.append(f'{prefix}WARNING ⚠️ {source}: annotation says {claimed[0]}x{claimed[1]}, the image is '
                    f'{shape[0]}x{shape[1]}; boxes normalised by the image')
    lb, inverted, outside = boxes_to_labels(boxes, *shape)
    if inverted or outside:
        msgs.append(f'{prefix}WARNING ⚠️ {source}: {inverted + outside} box(es) removed ({inverted} inverted or '
                    f'empty, {outside} outside the image)')
    _, keep = np.unique(lb, axis=0, return_index=True)
    if len(keep) < len(lb):
        msgs.append(f'{prefix}WARNING ⚠️ {source}: {len(lb) - len(keep)} duplicate labels removed')
        lb = lb[np.sort(keep)]
    found = 1 if len(lb) else 0
    return im_file, lb, shape, [], found, 0, 1 - found, 0, '\n'.join(msgs)


def files_hash(paths: list[str]) -> str:
    """sha256 over every path with its size and mtime (missing files included), so any edit invalidates the cache."""
    h = hashlib.sha256(str(CACHE_VERSION).encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f'{p}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode())
        except OSError:
            h.update(f'{p}\0-\n'.encode())
    return h.hexdigest()


def _array(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One .npy member, after checking that the shape its header claims fits the bytes the member holds."""
    data = z.read(info)
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    if dtype.hasobject or int(np.prod(shape, dtype=np.float64)) * dtype.itemsize > len(data) - f.tell():
        raise ValueError(f'{info.filename}: header claims more data than the member holds')
    f.seek(0)
    return np.load(f, allow_pickle=False)


def _read_npz(path: Path, expect_hash: str | None) -> dict | None:
    """The cache's arrays; None when a member is compressed or oversized, or the hash/version differ (checked first)."""
    with zipfile.ZipFile(path) as z:
        infos = {i.filename: i for i in z.infolist()}
        if len(infos) > MAX_ZIP_ENTRIES or any(i.compress_type != zipfile.ZIP_STORED for i in infos.values()) \
                or sum(i.file_size for i in infos.values()) > path.stat().st_size:
            return None
        if int(_array(z, infos['version.npy'])) != CACHE_VERSION:
            return None
        if expect_hash is not None and str(_array(z, infos['hash.npy'])) != expect_hash:
            return None
        return {name[:-4]: _array(z, info) for name, info in infos.items()}


def load_cache(path: Path, expect_hash: str | None = None) -> dict | None:
    """Read a label cache written by ``save_cache``; None when absent, unreadable, stale (``expect_hash`` differs) or
    malformed. Never unpickles; never allocates more than the file holds."""
    try:
        d = _read_npz(Path(path), expect_hash)
        if d is None:
            return None
        counts = d['label_counts'].astype(int)
        d['labels'] = np.split(d['labels'].astype(np.float32), np.cumsum(counts)[:-1]) if len(counts) else []
        flat = np.split(d['seg_points'], np.cumsum(d['seg_lens'])[:-1]) if len(d['seg_lens']) else []
        ends = np.cumsum(d['seg_per_image'])
        d['segments'] = [flat[e - k:e] for e, k in zip(ends, d['seg_per_image'])]
        d['im_files'] = [str(x) for x in d['im_files']]
        d['msgs'] = [str(x) for x in d['msgs']]
        d['hash'] = str(d['hash'])
        return d
    except Exception:  # missing, truncated, foreign or old-format file: rebuild
        return None


def save_cache(path: Path, d: dict, prefix: str = '') -> None:
    """Write the cache atomically (temp file + rename) as plain arrays; warn when the directory is not writeable."""
    labels, flat = d['labels'], [x for segs in d['segments'] for x in segs]
    arrays = dict(version=np.array(CACHE_VERSION), hash=np.array(d['hash']),
                  im_files=np.array(d['im_files'], dtype=str), shapes=np.asarray(d['shapes'], np.int64).reshape(-1, 2),
                  label_counts=np.array([len(x) for x in labels], np.int64),
                  labels=np.concatenate(labels, 0) if labels else np.zeros((0, 5), np.float32),
                  results=np.array(d['results'], np.int64), msgs=np.array(d['msgs'], dtype=str),
                  seg_points=np.concatenate(flat, 0).astype(np.float32) if flat else np.zeros((0, 2), np.float32),
                  seg_lens=np.array([len(x) for x in flat], np.int64),
                  seg_per_image=np.array([len(x) for x in d['segments']], np.int64))
    arrays.update({k: np.asarray(d[k]) for k in EXTRA_KEYS if k in d})  # annotation-file splits (utils.data.formats)
    tmp = path.with_name(f'{path.name}.{os.getpid()}.tmp')
    try:
        with open(tmp, 'wb') as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
        LOGGER.info(f'{prefix}New cache created: {path}')
    except OSError as e:
        tmp.unlink(missing_ok=True)
        LOGGER.warning(f'{prefix}WARNING ⚠️ Cache directory {path.parent} is not writeable: {_one_line(e)}')


def run_scan(worker, jobs: list[tuple], desc: str) -> dict:
    """Run ``worker`` (``verify_image_label`` or ``verify_image_boxes``) over ``jobs`` in a thread pool with a tqdm
    bar; returns the cache dict (valid images only) without its hash."""
    x = {'im_files': [], 'labels': [], 'shapes': [], 'segments': [], 'msgs': []}
    nf = nm = ne = nc = 0
    with ThreadPool(io_threads()) as pool:
        pbar = tqdm(pool.imap(worker, jobs), desc=desc, total=len(jobs), bar_format=TQDM_BAR_FORMAT)
        for im_file, lb, shape, segs, nf_f, nm_f, ne_f, nc_f, msg in pbar:
            nf, nm, ne, nc = nf + nf_f, nm + nm_f, ne + ne_f, nc + nc_f
            if im_file:
                x['im_files'].append(im_file)
                x['labels'].append(lb)
                x['shapes'].append(shape)
                x['segments'].append(segs)
            if msg:
                x['msgs'].extend(msg.split('\n'))
            pbar.desc = f'{desc} {nf + ne} images, {nm + ne} backgrounds, {nc} corrupt'
        pbar.close()
    x['results'] = (nf, nm, ne, nc, len(jobs))
    return x


def scan_labels(im_files: list[str], label_files: list[str], cache_path: Path, prefix: str = '') -> dict:
    """Verify every (image, label file) pair in a thread pool with a tqdm bar; returns the cache dict."""
    x = run_scan(verify_image_label, list(zip(im_files, label_files, [prefix] * len(im_files))),
                 f"{prefix}Scanning '{cache_path.with_suffix('')}'...")
    x['hash'] = files_hash(label_files + im_files)  # after the scan: restored JPEGs must not invalidate it
    return x


def cache_path_for(path: str | list[str], label_files: list[str]) -> Path:
    """YOLOv5's location: ``<list>.cache`` for a single .txt list, else ``<first label dir>.cache``."""
    paths = list(path) if isinstance(path, (list, tuple)) else [path]
    if len(paths) == 1 and Path(paths[0]).is_file():
        return Path(paths[0]).with_suffix('.cache')
    return Path(label_files[0]).parent.with_suffix('.cache')


def cache_writable_at(cache_path: Path, root: str | Path | None, prefix: str = '') -> bool:
    """True when the cache may be written at ``cache_path``: inside the dataset root ``root`` (the YAML's ``path:``).
    A YAML whose splits point elsewhere would otherwise drop files beside any directory it names."""
    if root is None:
        return True
    root_r, cache_r = Path(root).resolve(), cache_path.resolve()
    if root_r in cache_r.parents:
        return True
    LOGGER.warning(f'{prefix}WARNING ⚠️ label cache not written: {cache_path} is outside the dataset root {root} '
                   '(the labels are scanned again next time)')
    return False


def load_or_scan(im_files: list[str], label_files: list[str], cache_path: Path, prefix: str = '',
                 root: str | Path | None = None) -> tuple[dict, bool]:
    """The cached scan when its version and file hash still match, else a fresh scan, saved to ``cache_path`` if that
    lies inside the dataset ``root``."""
    cache = load_cache(cache_path, files_hash(label_files + im_files))
    if cache is not None:
        return cache, True
    cache = scan_labels(im_files, label_files, cache_path, prefix)
    if cache_writable_at(cache_path, root, prefix):
        save_cache(cache_path, cache, prefix)
    return cache, False

"""Bad data never stops or silently corrupts a run: each case is kept, fixed or skipped with a one-line warning naming
the file, and found + missing + empty + corrupt == total. Each test builds its bad file next to a good one."""
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from utils.core.logging import LOGGER
from utils.data.config import DatasetError
from utils.data.dataset import LoadImagesAndLabels

GOOD_ROW = '0 0.5 0.5 0.5 0.5'


def _dirs(root: Path) -> tuple[Path, Path]:
    im, lb = root / 'images' / 'train', root / 'labels' / 'train'
    im.mkdir(parents=True, exist_ok=True)
    lb.mkdir(parents=True, exist_ok=True)
    return im, lb


def _good(root: Path, name: str = 'good', hw=(40, 48)) -> Path:
    im, lb = _dirs(root)
    f = im / f'{name}.png'
    cv2.imwrite(str(f), np.random.default_rng(0).integers(0, 255, (*hw, 3), dtype=np.uint8))
    (lb / f'{name}.txt').write_text(GOOD_ROW + '\n')
    return f


def _jpeg_bytes(h=32, w=48) -> bytes:
    ok, enc = cv2.imencode('.jpg', np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8))
    return enc.tobytes()


def _load(root: Path, **kw) -> tuple[LoadImagesAndLabels, list[str]]:
    """Build the dataset and return it with every line LOGGER emitted while doing so."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    LOGGER.addHandler(handler)
    try:
        ds = LoadImagesAndLabels(root / 'images' / 'train', kw.pop('img_size', 64), 2, **kw)
    finally:
        LOGGER.removeHandler(handler)
    return ds, [r.getMessage() for r in records]


def _counts(ds) -> tuple[int, int, int, int, int]:
    s = ds.stats
    assert s['found'] + s['missing'] + s['empty'] + s['corrupt'] == s['total']
    assert ds.n == s['total'] - s['corrupt'] == len(ds.labels) == len(ds.im_files)
    return s['found'], s['missing'], s['empty'], s['corrupt'], s['total']


def _one_warning(lines: list[str], path: Path, text: str) -> str:
    hits = [m for m in lines if str(path) in m and 'WARNING' in m]
    assert len(hits) == 1, lines
    assert text in hits[0] and '\n' not in hits[0]
    return hits[0]


def test_jpeg_missing_eoi_is_restored_in_memory_only(tmp_path):
    _good(tmp_path)
    im, lb = _dirs(tmp_path)
    f = im / 'trunc.jpg'
    truncated = _jpeg_bytes()[:-2]  # drop the FFD9 end-of-image marker
    f.write_bytes(truncated)
    (lb / 'trunc.txt').write_text(GOOD_ROW + '\n')
    ds, lines = _load(tmp_path)
    _one_warning(lines, f, 'corrupt JPEG restored in memory (the file is left unchanged)')
    assert _counts(ds) == (2, 0, 0, 0, 2)
    assert f.read_bytes() == truncated  # the user's dataset is never rewritten (YOLOv5 re-saved it in place)
    i = ds.im_files.index(str(f))
    assert ds[i][0].shape == (3, 64, 64)
    cache = tmp_path / 'labels' / 'train.cache'
    mtime = cache.stat().st_mtime_ns
    _, lines = _load(tmp_path)  # unchanged file: the cache stays valid, the message is repeated from it
    _one_warning(lines, f, 'corrupt JPEG restored in memory')
    assert cache.stat().st_mtime_ns == mtime and not [m for m in lines if 'New cache' in m]


@pytest.mark.parametrize('content,why', [
    (b'', 'cannot identify image file'),  # zero-byte file
    (b'\x00garbage' * 40, 'cannot identify image file'),  # not an image at all
    ('header-only', ''),  # JPEG cut inside its header: nothing decodes
])
def test_undecodable_image_is_corrupt(tmp_path, content, why):
    _good(tmp_path)
    im, lb = _dirs(tmp_path)
    f = im / 'bad.jpg'
    f.write_bytes(_jpeg_bytes()[:120] if content == 'header-only' else content)
    (lb / 'bad.txt').write_text(GOOD_ROW + '\n')
    ds, lines = _load(tmp_path)
    _one_warning(lines, f, f'ignoring corrupt image: {why}')
    assert _counts(ds) == (1, 0, 0, 1, 2) and str(f) not in ds.im_files


@pytest.mark.parametrize('rows,why', [
    (['0 0.5 0.5 0.5'], 'labels require 5 columns, 4 columns detected'),
    (['0 0.5 0.5 0.5 0.5 0.1'], 'labels require 5 columns, 6 columns detected'),
    ([GOOD_ROW, '1 0.5 0.5 0.5'], 'labels require 5 columns, 4 columns detected'),
    (['0 -0.1 0.5 0.5 0.5'], 'negative label values [-0.1'),
    (['-1 0.5 0.5 0.5 0.5'], 'negative label values [-1.0]'),
    (['0 0.5 1.2 0.5 0.5'], 'non-normalized or out of bounds coordinates [1.2'),
    (['0 0.5 0.5 1.5 0.5'], 'non-normalized or out of bounds coordinates [1.5]'),
    (['cat 0.5 0.5 0.5 0.5'], "non-numeric label value in row 'cat 0.5 0.5 0.5 0.5'"),
    (['0 nan 0.5 0.5 0.5'], 'non-finite label values'),
    (['0.5 0.5 0.5 0.5 0.5'], 'non-integer class indices [0.5]'),
])
def test_bad_label_rows_are_corrupt(tmp_path, rows, why):
    """YOLOv5's rule: coordinates outside [0, 1] make the image corrupt (ignored), they are not clipped."""
    _good(tmp_path)
    f = _good(tmp_path, 'bad')
    lb = tmp_path / 'labels' / 'train' / 'bad.txt'
    lb.write_text('\n'.join(rows) + '\n')
    ds, lines = _load(tmp_path)
    _one_warning(lines, lb, f'ignoring corrupt label: {why}')
    assert _counts(ds) == (1, 0, 0, 1, 2) and str(f) not in ds.im_files


def test_binary_label_file_is_corrupt(tmp_path):
    _good(tmp_path)
    _good(tmp_path, 'bad')
    lb = tmp_path / 'labels' / 'train' / 'bad.txt'
    lb.write_bytes(b'\xff\xfe\x00\x81binary')
    ds, lines = _load(tmp_path)
    _one_warning(lines, lb, "ignoring corrupt label: 'utf-8' codec can't decode")
    assert _counts(ds) == (1, 0, 0, 1, 2)



@pytest.mark.parametrize('kind', ['folder', 'fifo'])
def test_label_path_that_is_not_a_file_is_corrupt_not_background(tmp_path, kind):
    """A folder (or a pipe, which would block a reader) where a label file belongs: YOLOv5 took the image as a
    background without a word, teaching the model that its objects are background; here it is ignored, with a line."""
    import os
    _good(tmp_path)
    f = _good(tmp_path, 'odd')
    lb = tmp_path / 'labels' / 'train' / 'odd.txt'
    lb.unlink()
    lb.mkdir() if kind == 'folder' else os.mkfifo(lb)
    ds, lines = _load(tmp_path)
    why = 'is a folder' if kind == 'folder' else 'is not a regular file'
    _one_warning(lines, lb, f'ignoring corrupt label: {why}')
    assert _counts(ds) == (1, 0, 0, 1, 2) and str(f) not in ds.im_files


def test_cached_warnings_carry_the_reading_loaders_prefix(tmp_path):
    """The train loader scans and caches; a val loader over the same split reads the cache and says 'val:', not the
    'train:' stored with the message (YOLOv5 repeats the scanning loader's prefix)."""
    _good(tmp_path)
    _good(tmp_path, 'bad')
    lb = tmp_path / 'labels' / 'train' / 'bad.txt'
    lb.write_bytes(b'\xff\xfe\x00\x81binary')
    _, lines = _load(tmp_path, prefix='train: ')
    assert _one_warning(lines, lb, 'ignoring corrupt label').startswith(f'train: WARNING ⚠️ {lb}: ')
    ds, lines = _load(tmp_path, prefix='val: ')
    assert _one_warning(lines, lb, 'ignoring corrupt label').startswith(f'val: WARNING ⚠️ {lb}: ')
    assert ds.msgs[0].startswith('val: WARNING')

def test_class_out_of_range_rows_removed(tmp_path):
    _good(tmp_path)
    _good(tmp_path, 'mixed')
    _good(tmp_path, 'only_bad')
    lbs = tmp_path / 'labels' / 'train'
    (lbs / 'mixed.txt').write_text('1 0.5 0.5 0.2 0.2\n5 0.4 0.4 0.1 0.1\n7 0.3 0.3 0.1 0.1\n')
    (lbs / 'only_bad.txt').write_text('2 0.5 0.5 0.2 0.2\n')
    ds, lines = _load(tmp_path, nc=2)
    _one_warning(lines, lbs / 'mixed.txt', '2 label(s) with class >= nc=2 removed (classes [5, 7])')
    _one_warning(lines, lbs / 'only_bad.txt', '1 label(s) with class >= nc=2 removed (classes [2])')
    assert _counts(ds) == (3, 0, 0, 0, 3) and ds.stats['cls_removed'] == 3
    labels = dict(zip((Path(f).stem for f in ds.im_files), ds.labels))
    assert np.allclose(labels['mixed'], [[1, 0.5, 0.5, 0.2, 0.2]]) and labels['only_bad'].shape == (0, 5)
    ds, lines = _load(tmp_path)  # without nc nothing is removed (and the cache is shared)
    assert ds.stats['cls_removed'] == 0 and not [m for m in lines if 'class >=' in m]


def test_duplicate_rows_removed(tmp_path):
    _good(tmp_path, 'dup')
    lb = tmp_path / 'labels' / 'train' / 'dup.txt'
    lb.write_text('1 0.6 0.5 0.2 0.2\n0 0.5 0.5 0.5 0.5\n1 0.6 0.5 0.2 0.2\n1 0.6 0.5 0.2 0.2\n')
    ds, lines = _load(tmp_path)
    _one_warning(lines, lb, '2 duplicate labels removed')
    assert _counts(ds) == (1, 0, 0, 0, 1)
    assert np.allclose(ds.labels[0], [[1, 0.6, 0.5, 0.2, 0.2], [0, 0.5, 0.5, 0.5, 0.5]])  # order kept


def test_missing_and_empty_label_files_are_backgrounds(tmp_path, capsys):
    _good(tmp_path)
    _good(tmp_path, 'missing')
    _good(tmp_path, 'empty')
    lbs = tmp_path / 'labels' / 'train'
    (lbs / 'missing.txt').unlink()
    (lbs / 'empty.txt').write_text('\n  \n')
    ds, lines = _load(tmp_path)
    assert _counts(ds) == (1, 1, 1, 0, 3) and not [m for m in lines if 'WARNING' in m]
    assert all(len(ds.labels[i]) == 0 for i, f in enumerate(ds.im_files) if 'good' not in f)
    img, lab, _, _ = ds[ds.im_files.index(str(tmp_path / 'images' / 'train' / 'missing.png'))]
    assert lab.shape == (0, 6) and img.shape == (3, 64, 64)
    err = capsys.readouterr().err  # YOLOv5's scan summary: label files found, backgrounds, corrupt
    assert f"Scanning '{lbs}'... 2 images, 2 backgrounds, 0 corrupt" in err


@pytest.mark.parametrize('hw,corrupt', [((9, 40), True), ((40, 9), True), ((10, 10), False)])
def test_tiny_images(tmp_path, hw, corrupt):
    _good(tmp_path)
    f = _good(tmp_path, 'tiny', hw=hw)
    ds, lines = _load(tmp_path)
    if corrupt:
        _one_warning(lines, f, f'ignoring corrupt image: image size {hw[::-1]} <10 pixels')
        assert _counts(ds) == (1, 0, 0, 1, 2)
    else:
        assert _counts(ds) == (2, 0, 0, 0, 2) and not lines[1:]


def _pixels(ds, name: str) -> np.ndarray:
    """HWC RGB uint8 of an image the dataset loaded at its native size (img_size = its long side, no resize)."""
    i = next(i for i, f in enumerate(ds.im_files) if Path(f).stem == name)
    img, _, _, shapes = ds[i]
    (h0, w0), (_, (pw, ph)) = shapes
    return img.numpy().transpose(1, 2, 0)[int(ph):int(ph) + h0, int(pw):int(pw) + w0]


def test_png_modes_become_3_channel_uint8(tmp_path):
    im, lb = _dirs(tmp_path)
    grad = (np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8)
    Image.fromarray(grad, 'L').save(im / 'gray.png')
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = np.arange(32, dtype=np.uint8)[None] * 8  # varying alpha is dropped, colour kept
    Image.fromarray(rgba, 'RGBA').save(im / 'rgba.png')
    g16 = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)
    cv2.imwrite(str(im / 'gray16.png'), g16)
    c16 = np.stack([g16, 65535 - g16, np.full_like(g16, 0x1234)], -1)  # B, G, R planes for cv2
    cv2.imwrite(str(im / 'color16.png'), c16)
    pal = Image.fromarray(grad % 4, 'P')
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9] + [0] * 756)
    pal.save(im / 'palette.png')
    for n in ('gray', 'rgba', 'gray16', 'color16', 'palette'):
        (lb / f'{n}.txt').write_text(GOOD_ROW + '\n')
    ds, lines = _load(tmp_path, img_size=32)
    assert _counts(ds) == (5, 0, 0, 0, 5) and not lines[1:]
    for n in ('gray', 'rgba', 'gray16', 'color16', 'palette'):
        px = _pixels(ds, n)
        assert px.shape == (32, 32, 3) and px.dtype == np.uint8
    assert (_pixels(ds, 'gray') == grad[..., None]).all()
    assert (_pixels(ds, 'rgba') == (200, 100, 50)).all()
    assert (_pixels(ds, 'gray16') == (g16 >> 8)[..., None]).all()  # 16-bit v -> v >> 8
    assert (_pixels(ds, 'color16') == np.stack([np.full_like(g16, 0x12), (65535 - g16) >> 8, g16 >> 8], -1)).all()
    lut = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.uint8)
    assert (_pixels(ds, 'palette') == lut[grad % 4]).all()


def test_exif_rotated_jpeg_is_upright(tmp_path):
    im, lb = _dirs(tmp_path)
    stored = np.zeros((32, 64, 3), np.uint8)  # stored 64 wide x 32 high: left half white, right half black
    stored[:, :32] = 255
    pil = Image.fromarray(stored)
    exif = pil.getexif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise: the left half ends up on top
    f = im / 'rot.jpg'
    pil.save(f, exif=exif, quality=95)
    (lb / 'rot.txt').write_text('0 0.5 0.25 0.5 0.5\n')
    ds, lines = _load(tmp_path)
    assert _counts(ds) == (1, 0, 0, 0, 1) and not lines[1:]
    assert ds.shapes[0].tolist() == [32, 64]  # (w, h) as displayed
    px = _pixels(ds, 'rot')
    assert px.shape == (64, 32, 3)
    assert px[:28].mean() > 240 and px[36:].mean() < 15  # upright: white top, black bottom


def test_non_ascii_path(tmp_path):
    root = tmp_path / 'données' / 'データ'
    im, lb = _dirs(root)
    f = im / 'chat_猫_é.jpg'
    f.write_bytes(_jpeg_bytes()[:-2])  # also exercises the in-memory JPEG repair on a non-ASCII path
    (lb / 'chat_猫_é.txt').write_text(GOOD_ROW + '\n')
    ds, lines = _load(root, cache_images='disk')
    _one_warning(lines, f, 'corrupt JPEG restored in memory')
    assert _counts(ds) == (1, 0, 0, 0, 1) and ds.label_files[0].endswith('chat_猫_é.txt')
    img, lab, path, _ = ds[0]
    assert path == str(f) and lab.shape == (1, 6) and img.shape == (3, 64, 64)
    assert f.with_suffix('.npy').is_file()


def test_everything_at_once_counts_add_up(tmp_path):
    _good(tmp_path, 'a')
    _good(tmp_path, 'b')
    im, lbs = _dirs(tmp_path)
    (im / 'zero.jpg').write_bytes(b'')
    (lbs / 'zero.txt').write_text(GOOD_ROW + '\n')
    _good(tmp_path, 'cols')
    (lbs / 'cols.txt').write_text('0 0.5 0.5\n')
    _good(tmp_path, 'nolabel')
    (lbs / 'nolabel.txt').unlink()
    _good(tmp_path, 'empty')
    (lbs / 'empty.txt').write_text('')
    _good(tmp_path, 'tiny', hw=(5, 5))
    ds, lines = _load(tmp_path)
    assert _counts(ds) == (2, 1, 1, 3, 7)
    assert len([m for m in lines if 'WARNING' in m]) == 3
    assert sorted(Path(f).stem for f in ds.im_files) == ['a', 'b', 'empty', 'nolabel']


def test_all_corrupt_is_a_clear_error(tmp_path):
    im, lb = _dirs(tmp_path)
    (im / 'x.jpg').write_bytes(b'')
    (im / 'y.png').write_bytes(b'nope')
    with pytest.raises(DatasetError, match=r'No usable images in .*train: all 2 corrupt'):
        LoadImagesAndLabels(im, 64, 2)


def test_polygon_rows_become_boxes(tmp_path):
    _good(tmp_path, 'poly')
    lb = tmp_path / 'labels' / 'train' / 'poly.txt'
    lb.write_text('3 0.1 0.2 0.5 0.2 0.5 0.6 0.1 0.6\n')
    ds, _ = _load(tmp_path)
    assert np.allclose(ds.labels[0], [[3, 0.3, 0.4, 0.4, 0.4]])
    assert np.allclose(ds.segments[0][0], [[0.1, 0.2], [0.5, 0.2], [0.5, 0.6], [0.1, 0.6]])


def test_bom_and_crlf_label_files_are_fine(tmp_path):
    _good(tmp_path, 'win')
    lb = tmp_path / 'labels' / 'train' / 'win.txt'
    lb.write_bytes('\ufeff1 0.5 0.5 0.2 0.2\r\n0 0.3 0.3 0.1 0.1\r\n'.encode())
    ds, lines = _load(tmp_path)
    assert _counts(ds) == (1, 0, 0, 0, 1) and not lines[1:]
    assert np.allclose(ds.labels[0], [[1, 0.5, 0.5, 0.2, 0.2], [0, 0.3, 0.3, 0.1, 0.1]])

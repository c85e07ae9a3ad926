"""Dataset and loader: batch layout, hand-checked targets, rect shapes, flips, mosaic, caches, workers, DDP sampler."""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils.data.config import DatasetError, load_hyp
from utils.data.dataset import LoadImagesAndLabels, img2label_paths
from utils.data.label_cache import CACHE_VERSION, load_cache
from utils.data.loader import InfiniteDataLoader, collate_fn4, create_dataloader

# (h, w) of each training image and its label rows
SIZES = [(32, 64), (64, 48), (48, 64), (64, 32), (64, 64), (40, 64)]


def _hyp(**over):
    hyp = load_hyp('hyp.no-augmentation.yaml')
    hyp.update(over)
    return hyp


def _write(root: Path, i: int, hw, rows: list[str] | None, seed: int = 0) -> Path:
    im = np.random.default_rng(seed + i).integers(0, 255, (*hw, 3), dtype=np.uint8)
    f = root / 'images' / 'train' / f'{i}.png'
    f.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(f), im)
    if rows is not None:
        lb = root / 'labels' / 'train' / f'{i}.txt'
        lb.parent.mkdir(parents=True, exist_ok=True)
        lb.write_text(''.join(r + '\n' for r in rows))
    return f


@pytest.fixture
def ds(tmp_path) -> Path:
    for i, hw in enumerate(SIZES):
        _write(tmp_path / 'd', i, hw, [f'{i % 3} 0.5 0.5 0.5 0.5', '1 0.25 0.25 0.2 0.1'] if i != 5 else None)
    return tmp_path / 'd' / 'images' / 'train'


def test_img2label_paths():
    s = os.sep
    assert img2label_paths([f'{s}a{s}images{s}b{s}images{s}c.JPG', f'{s}x{s}images{s}y.png']) == \
        [f'{s}a{s}images{s}b{s}labels{s}c.txt', f'{s}x{s}labels{s}y.txt']


def test_batch_layout_and_counts(ds):
    loader, dataset = create_dataloader(ds, 64, 4, 32, workers=0)
    assert isinstance(loader, InfiniteDataLoader) and len(loader) == 2 and dataset.n == 6
    assert dataset.stats == dict(found=5, missing=1, empty=0, corrupt=0, total=6, cls_removed=0)
    imgs, targets, paths, shapes = next(iter(loader))
    assert imgs.shape == (4, 3, 64, 64) and imgs.dtype == torch.uint8
    assert targets.shape == (8, 6) and targets.dtype == torch.float32
    assert targets[:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all()
    assert len(paths) == 4 and paths[0].endswith('0.png') and len(shapes) == 4
    assert shapes[0] == ((32, 64), ((1.0, 1.0), (0.0, 16.0)))


def test_letterboxed_targets_hand_checked(ds):
    dataset = LoadImagesAndLabels(ds, 64, 2)
    img, lab, _, shapes = dataset[0]  # 32x64 image padded by 16 px top and bottom
    assert lab[:, 2:].numpy() == pytest.approx(np.array([[0.5, 0.5, 0.5, 0.25], [0.25, 0.375, 0.2, 0.05]]), abs=1e-6)
    assert (img[:, :16] == 114).all() and (img[:, 48:] == 114).all()
    raw = cv2.imread(dataset.im_files[0])[..., ::-1].transpose(2, 0, 1)  # BGR -> RGB, CHW
    assert (img[:, 16:48].numpy() == raw).all()
    dataset = LoadImagesAndLabels(ds, 32, 2)  # downscale 0.5 with INTER_AREA, long side 32
    img, lab, _, shapes = dataset[1]
    assert shapes == ((64, 48), ((0.5, 0.5), (4.0, 0.0))) and img.shape == (3, 32, 32)


def test_rect_batch_shapes(ds):
    loader, dataset = create_dataloader(ds, 64, 2, 32, rect=True, shuffle=True, workers=0)
    ar = dataset.shapes[:, 1] / dataset.shapes[:, 0]
    assert (np.diff(ar) >= 0).all()  # sorted by h/w: 0.5, 0.625, 0.75, 1, 1.33, 2
    assert dataset.batch_shapes.tolist() == [[64, 64], [64, 64], [64, 64]]
    assert [b[0].shape[2:] for b in loader] == [(64, 64)] * 3
    _, dataset = create_dataloader(ds, 64, 2, 32, rect=True, pad=0.5, workers=0)
    # batch 0: ratios 0.5, 0.625 -> [0.625, 1] * 2 + 0.5 = [1.75, 2.5] -> [2, 3] * 32; batch 1: 0.75, 1 -> [1, 1]
    # -> [2.5, 2.5] -> [3, 3] * 32; batch 2: 1.33, 2 -> [1, 1/1.33] -> [2.5, 2.0] -> [3, 2] * 32
    assert dataset.batch_shapes.tolist() == [[64, 96], [96, 96], [96, 64]]
    imgs, targets, _, shapes = next(iter(create_dataloader(ds, 64, 2, 32, rect=True, pad=0.5, workers=0)[0]))
    assert imgs.shape == (2, 3, 64, 96) and ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all()


def test_fliplr_and_flipud(ds):
    plain = LoadImagesAndLabels(ds, 64, 2)
    flipped = LoadImagesAndLabels(ds, 64, 2, augment=True, hyp=_hyp(fliplr=1.0, flipud=1.0))
    (a, la, _, _), (b, lb, _, _) = plain[0], flipped[0]
    assert (b.numpy() == a.numpy()[:, ::-1, ::-1]).all()
    assert lb[:, 2:4].numpy() == pytest.approx(1 - la[:, 2:4].numpy(), abs=1e-6)
    assert lb[:, 4:].numpy() == pytest.approx(la[:, 4:].numpy())


def test_mosaic_sample(ds):
    import random
    random.seed(0)
    np.random.seed(0)
    dataset = LoadImagesAndLabels(ds, 64, 4, augment=True, hyp=_hyp(mosaic=1.0, scale=0.5, translate=0.1))
    img4, lab4 = dataset.load_mosaic(0)
    assert img4.shape == (64, 64, 3)  # 2s x 2s canvas cropped back to s by the -s/2 border
    assert (lab4[:, 1:] >= 0).all() and (lab4[:, 1:] <= 64).all()
    for i in range(6):
        img, lab, _, shapes = dataset[i]
        assert img.shape == (3, 64, 64) and shapes is None
        assert ((lab[:, 2:] >= 0) & (lab[:, 2:] <= 1)).all() and set(lab[:, 1].tolist()) <= {0.0, 1.0, 2.0}


def test_mixup_and_no_mosaic_paths(ds):
    import random
    random.seed(0)
    mix = LoadImagesAndLabels(ds, 64, 4, augment=True, hyp=_hyp(mosaic=1.0, mixup=1.0))
    one = LoadImagesAndLabels(ds, 64, 4, augment=True, hyp=_hyp(mosaic=1.0))
    n_mix = sum(len(mix[i][1]) for i in range(6))
    n_one = sum(len(one[i][1]) for i in range(6))
    assert n_mix > n_one  # mixup concatenates a second mosaic's labels (seeded, so deterministic)
    flat = LoadImagesAndLabels(ds, 64, 4, augment=True, hyp=_hyp(mosaic=0.0, degrees=5.0))
    img, lab, _, shapes = flat[0]
    assert img.shape == (3, 64, 64) and shapes[0] == (32, 64) and ((lab[:, 2:] >= 0) & (lab[:, 2:] <= 1)).all()


def test_default_hyp_augment(ds):
    loader, dataset = create_dataloader(ds, 64, 3, 32, augment=True, workers=0, shuffle=True)
    assert dataset.hyp['mosaic'] == 1.0 and dataset.mosaic
    imgs, targets, _, _ = next(iter(loader))
    assert imgs.shape == (3, 3, 64, 64) and ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all()


def test_quad_collate(ds):
    dataset = LoadImagesAndLabels(ds, 64, 4)
    imgs, targets, paths, shapes = collate_fn4([dataset[i] for i in range(4)])
    assert imgs.shape == (1, 3, 128, 128) and len(paths) == 1
    assert (targets[:, 0] == 0).all() and ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all()
    assert len(targets) in (2, 8)  # first image upsampled, or all 4 tiled


def test_label_cache_reused_and_invalidated(ds):
    d1 = LoadImagesAndLabels(ds, 64, 2)
    cache_file = ds.parents[1] / 'labels' / 'train.cache'
    assert d1.cache_path == cache_file and cache_file.is_file()
    with np.load(cache_file, allow_pickle=False) as z:  # plain arrays only
        assert int(z['version']) == CACHE_VERSION and z['labels'].shape == (10, 5)
    mtime = cache_file.stat().st_mtime_ns
    LoadImagesAndLabels(ds, 64, 2)
    assert cache_file.stat().st_mtime_ns == mtime  # reused, not rewritten
    lb = ds.parents[1] / 'labels' / 'train' / '0.txt'
    st = lb.stat()
    lb.write_text('2 0.5 0.5 0.5 0.5\n1 0.25 0.25 0.2 0.1\n')  # same size, new class
    os.utime(lb, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert lb.stat().st_size == st.st_size
    d2 = LoadImagesAndLabels(ds, 64, 2)
    assert d2.labels[0][0, 0] == 2 and d1.labels[0][0, 0] == 0
    (ds.parents[1] / 'labels' / 'train' / '5.txt').write_text('0 0.5 0.5 0.1 0.1\n')  # was missing
    d3 = LoadImagesAndLabels(ds, 64, 2)
    assert d3.stats['missing'] == 0 and d3.stats['found'] == 6 and len(d3.labels[5]) == 1


def test_cache_garbage_is_rebuilt(ds):
    cache_file = ds.parents[1] / 'labels' / 'train.cache'
    cache_file.write_bytes(b'\x80\x04not a cache')
    assert load_cache(cache_file) is None
    assert LoadImagesAndLabels(ds, 64, 2).stats['found'] == 5
    assert load_cache(cache_file)['results'].tolist() == [5, 1, 0, 0, 6]


def test_cache_not_writeable_warns(ds):
    import logging
    blocker = ds.parents[1] / 'labels' / 'train.cache'
    blocker.mkdir()  # a directory where the cache file should go: unreadable and unwriteable as a file, even for root
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    from utils.core.logging import LOGGER
    LOGGER.addHandler(handler)
    try:
        assert LoadImagesAndLabels(ds, 64, 2).n == 6
    finally:
        LOGGER.removeHandler(handler)
    msgs = [r.getMessage() for r in records]
    assert any(m.startswith(f'WARNING ⚠️ Cache directory {blocker.parent} is not writeable') for m in msgs)
    assert blocker.is_dir() and not list(blocker.parent.glob('*.tmp'))


def test_txt_list_cache_location(ds):
    lst = ds.parents[1] / 'train.txt'
    lst.write_text('./images/train/0.png\n./images/train/1.png\n')
    dataset = LoadImagesAndLabels(lst, 64, 2)
    assert dataset.n == 2 and dataset.cache_path == ds.parents[1] / 'train.cache'


@pytest.mark.parametrize('cache', ['ram', 'disk'])
def test_image_cache_same_pixels(ds, cache):
    plain = LoadImagesAndLabels(ds, 48, 2)
    cached = LoadImagesAndLabels(ds, 48, 2, cache_images=cache)
    for i in range(6):
        assert (plain[i][0] == cached[i][0]).all()
    if cache == 'disk':
        npy = sorted(ds.glob('*.npy'))
        assert len(npy) == 6
        assert np.load(npy[0], allow_pickle=False).shape == (32, 64, 3)
        npy[0].write_bytes(b'junk')  # a broken .npy falls back to the image
        assert (cached[0][0] == plain[0][0]).all()
    else:
        assert all(im is not None for im in cached.ims) and cached.ims[1].shape == (48, 36, 3)


def test_single_cls_and_image_weights(ds):
    loader, dataset = create_dataloader(ds, 64, 2, 32, single_cls=True, image_weights=True, rect=True, workers=0)
    assert not isinstance(loader, InfiniteDataLoader) and not dataset.rect
    assert all((lb[:, 0] == 0).all() for lb in dataset.labels)
    dataset.indices = [3] * dataset.n  # what the trainer does with image weights
    assert all(dataset[i][2].endswith('3.png') for i in range(2))


def test_no_images_is_dataset_error(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DatasetError, match='No images found in .*empty'):
        LoadImagesAndLabels(tmp_path / 'empty', 64, 2)
    with pytest.raises(DatasetError, match='nothere does not exist'):
        create_dataloader(tmp_path / 'nothere', 64, 2, 32)


def test_training_without_labels_is_dataset_error(tmp_path):
    f = _write(tmp_path / 'd', 0, (32, 32), None)
    with pytest.raises(DatasetError, match=r"No labels found in .*train\.cache, can not start training"):
        LoadImagesAndLabels(f.parent, 64, 2, augment=True)
    assert LoadImagesAndLabels(f.parent, 64, 2).n == 1  # fine for validation: a background image


def test_workers_persistent_and_seeded(ds):
    hyp = _hyp(mosaic=1.0, scale=0.5, translate=0.1, fliplr=0.5, hsv_v=0.4)

    def run():
        loader, _ = create_dataloader(ds, 64, 2, 32, hyp=hyp, augment=True, workers=2, shuffle=True, seed=3)
        assert loader.num_workers == 2 and loader.persistent_workers
        epochs = [[(t.clone(), p) for _, t, p, _ in loader] for _ in range(2)]
        return epochs, loader._iterator

    (e1, it1), (e2, _) = run(), run()
    assert it1 is not None  # the worker pool survived the end of the epoch
    for a, b in zip(e1[0] + e1[1], e2[0] + e2[1]):
        assert a[1] == b[1] and torch.equal(a[0], b[0])  # same seed, same order and same augmentation
    assert [p for _, p in e1[0]] != [p for _, p in e1[1]] or len(e1[0]) == 1  # reshuffled per epoch


def test_distributed_sampler(ds, tmp_path):
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "pg"}', rank=0, world_size=1)
    try:
        loader, dataset = create_dataloader(ds, 64, 2, 32, rank=0, workers=0, shuffle=True)
        assert isinstance(loader.sampler, torch.utils.data.distributed.DistributedSampler)
        loader.sampler.set_epoch(1)
        assert sum(len(b[2]) for b in loader) == 6
    finally:
        dist.destroy_process_group()


def test_polygon_labels_cached_filtered_and_pasted(tmp_path):
    root = tmp_path / 'p'
    _write(root, 0, (64, 64), ['0 0.1 0.1 0.4 0.1 0.4 0.4 0.1 0.4'])
    _write(root, 1, (64, 64), ['1 0.5 0.5 0.2 0.2', '4 0.6 0.6 0.9 0.6 0.9 0.9'])
    _write(root, 2, (64, 64), ['0 0.5 0.5 0.2 0.2'])  # box-only file: no polygons
    ds = LoadImagesAndLabels(root / 'images' / 'train', 64, 2)
    assert [len(x) for x in ds.segments] == [1, 2, 0]
    assert np.allclose(ds.segments[1][0], [[0.4, 0.4], [0.6, 0.4], [0.6, 0.6], [0.4, 0.6]])  # box row -> rectangle
    assert np.allclose(ds.labels[1][1], [4, 0.75, 0.75, 0.3, 0.3])
    again = LoadImagesAndLabels(root / 'images' / 'train', 64, 2)  # from the cache
    assert all(np.array_equal(a, b) for sa, sb in zip(ds.segments, again.segments) for a, b in zip(sa, sb))
    filtered = LoadImagesAndLabels(root / 'images' / 'train', 64, 2, nc=2)
    assert len(filtered.segments[1]) == 1 and len(filtered.labels[1]) == 1
    import random
    random.seed(0)
    aug = LoadImagesAndLabels(root / 'images' / 'train', 64, 2, augment=True,
                              hyp=_hyp(mosaic=1.0, copy_paste=1.0, scale=0.3, degrees=10))
    for i in range(3):
        img, lab, _, _ = aug[i]
        assert img.shape == (3, 64, 64) and ((lab[:, 2:] >= 0) & (lab[:, 2:] <= 1)).all()


def test_workers_get_single_threaded_opencv(ds, monkeypatch):
    """OpenCV's pool is switched off in the parent before workers fork (they would oversubscribe the cores), and
    only when there are workers: a loader without them leaves the process's OpenCV alone."""
    calls = []
    monkeypatch.setattr(cv2, 'setNumThreads', calls.append)
    create_dataloader(ds, 64, 2, 32, workers=0)
    assert calls == []
    loader, _ = create_dataloader(ds, 64, 2, 32, workers=2)
    assert loader.num_workers >= 1 and calls == [0]

"""Augmentation numbers checked by hand: letterbox ratio/padding, perspective identity, mosaic placement, HSV, mixup."""
import random

import numpy as np
import pytest

from utils.data.augmentations import (
    augment_hsv,
    box_candidates,
    build_mosaic,
    copy_paste,
    letterbox,
    mixup,
    mosaic_placements,
    random_perspective,
    resample_segments,
    segment2box,
)


def _im(h, w, v=50):
    return np.full((h, w, 3), v, np.uint8)


@pytest.mark.parametrize('hw,kw,out_hw,ratio,pad,top_left', [
    # 45x100 -> r = 0.64 -> 64x29 (round(28.8)); 35 px of height padding: 17 top, 18 bottom
    ((45, 100), dict(new_shape=64, auto=False), (64, 64), (0.64, 0.64), (0.0, 17.5), (17, 0)),
    # auto: pad only to the next multiple of 32 -> 35 % 32 = 3 -> 1 top, 2 bottom
    ((45, 100), dict(new_shape=64, auto=True), (32, 64), (0.64, 0.64), (0.0, 1.5), (1, 0)),
    # no upscaling: r capped at 1, a 20x30 image sits in the middle of 64x64
    ((20, 30), dict(new_shape=64, auto=False, scaleup=False), (64, 64), (1.0, 1.0), (17.0, 22.0), (22, 17)),
    # scaleFill: stretched, no padding
    ((45, 100), dict(new_shape=64, auto=False, scaleFill=True), (64, 64), (0.64, 64 / 45), (0.0, 0.0), (0, 0)),
    # rectangular target (h, w)
    ((100, 200), dict(new_shape=(48, 64), auto=False), (48, 64), (0.32, 0.32), (0.0, 8.0), (8, 0)),
    # 2000x3: width 3 * 0.032 rounds to 0 -> kept at 1 px (cv2.resize used to assert); 63 px of width padding
    ((2000, 3), dict(new_shape=64, auto=False), (64, 64), (0.032, 0.032), (31.5, 0.0), (0, 31)),
])
def test_letterbox_numbers(hw, kw, out_hw, ratio, pad, top_left):
    im, r, p = letterbox(_im(*hw, v=50), **kw)
    assert im.shape == (*out_hw, 3) and im.dtype == np.uint8
    assert r == pytest.approx(ratio) and p == pytest.approx(pad)
    t, left = top_left
    assert (im[t, left] == 50).all()  # first image pixel
    if t:
        assert (im[t - 1, left] == 114).all()  # padding above it is gray 114
    if left:
        assert (im[t, left - 1] == 114).all()


def test_random_perspective_identity_and_border():
    im = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    t = np.array([[1, 10, 12, 40, 50]], float)
    out, tt = random_perspective(im, t.copy(), degrees=0, translate=0, scale=0, shear=0, perspective=0)
    assert (out == im).all() and tt == pytest.approx(t)
    out, tt = random_perspective(im, t.copy(), degrees=0, translate=0, scale=0, shear=0, border=(-16, -24))
    assert out.shape == (32, 48, 3)  # out = in + 2 * border
    assert tt[0, 1:] == pytest.approx([0, 0, 16, 32])  # shifted by (-24, -16) -> (-14, -4, 16, 34), clipped
    out, tt = random_perspective(im, None, degrees=10, translate=0.1, scale=0.5, shear=2, perspective=0.0005)
    assert out.shape == im.shape and tt.shape == (0, 5)


def test_random_perspective_scale_moves_boxes():
    random.seed(3)
    im = _im(100, 100)
    t = np.array([[0, 40, 40, 60, 60]], float)
    _, tt = random_perspective(im, t.copy(), degrees=0, translate=0, scale=0.5, shear=0)
    w = tt[0, 3] - tt[0, 1]
    assert 10 - 1e-6 <= w <= 30 + 1e-6 and tt[0, 1] + tt[0, 3] == pytest.approx(100)  # scaled about the centre


def test_box_candidates():
    before = np.array([[0, 0, 10, 10]] * 4, float).T
    after = np.array([[0, 0, 10, 10], [0, 0, 2, 10], [0, 0, 3, 3], [0, 0, 4, 4]], float).T
    assert box_candidates(before, after).tolist() == [True, False, False, True]
    assert box_candidates(np.array([[0, 0, 10, 10]], float).T, np.array([[0, 0, 300, 2.5]], float).T,
                          area_thr=0).tolist() == [False]  # aspect 120 > 100


def test_mosaic_placements_hand_checked():
    p = mosaic_placements(64, 80, 40, [(64, 64)] * 4)
    assert p[0] == ((16, 0, 80, 40), (0, 24, 64, 64))
    assert p[1] == ((80, 0, 128, 40), (0, 24, 48, 64))
    assert p[2] == ((16, 40, 80, 104), (0, 0, 64, 64))
    assert p[3] == ((80, 40, 128, 104), (0, 0, 48, 64))
    for a, b in p:  # canvas and image windows always have the same size
        assert (a[2] - a[0], a[3] - a[1]) == (b[2] - b[0], b[3] - b[1])


def test_build_mosaic_size_labels_and_crop():
    random.seed(1)
    s = 64
    ims = [_im(64, 48, v) for v in (10, 20, 30, 40)]
    labels = [np.array([[k, 0.5, 0.5, 0.5, 0.5]], np.float32) for k in range(4)]
    canvas, lab, segs = build_mosaic(ims, labels, s)
    assert segs == []
    assert canvas.shape == (2 * s, 2 * s, 3) and lab.shape == (4, 5)
    assert (lab[:, 1:] >= 0).all() and (lab[:, 1:] <= 2 * s).all()
    ys, xs = np.nonzero(canvas[..., 0] == 10)  # top-left tile ends at the centre (xc, yc)
    xc, yc = xs.max() + 1, ys.max() + 1
    assert s // 2 <= xc <= 3 * s // 2 and s // 2 <= yc <= 3 * s // 2
    expected = np.clip([xc - 36, yc - 48, xc - 12, yc - 16], 0, 2 * s)  # box centred in the 48x64 tile, clipped
    assert lab[0, 1:] == pytest.approx(expected)
    out, lab2 = random_perspective(canvas, lab, degrees=0, translate=0.1, scale=0.5, shear=0,
                                   border=(-s // 2, -s // 2))
    assert out.shape == (s, s, 3)
    assert (lab2[:, 1:] >= 0).all() and (lab2[:, 1:] <= s).all()


def test_augment_hsv_value_gain():
    im = _im(8, 8, 100)
    augment_hsv(im, 0, 0, 0)
    assert (im == 100).all()
    np.random.seed(0)
    r = np.random.uniform(-1, 1, 3) * [0, 0, 0.5] + 1
    np.random.seed(0)
    augment_hsv(im, 0, 0, 0.5)
    assert (im == int(100 * r[2])).all() and int(100 * r[2]) != 100


def test_mixup():
    np.random.seed(0)
    im, lb = mixup(_im(8, 8, 100), np.ones((2, 5)), _im(8, 8, 200), np.zeros((3, 5)))
    assert lb.shape == (5, 5) and lb[:2].sum() == 10 and im.dtype == np.uint8
    assert 130 <= int(im[0, 0, 0]) <= 170 and (im == im[0, 0, 0]).all()


def test_resample_and_segment2box():
    sq = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], float)
    (r,) = resample_segments([sq], n=9)  # closed: 5 vertices incl. the repeat, 9 points = every half edge
    assert r.shape == (9, 2)
    assert r.tolist() == [[0, 0], [5, 0], [10, 0], [10, 5], [10, 10], [5, 10], [0, 10], [0, 5], [0, 0]]
    assert segment2box(np.array([[-5.0, 2], [4, 3], [6, 12], [8, 9]]), 10, 10).tolist() == [4, 3, 8, 9]
    assert segment2box(np.array([[-5.0, 2]]), 10, 10).tolist() == [0, 0, 0, 0]


def test_random_perspective_uses_polygons():
    diamond = np.array([[50, 30], [70, 50], [50, 70], [30, 50]], float)
    t = np.array([[0, 30, 30, 70, 70]], float)
    im = _im(100, 100)
    kw = dict(degrees=40, translate=0, scale=0, shear=0)
    random.seed(5)
    _, with_poly = random_perspective(im, t.copy(), [diamond], **kw)
    random.seed(5)
    _, corners = random_perspective(im, t.copy(), None, **kw)
    wp, wc = with_poly[0, 3] - with_poly[0, 1], corners[0, 3] - corners[0, 1]
    # rotating by a: the diamond's box is 40 * max(|cos a|, |sin a|) wide, the rotated box's 40 * (|cos a| + |sin a|)
    assert 40 / np.sqrt(2) - 0.5 <= wp < wc - 1 and wc <= 40 * np.sqrt(2) + 1e-6
    assert with_poly[0, 1] + with_poly[0, 3] == pytest.approx(100, abs=0.2)  # still centred


def test_copy_paste_mirrors_objects():
    random.seed(0)
    im = np.zeros((100, 100, 3), np.uint8)
    im[40:60, 10:30] = 255
    labels = np.array([[3, 10, 40, 30, 60]], float)
    seg = [np.array([[10, 40], [30, 40], [30, 60], [10, 60]], float)]
    out, lab, segs = copy_paste(im.copy(), labels, seg, p=1.0)
    assert lab.tolist() == [[3, 10, 40, 30, 60], [3, 70, 40, 90, 60]] and len(segs) == 2
    assert (out[41:59, 71:89] == 255).all() and out[:, 31:69].max() == 0
    assert segs[1].tolist() == [[90, 40], [70, 40], [70, 60], [90, 60]]
    same = copy_paste(im.copy(), np.array([[3, 10, 40, 90, 60]], float),
                      [np.array([[10, 40], [90, 40], [90, 60], [10, 60]], float)], p=1.0)
    assert len(same[1]) == 1  # the mirror would cover the original by > 30 %: not pasted

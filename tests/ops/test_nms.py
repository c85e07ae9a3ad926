"""non_max_suppression: thresholds, classes, multi-label, autolabel rows, limits, dtypes and error messages."""
import logging

import numpy as np
import pytest
import torch
import torchvision

from utils.core.logging import LOGGER
from utils.ops.nms import _nms_first, non_max_suppression


def make_pred(rows, nc=3):
    """rows of (cx, cy, w, h, obj, cls, cls_prob) -> (1, n, 5+nc) with one hot-ish class scores."""
    p = torch.zeros(1, len(rows), 5 + nc)
    for k, (cx, cy, w, h, obj, c, pc) in enumerate(rows):
        p[0, k, :5] = torch.tensor([cx, cy, w, h, obj])
        p[0, k, 5 + c] = pc
    return p


def test_overlapping_same_class_suppressed_and_sorted():
    p = make_pred([(50, 50, 20, 20, 0.8, 1, 1.0), (52, 50, 20, 20, 0.9, 1, 1.0), (150, 150, 10, 10, 0.6, 1, 1.0)])
    out = non_max_suppression(p)
    assert len(out) == 1 and out[0].shape == (2, 6)
    np.testing.assert_allclose(out[0][:, 4].numpy(), [0.9, 0.6], atol=1e-6)
    np.testing.assert_allclose(out[0][0, :4].numpy(), [42, 40, 62, 60])  # xywh -> xyxy
    assert out[0][:, 5].tolist() == [1.0, 1.0]


def test_other_class_survives_unless_agnostic():
    p = make_pred([(50, 50, 20, 20, 0.9, 0, 1.0), (51, 50, 20, 20, 0.8, 2, 1.0)])
    assert non_max_suppression(p)[0].shape[0] == 2
    out = non_max_suppression(p, agnostic=True)[0]
    assert out.shape[0] == 1 and out[0, 5].item() == 0


def test_confidence_is_obj_times_cls():
    p = make_pred([(50, 50, 20, 20, 0.5, 0, 0.4), (150, 50, 20, 20, 0.5, 1, 0.6)])  # 0.2 and 0.3
    out = non_max_suppression(p, conf_thres=0.25)[0]
    assert out.shape[0] == 1
    assert out[0, 4].item() == pytest.approx(0.3) and out[0, 5].item() == 1


def test_multi_label_keeps_each_class_above_threshold():
    p = make_pred([(50, 50, 20, 20, 0.9, 0, 0.8)])
    p[0, 0, 5 + 2] = 0.5
    assert non_max_suppression(p, conf_thres=0.3)[0].shape[0] == 1
    out = non_max_suppression(p, conf_thres=0.3, multi_label=True)[0]
    assert sorted(out[:, 5].tolist()) == [0.0, 2.0]
    np.testing.assert_allclose(sorted(out[:, 4].tolist()), [0.45, 0.72], atol=1e-6)


def test_classes_filter_and_max_det():
    rows = [(20 * k + 10, 10, 8, 8, 0.9 - 0.01 * k, k % 3, 1.0) for k in range(9)]
    p = make_pred(rows)
    out = non_max_suppression(p, classes=[1])[0]
    assert out.shape[0] == 3 and set(out[:, 5].tolist()) == {1.0}
    assert non_max_suppression(p, max_det=4)[0].shape[0] == 4
    assert non_max_suppression(p, max_nms=2)[0].shape[0] == 2


def test_labels_appended_with_confidence_one():
    p = make_pred([(50, 50, 20, 20, 0.1, 0, 1.0)])  # below threshold
    labels = [torch.tensor([[2.0, 100.0, 100.0, 10.0, 20.0]])]
    out = non_max_suppression(p, labels=labels)[0]
    assert out.shape == (1, 6)
    np.testing.assert_allclose(out[0].numpy(), [95, 90, 105, 110, 1.0, 2.0])


def test_tuple_input_fp16_and_batch():
    p = make_pred([(50, 50, 20, 20, 0.9, 0, 1.0), (7000, 7000, 40, 40, 0.8, 2, 1.0)]).repeat(3, 1, 1)
    out = non_max_suppression((p.half(), [torch.zeros(1)]))
    assert len(out) == 3
    for o in out:
        assert o.dtype == torch.float16 and o.shape == (2, 6)


def test_empty_results():
    p = make_pred([(50, 50, 20, 20, 0.1, 0, 1.0)]).repeat(2, 1, 1)
    out = non_max_suppression(p)
    assert [o.shape for o in out] == [(0, 6), (0, 6)]
    assert non_max_suppression(torch.zeros(2, 0, 8))[1].shape == (0, 6)
    assert non_max_suppression(torch.zeros(0, 10, 8)) == []


@pytest.mark.parametrize('kw, name', [({'conf_thres': 25}, 'conf_thres'), ({'iou_thres': -0.1}, 'iou_thres')])
def test_invalid_thresholds_raise_clear_error(kw, name):
    with pytest.raises(ValueError, match=f'{name}=.* between 0.0 and 1.0'):
        non_max_suppression(make_pred([(5, 5, 2, 2, 0.9, 0, 1.0)]), **kw)


def test_bad_shape_raises_clear_error():
    with pytest.raises(ValueError, match=r'shape \(batch, n, 5 \+ nc\)'):
        non_max_suppression(torch.zeros(10, 8))


def test_time_limit_warns_and_stops():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    LOGGER.addHandler(handler)
    try:
        p = make_pred([(50, 50, 20, 20, 0.9, 0, 1.0)]).repeat(4, 1, 1)
        out = non_max_suppression(p, time_limit=0.0)
    finally:
        LOGGER.removeHandler(handler)
    assert any('NMS time limit 0.000s exceeded' in r.getMessage() for r in records)
    assert [o.shape[0] for o in out] == [1, 0, 0, 0]  # stopped after the first image


def greedy_nms_reference(boxes, scores, cls, iou_thres):
    """Plain greedy per-class NMS written out for the cross-check (tests only)."""
    order = np.argsort(-scores, kind='stable')
    keep = []
    for i in order:
        ok = True
        for j in keep:
            if cls[i] != cls[j]:
                continue
            xx1, yy1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            xx2, yy2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(0.0, xx2 - xx1) * max(0.0, yy2 - yy1)
            a = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
            b = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
            if inter / (a + b - inter) > iou_thres:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def test_matches_greedy_reference_on_random_boxes():
    g = torch.Generator().manual_seed(0)
    n, nc = 300, 4
    p = torch.zeros(1, n, 5 + nc)
    p[0, :, :2] = torch.rand(n, 2, generator=g) * 200
    p[0, :, 2:4] = torch.rand(n, 2, generator=g) * 60 + 5
    p[0, :, 4] = torch.rand(n, generator=g)
    p[0, :, 5:] = torch.rand(n, nc, generator=g)
    out = non_max_suppression(p, conf_thres=0.2, iou_thres=0.5, max_det=1000)[0].numpy()
    x = p[0].numpy().astype(np.float64)
    sc = x[:, 5:] * x[:, 4:5]
    conf, c = sc.max(1), sc.argmax(1)
    m = (x[:, 4] > 0.2) & (conf > 0.2)
    b = np.stack([x[:, 0] - x[:, 2] / 2, x[:, 1] - x[:, 3] / 2, x[:, 0] + x[:, 2] / 2, x[:, 1] + x[:, 3] / 2], 1)[m]
    keep = greedy_nms_reference(b, conf[m], c[m], 0.5)
    assert len(out) == len(keep) > 20
    np.testing.assert_allclose(out[:, 4], conf[m][keep], atol=1e-6)
    np.testing.assert_allclose(out[:, :4], b[keep], atol=1e-3)


@pytest.mark.parametrize('max_det, iou_thres', [(300, 0.6), (50, 0.45), (5000, 0.6), (1, 0.3)])
def test_nms_stopping_at_max_det_equals_batched_nms_then_the_cut(max_det, iou_thres):
    """The chunked NMS (4,000 sorted boxes, 6 groups, chunks of 1,024) keeps exactly what torchvision's batched_nms
    keeps, cut to max_det: when it stops early (300, 50, 1) and when it must go through every chunk (5000)."""
    g = torch.Generator().manual_seed(1)
    n = 4000
    xy, wh = torch.rand(n, 2, generator=g) * 224, torch.rand(n, 2, generator=g) * 60 + 4
    boxes = torch.cat((xy - wh / 2, xy + wh / 2), 1)
    scores = torch.rand(n, generator=g).sort(descending=True).values
    groups = torch.randint(0, 6, (n,), generator=g)
    full = torchvision.ops.batched_nms(boxes, scores, groups, iou_thres)
    got = _nms_first(boxes, scores, groups, iou_thres, max_det, chunk=1024)
    assert torch.equal(got, full[:max_det])
    assert len(full) > 300  # the early stops are real

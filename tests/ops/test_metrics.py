"""Matching, AP, P/R/F1, confusion matrix and fitness, pinned on hand-computed cases and checked against pycocotools.

YOLOv5's AP ('interp') integrates the precision envelope with the trapezoid rule over 101 linearly interpolated
recall points, which ends at the sentinel (recall 1, precision 0): a perfect class scores 0.995, and a class whose
recall stops at R gets a linear ramp from its last precision down to 0 at recall 1. pycocotools ('coco') averages the
best precision at recall >= r over the same 101 points and scores 0 where recall is never reached.
"""
import contextlib
import io

import numpy as np
import pytest
import torch

from utils.ops.metrics import ConfusionMatrix, ap_per_class, compute_ap, fitness, process_batch, smooth

IOUV = torch.linspace(0.5, 0.95, 10)


def det(*rows):
    return torch.tensor(rows, dtype=torch.float32).view(-1, 6)


def lab(*rows):
    return torch.tensor(rows, dtype=torch.float32).view(-1, 5)


def test_fitness_weights():
    x = np.array([[0.5, 0.6, 0.8, 0.5, 1.0, 2.0, 3.0], [1, 1, 0, 0, 0, 0, 0]])
    np.testing.assert_allclose(fitness(x), [0.1 * 0.8 + 0.9 * 0.5, 0.0])


def test_smooth_keeps_length_and_constant():
    y = np.r_[np.zeros(500), np.ones(500)]
    s = smooth(y, 0.1)
    assert s.shape == (1000,)
    assert s[0] == 0 and s[-1] == 1 and s[500] == pytest.approx(51 / 101)


def test_process_batch_perfect_and_shifted():
    labels = lab([0, 0, 0, 100, 100], [1, 200, 200, 250, 260])
    assert process_batch(det([0, 0, 100, 100, 0.9, 0], [200, 200, 250, 260, 0.8, 1]), labels, IOUV).all()
    # IoU 0.72 passes 0.50 ... 0.70 (5 of 10 thresholds)
    correct = process_batch(det([0, 0, 72, 100, 0.9, 0]), labels, IOUV)
    assert correct.dtype == torch.bool and correct.shape == (1, 10)
    assert correct[0].tolist() == [True] * 5 + [False] * 5
    # the right box with the wrong class is never correct
    assert not process_batch(det([0, 0, 100, 100, 0.9, 1]), labels, IOUV).any()


def test_process_batch_unique_matching():
    labels = lab([0, 0, 0, 100, 100])
    # two detections on one label: only one is a TP at each threshold. As YOLOv5 v7.0, the earlier (more confident)
    # detection wins wherever both pass; the better-IoU later one only where the first one fails.
    correct = process_batch(det([0, 0, 60, 100, 0.9, 0], [0, 0, 95, 100, 0.8, 0]), labels, IOUV)
    assert correct[0].tolist() == [True] * 3 + [False] * 7  # IoU 0.60
    assert correct[1].tolist() == [False] * 3 + [True] * 7  # IoU 0.95
    assert correct.sum(0).tolist() == [1] * 10
    # one detection overlapping two labels takes the better one; the other label stays free for another detection
    labels2 = lab([0, 0, 0, 100, 100], [0, 10, 0, 110, 100])
    correct = process_batch(det([8, 0, 108, 100, 0.9, 0], [0, 0, 100, 100, 0.8, 0]), labels2, IOUV)
    assert correct.all()


def test_process_batch_empty():
    assert process_batch(torch.zeros(0, 6), lab([0, 0, 0, 1, 1]), IOUV).shape == (0, 10)
    assert not process_batch(det([0, 0, 1, 1, 0.5, 0]), torch.zeros(0, 5), IOUV).any()


def test_compute_ap_perfect_curve():
    assert compute_ap(np.array([1.0]), np.array([1.0]))[0] == pytest.approx(0.995)  # YOLOv5's ceiling
    assert compute_ap(np.array([1.0]), np.array([1.0]), method='coco')[0] == pytest.approx(1.0)
    assert compute_ap(np.array([1.0]), np.array([1.0]), method='continuous')[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown method 'voc'"):
        compute_ap(np.array([1.0]), np.array([1.0]), method='voc')


def stats_for(dets_labels):
    """Per-image (detections, labels) -> the concatenated stats ap_per_class takes, as the validator builds them."""
    tp, conf, pcls, tcls = [], [], [], []
    for d, lb in dets_labels:
        tp.append(process_batch(d, lb, IOUV).numpy())
        conf.append(d[:, 4].numpy())
        pcls.append(d[:, 5].numpy())
        tcls.append(lb[:, 0].numpy())
    return [np.concatenate(x, 0) for x in (tp, conf, pcls, tcls)]


def test_ap_per_class_perfect_predictions():
    labels = lab([0, 0, 0, 50, 50], [1, 60, 60, 120, 100], [2, 10, 70, 40, 120], [2, 130, 10, 190, 40])
    dets = torch.cat((labels[:, 1:], torch.tensor([[0.9], [0.8], [0.7], [0.6]]), labels[:, :1]), 1)
    tp, fp, p, r, f1, ap, classes = ap_per_class(*stats_for([(dets, labels)])).as_tuple()
    assert classes.tolist() == [0, 1, 2]
    np.testing.assert_allclose(ap, 0.995)
    np.testing.assert_allclose(p, 1.0)
    np.testing.assert_allclose(r, 1.0, atol=1e-9)
    assert tp.tolist() == [1, 1, 2] and fp.tolist() == [0, 0, 0]
    *_, ap_coco, _ = ap_per_class(*stats_for([(dets, labels)]), method='coco').as_tuple()
    np.testing.assert_allclose(ap_coco, 1.0)


def test_ap_per_class_shifted_box():
    labels = lab([0, 0, 0, 100, 100])
    stats = stats_for([(det([0, 0, 72, 100, 0.9, 0]), labels)])  # IoU 0.72
    ap = ap_per_class(*stats).ap
    np.testing.assert_allclose(ap[0], [0.995] * 5 + [0.0] * 5)
    assert ap[:, 0].mean() == pytest.approx(0.995) and ap.mean() == pytest.approx(0.4975)
    ap = ap_per_class(*stats, method='coco').ap
    assert ap[:, 0].mean() == pytest.approx(1.0) and ap.mean() == pytest.approx(0.5)


def test_ap_false_positive_ranked_above_true_positive():
    # 2 labels; detections in confidence order TP, FP, TP: recall .5 .5 1, precision 1 .5 2/3
    labels = lab([0, 0, 0, 50, 50], [0, 100, 100, 150, 150])
    dets = det([0, 0, 50, 50, 0.9, 0], [60, 0, 90, 30, 0.8, 0], [100, 100, 150, 150, 0.7, 0])
    ap = ap_per_class(*stats_for([(dets, labels)])).ap[0, 0]
    # trapezoid on x = 0, .01, ..., 1 of the envelope: 1 up to 0.49, 2/3 from 0.50 to 0.99, 0 at 1.0
    hand = 0.49 + 0.01 * (1 + 2 / 3) / 2 + 0.49 * 2 / 3 + 0.01 * (2 / 3) / 2
    assert ap == pytest.approx(hand, abs=1e-9)
    ap_coco = ap_per_class(*stats_for([(dets, labels)]), method='coco').ap[0, 0]
    assert ap_coco == pytest.approx((51 * 1 + 50 * 2 / 3) / 101, abs=1e-9)
    # single label ranked under a false positive: envelope 0.5 everywhere before recall 1
    ap = ap_per_class(*stats_for([(det([60, 0, 90, 30, 0.9, 0], [0, 0, 50, 50, 0.8, 0]), labels[:1])])).ap[0, 0]
    assert ap == pytest.approx(0.99 * 0.5 + 0.01 * 0.25)


def test_missed_ground_truth_lowers_recall():
    labels = lab([0, 0, 0, 50, 50], [0, 100, 0, 150, 50], [0, 0, 100, 50, 150], [0, 100, 100, 150, 150])
    dets = det([0, 0, 50, 50, 0.9, 0], [100, 0, 150, 50, 0.8, 0])  # 2 of 4 found, no false positives
    tp, fp, p, r, f1, ap, _ = ap_per_class(*stats_for([(dets, labels)])).as_tuple()
    assert r[0] == pytest.approx(0.5) and p[0] == pytest.approx(1.0) and f1[0] == pytest.approx(2 / 3)
    assert tp[0] == 2 and fp[0] == 0
    assert ap[0, 0] == pytest.approx(0.75)  # 0.5 at precision 1, then the linear ramp to (1, 0): + 0.25
    assert ap_per_class(*stats_for([(dets, labels)]), method='coco').ap[0, 0] == pytest.approx(51 / 101)


def test_ap_per_class_no_predictions_and_no_labels():
    result = ap_per_class(np.zeros((0, 10)), np.zeros(0), np.zeros(0), np.array([0, 1, 1]))
    tp, fp, p, r, f1, ap, classes = result.as_tuple()
    assert classes.tolist() == [0, 1] and ap.shape == (2, 10) and not ap.any() and not r.any()
    result = ap_per_class(np.ones((2, 10)), np.array([.9, .8]), np.array([0, 1]), np.zeros(0))
    tp, fp, p, r, f1, ap, classes = result.as_tuple()
    assert len(classes) == 0 and ap.shape == (0, 10) and len(p) == 0
    # predictions of a class that has no labels are ignored
    tp, fp, p, r, f1, ap, classes = ap_per_class(np.array([[1] * 10, [0] * 10]), np.array([.9, .95]),
                                                 np.array([0, 5]), np.array([0])).as_tuple()
    assert classes.tolist() == [0] and ap[0, 0] == pytest.approx(0.995)


def test_confusion_matrix_counts():
    cm = ConfusionMatrix(nc=3)
    labels = lab([0, 0, 0, 50, 50], [1, 100, 100, 150, 150])
    dets = det([0, 0, 50, 50, 0.9, 0],  # correct class 0
               [100, 100, 150, 148, 0.8, 2],  # label 1 seen as class 2
               [200, 0, 240, 40, 0.7, 1],  # background seen as class 1
               [0, 100, 40, 140, 0.1, 1])  # below conf 0.25: ignored
    cm.process_batch(dets, labels)
    cm.process_batch(None, torch.tensor([2.0]))  # an image with a label and no detections
    expected = np.zeros((4, 4))
    expected[0, 0] = expected[2, 1] = expected[1, 3] = expected[3, 2] = 1
    np.testing.assert_array_equal(cm.matrix, expected)
    tp, fp = cm.tp_fp()
    assert tp.tolist() == [1, 0, 0] and fp.tolist() == [0, 1, 1]
    cm.process_batch(det([0, 0, 10, 10, 0.9, 1]), torch.zeros(0, 5))  # detections on an image without labels
    assert cm.matrix[1, 3] == 2


def random_case(seed=0, n_img=12, nc=3, size=320, n_low=0):
    """Images with well-separated ground truth and noisy detections (jittered hits, wrong classes, misses, FPs),
    plus ``n_low`` low-confidence random boxes per image, like a detector run at conf_thres 0.001."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n_img):
        gts, dets = [], []
        for gx in range(4):
            for gy in range(4):
                if rng.random() < 0.4:
                    continue
                w, h = rng.uniform(20, 70, 2)
                x1, y1 = gx * 80 + rng.uniform(0, 78 - w), gy * 80 + rng.uniform(0, 78 - h)
                c = int(rng.integers(nc))
                gts.append([c, x1, y1, x1 + w, y1 + h])
                if rng.random() < 0.85:  # detected, with a jitter that spans the IoU thresholds
                    j = rng.normal(0, 0.08, 4) * [w, h, w, h]
                    dc = c if rng.random() < 0.9 else int(rng.integers(nc))
                    dets.append([x1 + j[0], y1 + j[1], x1 + w + j[2], y1 + h + j[3], rng.uniform(0.2, 1), dc])
        for _ in range(int(rng.integers(0, 4))):  # false positives
            x1, y1 = rng.uniform(0, size - 40, 2)
            dets.append([x1, y1, x1 + rng.uniform(10, 40), y1 + rng.uniform(10, 40), rng.uniform(0, 0.6),
                         int(rng.integers(nc))])
        for _ in range(n_low):
            x1, y1 = rng.uniform(0, size - 60, 2)
            dets.append([x1, y1, x1 + rng.uniform(10, 60), y1 + rng.uniform(10, 60), rng.uniform(0.001, 0.2),
                         int(rng.integers(nc))])
        d = torch.tensor(dets, dtype=torch.float32).view(-1, 6)
        images.append((d[d[:, 4].argsort(descending=True)], torch.tensor(gts, dtype=torch.float32).view(-1, 5)))
    return images


def coco_eval(images, nc):
    """mAP50-95 and mAP50 from pycocotools on the same boxes."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = {'images': [{'id': i, 'width': 320, 'height': 320} for i in range(len(images))],
          'categories': [{'id': c, 'name': str(c)} for c in range(nc)], 'annotations': []}
    dt = []
    for i, (d, lb) in enumerate(images):
        for c, x1, y1, x2, y2 in lb.tolist():
            gt['annotations'].append({'id': len(gt['annotations']) + 1, 'image_id': i, 'category_id': int(c),
                                      'bbox': [x1, y1, x2 - x1, y2 - y1], 'area': (x2 - x1) * (y2 - y1),
                                      'iscrowd': 0})
        for x1, y1, x2, y2, s, c in d.tolist():
            dt.append({'image_id': i, 'category_id': int(c), 'bbox': [x1, y1, x2 - x1, y2 - y1], 'score': s})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        e = COCOeval(coco, coco.loadRes(dt), 'bbox')
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats[0], e.stats[1]


@pytest.mark.parametrize('seed', [0, 1])
@pytest.mark.parametrize('n_low', [0, 80])  # 80: < 100 boxes per image, COCO's maxDets
def test_ap_per_class_agrees_with_pycocotools(seed, n_low):
    images = random_case(seed, n_low=n_low)
    stats = stats_for(images)
    coco_map, coco_map50 = coco_eval(images, 3)
    assert 0.3 < coco_map < 0.9  # a case that actually exercises the curve
    ap_coco = ap_per_class(*stats, method='coco').ap  # same integration as pycocotools: agrees to rounding
    assert ap_coco.mean() == pytest.approx(coco_map, abs=1e-3)
    assert ap_coco[:, 0].mean() == pytest.approx(coco_map50, abs=1e-3)
    ap = ap_per_class(*stats).ap  # YOLOv5's own numbers
    if n_low:  # a realistic low-confidence tail: precision ends near 0, the ramp to (1, 0) adds almost nothing
        assert ap.mean() == pytest.approx(coco_map, abs=0.02)
        assert ap[:, 0].mean() == pytest.approx(coco_map50, abs=0.02)
    else:  # curves that stop at high precision: YOLOv5's linear ramp to (recall 1, precision 0) inflates AP
        assert 0.02 < ap.mean() - coco_map < 0.15

"""AutoAnchor: BPR/aat metric values, good anchors kept, bad anchors replaced (grid units, order), determinism."""
import copy

import numpy as np
import pytest
import torch

from models.yolo import DetectionModel
from utils.engine.autoanchor import anchor_metrics, check_anchors, kmean_anchors
from utils.engine.options import anchor_hyp


class LabelSet:
    """What AutoAnchor reads from LoadImagesAndLabels: shapes (n, 2) w,h and labels [(k, 5) cls x y w h]."""

    def __init__(self, n=200, lo=20, hi=300, seed=0, size=(640, 480)):
        rng = np.random.default_rng(seed)
        self.shapes = np.tile(np.array(size, dtype=np.float64), (n, 1))
        self.labels = []
        for _ in range(n):
            k = int(rng.integers(1, 4))
            wh = rng.uniform(lo, hi, (k, 2)) / np.array(size)  # pixels at long side 640 -> normalised
            self.labels.append(np.concatenate([np.zeros((k, 1)), np.full((k, 2), 0.5), wh], 1).astype(np.float32))




@pytest.fixture(scope='module')
def model():
    return DetectionModel('yolov5n.yaml', nc=3, verbose=False)


def test_anchor_metrics_hand_values():
    anchors = np.array([[10, 10], [40, 20]])
    wh = np.array([[10, 10], [20, 20], [45, 10], [100, 100]])
    # worse-side ratios: label (10,10): 1.0 and min(10/40, 10/20)=0.25; (20,20): 0.5 and 0.5; (45,10): min(.., 10/45
    # -> 0.222) and min(40/45, 10/20)=0.5; (100,100): 0.1 and 0.2. With thr 4 (1/thr = 0.25, strict >):
    # best > 0.25 for the first three labels -> BPR 3/4; anchors above: 1, 2, 1, 0 -> aat 4/4 = 1.0
    bpr, aat = anchor_metrics(anchors, wh, thr=4.0)
    assert bpr == pytest.approx(0.75) and aat == pytest.approx(1.0)
    assert anchor_metrics(anchors, wh, thr=11.0) == pytest.approx((1.0, 2.0))  # 1/11 < every ratio


def test_good_anchors_are_kept(model, log_lines):
    m = model.model[-1]
    before = m.anchors.clone()
    bpr = check_anchors(LabelSet(), model, thr=4.0, imgsz=640)
    assert bpr > 0.98
    assert torch.equal(m.anchors, before)
    line = [s for s in log_lines if 'Best Possible Recall' in s][0]
    assert 'AutoAnchor: ' in line and 'Current anchors are a good fit to dataset' in line
    assert f'{bpr:.3f} Best Possible Recall (BPR)' in line
    assert ' anchors/target, ' in line


def test_bad_anchors_are_replaced_in_grid_units(model, log_lines):
    model = copy.deepcopy(model)
    m = model.model[-1]
    with torch.no_grad():
        m.anchors[:] = 0.1  # 0.8 to 3.2 px: nothing fits labels of 20-300 px
    data = LabelSet()
    bpr = check_anchors(data, model, thr=4.0, imgsz=640, seed=0)
    assert bpr > 0.98
    assert any('Anchors are a poor fit to dataset' in s for s in log_lines)
    assert any('Done (optional: update model *.yaml' in s for s in log_lines)
    pixels = (m.anchors * m.stride.view(-1, 1, 1)).view(-1, 2)
    assert pixels.min() > 10 and pixels.max() < 400
    area = pixels.prod(1).view(3, 3).mean(1)
    assert area[0] < area[1] < area[2]  # small anchors on the stride-8 level
    # the value returned is the BPR of what the model holds now (same jitter seed as the check)
    rng = np.random.default_rng(0)
    shapes = 640 * data.shapes / data.shapes.max(1, keepdims=True) * rng.uniform(0.9, 1.1, (len(data.shapes), 1))
    wh = np.concatenate([lb[:, 3:5] * s for s, lb in zip(shapes, data.labels)])
    assert anchor_metrics(pixels.detach().numpy(), wh)[0] == pytest.approx(bpr)


def test_kmean_anchors_deterministic_sorted_and_fit():
    data = LabelSet(n=120, lo=8, hi=200, seed=1)
    a = kmean_anchors(data, n=6, img_size=640, thr=4.0, gen=200, verbose=False, seed=0)
    b = kmean_anchors(data, n=6, img_size=640, thr=4.0, gen=200, verbose=False, seed=0)
    c = kmean_anchors(data, n=6, img_size=640, thr=4.0, gen=200, verbose=False, seed=1)
    assert a.shape == (6, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (np.diff(a.prod(1)) >= 0).all()
    wh = np.concatenate([lb[:, 3:5] * 640 for lb in data.labels])
    assert anchor_metrics(a, wh)[0] > 0.98


def test_too_few_labels_fall_back_to_random_init(log_lines):
    data = LabelSet(n=2, seed=2)
    k = kmean_anchors(data, n=9, img_size=640, gen=50, verbose=False, seed=0)
    assert k.shape == (9, 2) and (k >= 2.0).all()
    assert any('switching strategies from kmeans to random init' in s for s in log_lines)


def test_mismatched_dataset_is_a_clear_error(model):
    data = LabelSet(n=3)
    data.labels = data.labels[:2]
    with pytest.raises(ValueError, match='dataset has 3 shapes but 2 label arrays'):
        check_anchors(data, model)


def test_hyp_anchor_count_gets_anchors_evolved_for_the_data(log_lines):
    """``anchors: 3`` in a hyp (the quick start's) builds placeholder anchors, 0-5 px on every level; AutoAnchor then
    puts in the anchors k-means and the GA evolve for the labels at the training size (same seed, same anchors)."""
    model = DetectionModel('yolov5n.yaml', nc=3, anchors=3, verbose=False)
    m = model.model[-1]
    pixels = lambda: (m.anchors * m.stride.view(-1, 1, 1)).view(-1, 2).detach().numpy()  # noqa: E731
    np.testing.assert_array_equal(pixels(), np.tile(np.arange(6.0).reshape(3, 2), (3, 1)))
    data = LabelSet(n=150, lo=20, hi=300, seed=3)  # 7-105 px at 224: the shapes dataset's range
    bpr = check_anchors(data, model, thr=4.0, imgsz=224, seed=0, evolve=True)  # what the trainer passes for it
    line = 'AutoAnchor: hyp anchors: 3, so 9 anchors are evolved for this dataset at 224 px...'
    assert any(line in s for s in log_lines)
    assert not any('poor fit' in s for s in log_lines) and bpr > 0.98
    evolved = kmean_anchors(data, n=9, img_size=224, thr=4.0, gen=1000, verbose=False, seed=0)
    np.testing.assert_allclose(pixels(), evolved, rtol=1e-6)
    assert pixels().max() < 130  # fitted to 224-px labels, not COCO's 373 x 326 at 640


def test_noautoanchor_drops_the_hyp_anchor_count(log_lines):
    """With --noautoanchor nothing would replace the placeholder anchors ``anchors: 3`` builds (YOLOv5 trains on them
    silently): the key is dropped with a line, the YAML's anchors kept; without the flag it stays."""
    hyp = {'lr0': 0.01, 'anchors': 3}
    assert anchor_hyp(hyp, noautoanchor=False) == hyp and not log_lines
    assert anchor_hyp(hyp, noautoanchor=True) == {'lr0': 0.01} and hyp['anchors'] == 3
    assert log_lines == ["hyp: anchors ignored: --noautoanchor keeps the model YAML's anchors (AutoAnchor would "
                         "evolve new ones for the data)"]
    assert anchor_hyp({'lr0': 0.01}, noautoanchor=True) == {'lr0': 0.01} and len(log_lines) == 1

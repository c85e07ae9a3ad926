"""ComputeLoss (YOLOv5 v7.0): values pinned on hand-computed toy cases, target assignment, focal loss, real model."""
import math

import pytest
import torch
import torch.nn as nn

from utils.ops.loss import ComputeLoss, FocalLoss, smooth_bce

HYP = {'box': 0.05, 'obj': 1.0, 'cls': 0.5, 'cls_pw': 1.0, 'obj_pw': 1.0, 'anchor_t': 4.0, 'fl_gamma': 0.0,
       'label_smoothing': 0.0}


class StubDetect(nn.Module):
    """Just the attributes ComputeLoss reads from Detect (anchors already in grid units)."""

    def __init__(self, nc, anchors, strides):
        super().__init__()
        self.nc, self.no = nc, nc + 5
        self.register_buffer('anchors', torch.tensor(anchors, dtype=torch.float32))
        self.nl, self.na = self.anchors.shape[:2]
        self.stride = torch.tensor(strides, dtype=torch.float32)


class StubModel(nn.Module):
    def __init__(self, nc=2, anchors=(((1.0, 1.0),),), strides=(8,), **hyp):
        super().__init__()
        self.model = nn.Sequential(StubDetect(nc, anchors, strides))
        self.hyp = {**HYP, **hyp}


def sig(x):
    return 1 / (1 + math.exp(-x))


def bce(x, y, pw=1.0):
    """BCEWithLogits by its definition: -(pw*y*log(sigmoid(x)) + (1-y)*log(1-sigmoid(x)))."""
    return -(pw * y * math.log(sig(x)) + (1 - y) * math.log(1 - sig(x)))


def ciou_xywh(b1, b2):
    """CIoU written out: IoU - rho^2/c^2 - alpha*v (as YOLOv5, eps 1e-7 only in the union and alpha)."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = b1, b2
    ix = max(0.0, min(x1 + w1 / 2, x2 + w2 / 2) - max(x1 - w1 / 2, x2 - w2 / 2))
    iy = max(0.0, min(y1 + h1 / 2, y2 + h2 / 2) - max(y1 - h1 / 2, y2 - h2 / 2))
    inter = ix * iy
    iou = inter / (w1 * h1 + w2 * h2 - inter + 1e-7)
    cw = max(x1 + w1 / 2, x2 + w2 / 2) - min(x1 - w1 / 2, x2 - w2 / 2)
    ch = max(y1 + h1 / 2, y2 + h2 / 2) - min(y1 - h1 / 2, y2 - h2 / 2)
    c2 = cw ** 2 + ch ** 2 + 1e-7
    rho2 = (x2 - x1) ** 2 + (y2 - y1) ** 2
    v = 4 / math.pi ** 2 * (math.atan(w2 / h2) - math.atan(w1 / h1)) ** 2
    alpha = v / (v - iou + 1 + 1e-7)
    return iou - (rho2 / c2 + v * alpha)


def test_hand_computed_toy_case():
    """1 level, 1 anchor (1x1 cell), 4x4 grid, nc=2, batch 2; one target whose centre sits on a cell centre."""
    model = StubModel(cls_pw=1.3, obj_pw=0.8, label_smoothing=0.1)
    p = torch.full((2, 1, 4, 4, 7), -2.0)  # every objectness logit -2 except the positive cell below
    logits = [1.0, -0.5, 0.3, -0.2, 0.5, 0.2, -0.3]  # x y w h obj cls0 cls1 at image 0, cell (gj=1, gi=1)
    p[0, 0, 1, 1] = torch.tensor(logits)
    # target: image 0, class 1, centre (0.375, 0.375) -> grid (1.5, 1.5); size 0.3 x 0.2 -> grid (1.2, 0.8)
    targets = torch.tensor([[0, 1, 0.375, 0.375, 0.3, 0.2]])
    loss, items = ComputeLoss(model)([p], targets)

    # 1) assignment: x % 1 = 0.5 is not < 0.5 on any side, so only the centre cell (1, 1); tbox = (0.5, 0.5, 1.2, 0.8)
    # 2) decoded prediction: xy = 2*sigmoid - 0.5, wh = (2*sigmoid)^2 * anchor(1, 1)
    px, py = 2 * sig(1.0) - 0.5, 2 * sig(-0.5) - 0.5
    pw, ph = (2 * sig(0.3)) ** 2, (2 * sig(-0.2)) ** 2
    ciou = ciou_xywh((px, py, pw, ph), (0.5, 0.5, 1.2, 0.8))
    lbox = (1 - ciou) * 0.05  # mean over 1 positive, times the box gain
    # 3) objectness: target = clamp(CIoU, 0) at the positive cell, 0 at the other 31 cells (2 images x 16), mean,
    #    times balance[0] = 4.0, times the obj gain 1.0; pos_weight 0.8 applies to the positive term only
    tobj = max(ciou, 0.0)
    lobj = (bce(0.5, tobj, 0.8) + 31 * bce(-2.0, 0.0)) / 32 * 4.0
    # 4) class: smoothed targets (cn, cp) = (0.05, 0.95), class 1 is the true one, mean over 2 logits, pw 1.3
    lcls = (bce(0.2, 0.05, 1.3) + bce(-0.3, 0.95, 1.3)) / 2 * 0.5
    # worked on paper: pred (0.9621, 0.2551, 1.3199, 0.8106); inter 0.7979 * 0.5604 = 0.4471; IoU 0.4471/1.5828
    # = 0.2825; rho^2/c^2 = 0.2735/4.0686 = 0.0672; alpha*v ~ 4e-7 -> CIoU 0.2152
    assert ciou == pytest.approx(0.2152, abs=2e-4)
    torch.testing.assert_close(items, torch.tensor([lbox, lobj, lcls]), rtol=1e-5, atol=1e-6)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(2 * (lbox + lobj + lcls), rel=1e-5)  # x batch size 2


def test_single_class_model_has_no_class_loss():
    model = StubModel(nc=1)
    p = torch.zeros((1, 1, 4, 4, 6))
    _, items = ComputeLoss(model)([p], torch.tensor([[0, 0, 0.375, 0.375, 0.25, 0.25]]))
    # perfect box (sigmoid(0)=0.5 -> xy 0.5, wh 1.0): CIoU 1, box loss 0; objectness target 1 at one cell of 16
    assert items[0].item() == pytest.approx(0.0, abs=1e-6)
    assert items[1].item() == pytest.approx((bce(0, 1.0) + 15 * bce(0, 0.0)) / 16 * 4.0, rel=1e-5)
    assert items[2].item() == 0.0


def test_zero_targets_give_only_objectness_loss():
    model = StubModel()
    p = torch.full((3, 1, 4, 4, 7), 0.7)
    loss, items = ComputeLoss(model)([p], torch.zeros((0, 6)))
    lobj = bce(0.7, 0.0) * 4.0  # every cell has target 0; balance 4.0; obj gain 1.0
    torch.testing.assert_close(items, torch.tensor([0.0, lobj, 0.0]))
    assert loss.item() == pytest.approx(3 * lobj, rel=1e-5)


def _assign(model, targets, shape=(1, 1, 4, 4, 7)):
    p = [torch.zeros(shape)]
    tcls, tbox, indices, anchors = ComputeLoss(model).build_targets(p, targets)
    b, a, gj, gi = indices[0]
    return tcls[0], tbox[0], list(zip(b.tolist(), a.tolist(), gj.tolist(), gi.tolist())), anchors[0]


def test_target_near_cell_corner_claims_three_cells():
    # grid (2.3, 1.2): fractional parts < 0.5 on x and y -> centre (gi 2, gj 1), left (1, 1), up (2, 0)
    tcls, tbox, cells, _ = _assign(StubModel(), torch.tensor([[0, 1, 2.3 / 4, 1.2 / 4, 0.25, 0.25]]))
    assert cells == [(0, 0, 1, 2), (0, 0, 1, 1), (0, 0, 0, 2)]
    torch.testing.assert_close(tbox, torch.tensor([[0.3, 0.2, 1, 1], [1.3, 0.2, 1, 1], [0.3, 1.2, 1, 1]]))
    assert tcls.tolist() == [1, 1, 1]
    # grid (2.7, 2.6): fractional parts > 0.5 -> centre (2, 2), right (3, 2), down (2, 3); offsets in [-0.5, 1.5]
    _, tbox, cells, _ = _assign(StubModel(), torch.tensor([[0, 0, 2.7 / 4, 2.6 / 4, 0.25, 0.25]]))
    assert cells == [(0, 0, 2, 2), (0, 0, 2, 3), (0, 0, 3, 2)]
    torch.testing.assert_close(tbox[:, :2], torch.tensor([[0.7, 0.6], [-0.3, 0.6], [0.7, -0.4]]))


def test_no_neighbour_across_the_image_border():
    # grid (0.3, 3.8): left needs x > 1 (no), down needs ny - y > 1 (no), so only the centre cell
    _, _, cells, _ = _assign(StubModel(), torch.tensor([[0, 0, 0.3 / 4, 3.8 / 4, 0.25, 0.25]]))
    assert cells == [(0, 0, 3, 0)]


def test_anchor_t_rejects_badly_shaped_pairs():
    model = StubModel(anchors=(((1.0, 1.0), (4.0, 4.0)),))
    # centre on a cell centre (one cell each); sizes in grid units: 2.5x2.5 fits both anchors (ratios 2.5, 1.6);
    # 4.5x4.5 fits only anchor 1 (4.5 > 4); 5x0.5 fits neither (ratios 5 and 8)
    targets = torch.tensor([[0, 0, 0.375, 0.375, 2.5 / 4, 2.5 / 4],
                            [0, 1, 0.625, 0.625, 4.5 / 4, 4.5 / 4],
                            [0, 2, 0.375, 0.625, 5.0 / 4, 0.5 / 4]])
    tcls, _, cells, anchors = _assign(model, targets)
    assert sorted((c, a) for c, (_, a, _, _) in zip(tcls.tolist(), cells)) == [(0, 0), (0, 1), (1, 1)]
    torch.testing.assert_close(anchors, torch.tensor([[1.0, 1.0], [4.0, 4.0], [4.0, 4.0]]))
    assert len(_assign(StubModel(anchor_t=5.5), targets[2:])[2]) == 1  # a looser threshold accepts 5x0.5
    model = StubModel(anchors=(((1.0, 1.0), (4.0, 4.0)),))
    assert _assign(model, targets[2:])[2] == []  # every pair rejected: no positives, the loss is objectness only
    _, items = ComputeLoss(model)([torch.zeros((1, 2, 4, 4, 7))], targets[2:])
    assert items[0].item() == 0.0 and items[2].item() == 0.0 and items[1].item() == pytest.approx(bce(0, 0) * 4.0)


def test_smooth_bce_values():
    assert smooth_bce(0.0) == (1.0, 0.0)
    assert smooth_bce(0.1) == pytest.approx((0.95, 0.05))
    assert smooth_bce(0.2) == pytest.approx((0.9, 0.1))


def test_focal_loss_known_values():
    fl = FocalLoss(nn.BCEWithLogitsLoss(reduction='none'), gamma=2.0, alpha=0.25)
    out = fl(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0]))
    # x=0, y=1: bce = ln 2, p_t = 0.5, alpha_t = 0.25 -> ln2 * 0.25 * 0.5^2
    # x=2, y=0: bce = ln(1 + e^2), p_t = 1 - sigmoid(2), alpha_t = 0.75 -> bce * 0.75 * sigmoid(2)^2
    expected = [math.log(2) * 0.25 * 0.25, math.log(1 + math.e ** 2) * 0.75 * sig(2.0) ** 2]
    torch.testing.assert_close(out, torch.tensor(expected))
    mean = FocalLoss(nn.BCEWithLogitsLoss(), gamma=2.0)(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0]))
    assert mean.item() == pytest.approx(sum(expected) / 2, rel=1e-6)


def test_fl_gamma_switches_both_losses_to_focal():
    loss = ComputeLoss(StubModel(fl_gamma=1.5))
    assert isinstance(loss.BCEcls, FocalLoss) and isinstance(loss.BCEobj, FocalLoss)
    assert loss.BCEobj.gamma == 1.5 and loss.BCEobj.alpha == 0.25
    _, items = loss([torch.full((1, 1, 4, 4, 7), 0.7)], torch.zeros((0, 6)))
    assert items[1].item() == pytest.approx(bce(0.7, 0.0) * 0.75 * sig(0.7) ** 1.5 * 4.0, rel=1e-5)


def test_three_level_balance_and_autobalance():
    anchors = (((1.0, 1.0),), ((1.0, 1.0),), ((1.0, 1.0),))
    model = StubModel(anchors=anchors, strides=(8, 16, 32))
    assert ComputeLoss(model).balance == [4.0, 1.0, 0.4]
    p = [torch.full((1, 1, n, n, 7), -1.0) for n in (8, 4, 2)]
    _, items = ComputeLoss(model)(p, torch.zeros((0, 6)))
    assert items[1].item() == pytest.approx(bce(-1.0, 0.0) * (4.0 + 1.0 + 0.4), rel=1e-5)
    auto = ComputeLoss(model, autobalance=True)
    auto(p, torch.zeros((0, 6)))
    obji = bce(-1.0, 0.0)
    raw = [b * 0.9999 + 0.0001 / obji for b in (4.0, 1.0, 0.4)]
    assert auto.ssi == 1
    assert auto.balance == pytest.approx([r / raw[1] for r in raw], rel=1e-5)


def test_missing_hyp_is_a_clear_error():
    model = StubModel()
    del model.hyp['anchor_t']
    with pytest.raises(ValueError, match=r"missing key\(s\) \['anchor_t'\]"):
        ComputeLoss(model)
    model.hyp = None
    with pytest.raises(ValueError, match='model.hyp must be a dict'):
        ComputeLoss(model)


def test_real_detection_model_loss_is_finite_and_reaches_every_detect_parameter():
    from models.yolo import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel('yolov5n.yaml', nc=3, verbose=False)
    model.hyp = dict(HYP)
    model.train()
    p = model(torch.rand(2, 3, 64, 64))
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.3, 0.4], [0, 2, 0.2, 0.7, 0.1, 0.1], [1, 1, 0.6, 0.3, 0.5, 0.2]])
    loss, items = ComputeLoss(model)(p, targets)
    assert torch.isfinite(loss).all() and loss.item() > 0
    assert items.shape == (3,) and (items > 0).all() and not items.requires_grad
    loss.backward()
    detect = model.model[-1]
    for name, param in detect.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_anchors_are_read_from_detect_at_call_time():
    """AutoAnchor and the trainer's model.half().float() replace Detect.anchors after the loss may have been built."""
    model = StubModel()
    loss = ComputeLoss(model)
    model.half().float()  # replaces every buffer tensor
    model.model[-1].anchors.fill_(2.0)
    _, _, indices, anchors = loss.build_targets([torch.zeros((1, 1, 4, 4, 7))],
                                                torch.tensor([[0, 0, 0.375, 0.375, 0.5, 0.5]]))
    torch.testing.assert_close(anchors[0], torch.tensor([[2.0, 2.0]]))

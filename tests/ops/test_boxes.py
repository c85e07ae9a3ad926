"""Box conversions, letterbox rescaling and IoU variants, pinned on hand-computed numbers."""
import math

import numpy as np
import pytest
import torch

from utils.ops.boxes import (
    bbox_ioa,
    bbox_iou,
    box_iou,
    clip_boxes,
    scale_boxes,
    xyn2xy,
    xywh2xyxy,
    xywhn2xyxy,
    xyxy2xywh,
    xyxy2xywhn,
)

XYXY = [[10.0, 20.0, 50.0, 100.0], [0.0, 0.0, 4.0, 2.0]]
XYWH = [[30.0, 60.0, 40.0, 80.0], [2.0, 1.0, 4.0, 2.0]]


@pytest.mark.parametrize('kind', ['torch', 'numpy'])
def test_xyxy_xywh_round_trip(kind):
    conv = torch.tensor if kind == 'torch' else np.array
    a = conv(XYXY)
    b = xyxy2xywh(a)
    assert type(b) is type(a)
    np.testing.assert_allclose(np.asarray(b), XYWH)
    np.testing.assert_allclose(np.asarray(xywh2xyxy(b)), XYXY)
    np.testing.assert_allclose(np.asarray(a), XYXY)  # input untouched


@pytest.mark.parametrize('kind', ['torch', 'numpy'])
def test_normalised_conversions(kind):
    conv = torch.tensor if kind == 'torch' else np.array
    xywhn = conv([[0.5, 0.5, 0.5, 0.25]])
    xyxy = xywhn2xyxy(xywhn, w=200, h=100, padw=3, padh=7)
    np.testing.assert_allclose(np.asarray(xyxy), [[53.0, 44.5, 153.0, 69.5]])
    back = xyxy2xywhn(conv([[50.0, 37.5, 150.0, 62.5]]), w=200, h=100)
    np.testing.assert_allclose(np.asarray(back), [[0.5, 0.5, 0.5, 0.25]])
    pts = xyn2xy(conv([[0.25, 0.5]]), w=200, h=100, padw=1, padh=2)
    np.testing.assert_allclose(np.asarray(pts), [[51.0, 52.0]])


def test_xyxy2xywhn_clip_clips_outside_boxes():
    x = np.array([[-10.0, -5.0, 120.0, 60.0]])
    y = xyxy2xywhn(x, w=100, h=50, clip=True)
    np.testing.assert_allclose(y, [[0.5, 0.5, 1.0, 1.0]])


@pytest.mark.parametrize('kind', ['torch', 'numpy'])
def test_clip_boxes_in_place(kind):
    conv = torch.tensor if kind == 'torch' else np.array
    b = conv([[-5.0, -1.0, 700.0, 300.0]])
    out = clip_boxes(b, (240, 640))
    assert out is b
    np.testing.assert_allclose(np.asarray(b), [[0, 0, 640, 240]])


def test_scale_boxes_inverts_letterbox():
    # original 480x640 (h, w) letterboxed into 320x320: gain 0.5, image 240x320, pad 40 px top and bottom
    boxes = torch.tensor([[10.0, 50.0, 110.0, 150.0]])
    out = scale_boxes((320, 320), boxes.clone(), (480, 640))
    np.testing.assert_allclose(out.numpy(), [[20.0, 20.0, 220.0, 220.0]])
    # explicit ratio_pad from the dataloader gives the same answer
    out2 = scale_boxes((320, 320), boxes.clone(), (480, 640), ratio_pad=((0.5, 0.5), (0.0, 40.0)))
    np.testing.assert_allclose(out2.numpy(), out.numpy())
    # and the result is clipped to the original image
    far = scale_boxes((320, 320), torch.tensor([[300.0, 270.0, 330.0, 330.0]]), (480, 640))
    np.testing.assert_allclose(far.numpy(), [[600.0, 460.0, 640.0, 480.0]])


def test_box_iou_matrix_values():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 5.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou.numpy(), [[1.0, 0.5, 0.0], [25 / 175, 0.0, 0.0]], atol=1e-6)
    assert isinstance(box_iou(a.numpy(), b.numpy()), np.ndarray)


def test_box_iou_degenerate_is_zero_not_nan():
    z = torch.zeros(1, 4)
    assert box_iou(z, z).item() == 0.0
    assert box_iou(torch.zeros(0, 4), torch.zeros(3, 4)).shape == (0, 3)


def test_bbox_ioa():
    out = bbox_ioa(np.array([0, 0, 10, 10.0]), np.array([[5, 5, 15, 15.0], [0, 0, 2, 2.0], [20, 20, 30, 30.0]]))
    np.testing.assert_allclose(out, [0.25, 1.0, 0.0], atol=1e-6)


def test_bbox_iou_variants_hand_computed():
    # two 2x2 boxes offset by 1 in x: inter 2, union 6, enclosing 3x2 (area 6, diag^2 13), centre distance^2 1
    b1 = torch.tensor([[1.0, 1.0, 2.0, 2.0]])  # xywh
    b2 = torch.tensor([[2.0, 1.0, 2.0, 2.0]])
    iou = bbox_iou(b1, b2).item()
    assert iou == pytest.approx(1 / 3, abs=1e-6)
    assert bbox_iou(b1, b2, GIoU=True).item() == pytest.approx(1 / 3, abs=1e-6)  # enclosing area == union
    assert bbox_iou(b1, b2, DIoU=True).item() == pytest.approx(1 / 3 - 1 / 13, abs=1e-6)
    assert bbox_iou(b1, b2, CIoU=True).item() == pytest.approx(1 / 3 - 1 / 13, abs=1e-6)  # same aspect: v = 0
    # xyxy input gives the same IoU
    assert bbox_iou(xywh2xyxy(b1), xywh2xyxy(b2), xywh=False).item() == pytest.approx(1 / 3, abs=1e-6)


def test_bbox_iou_ciou_aspect_term():
    b1 = torch.tensor([[0.0, 0.0, 2.0, 2.0]])  # square
    b2 = torch.tensor([[0.0, 0.0, 4.0, 2.0]])  # 2:1, same centre
    iou = 4 / 8
    v = 4 / math.pi ** 2 * (math.atan(2.0) - math.atan(1.0)) ** 2
    alpha = v / (v - iou + 1)
    rho_c = 0.0
    assert bbox_iou(b1, b2, CIoU=True).item() == pytest.approx(iou - (rho_c + alpha * v), abs=1e-6)
    # GIoU for disjoint boxes goes negative
    g = bbox_iou(torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[4.0, 0.0, 2.0, 2.0]]), GIoU=True).item()
    assert g == pytest.approx(0 - (12 - 8) / 12, abs=1e-6)


def test_bbox_iou_broadcast_and_gradient():
    b1 = torch.tensor([[5.0, 5.0, 4.0, 4.0]], requires_grad=True)
    b2 = torch.tensor([[5.0, 5.0, 4.0, 4.0], [6.0, 5.0, 4.0, 2.0], [50.0, 50.0, 1.0, 1.0]])
    out = bbox_iou(b1, b2, CIoU=True)
    assert out.shape == (3, 1)
    assert out[0].item() == pytest.approx(1.0, abs=1e-5)
    (1 - out).mean().backward()
    assert torch.isfinite(b1.grad).all() and b1.grad.abs().sum() > 0

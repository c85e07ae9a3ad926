"""Validation: hand-computed mAP, agreement with pycocotools on the same predictions, outputs and the val.py CLI.

A fake model returns predictions chosen by the test (in original-image pixels, mapped into the letterboxed input the
loader produced), so every number the validator prints can be derived by hand.
"""
import json
import re
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import val
from utils.data.config import ConfigError
from utils.data.loader import create_dataloader
from utils.engine.evaluator import HEADER, EvalOptions, Evaluator, validate

NAMES = {0: 'red', 1: 'green', 2: 'blue'}
COLOURS = ((40, 40, 230), (40, 200, 40), (230, 60, 40))  # BGR




def write_images(root, boxes_per_image, sizes):
    """Images (w, h) with filled rectangles and YOLO labels; ``boxes_per_image``: [[cls, x1, y1, x2, y2], ...]."""
    (root / 'images').mkdir(parents=True)
    (root / 'labels').mkdir(parents=True)
    for i, (boxes, (w, h)) in enumerate(zip(boxes_per_image, sizes)):
        im = np.full((h, w, 3), 114, np.uint8)
        rows = []
        for c, x1, y1, x2, y2 in boxes:
            cv2.rectangle(im, (int(x1), int(y1)), (int(x2) - 1, int(y2) - 1), COLOURS[int(c)], -1)
            rows.append(f'{int(c)} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} '
                        f'{(y2 - y1) / h:.6f}')
        cv2.imwrite(str(root / 'images' / f'{i:03d}.png'), im)
        (root / 'labels' / f'{i:03d}.txt').write_text('\n'.join(rows) + '\n' if rows else '')
    return root / 'images'


class FakeModel(nn.Module):
    """Returns, for each image of the batch, the predictions registered for its file (original pixels xyxy, conf,
    cls), mapped into the letterboxed input through the batch's (ratio, pad), as raw (B, N, 5+nc) head output.
    Like YOLOv5's scale_boxes, one gain (the width ratio) serves both axes, so the mapping inverts exactly."""

    def __init__(self, preds_by_stem: dict, nc: int):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))
        self.preds, self.nc, self.batch = preds_by_stem, nc, None

    def forward(self, im):
        from pathlib import Path

        _, paths, shapes = self.batch[1:]
        out = torch.zeros(im.shape[0], max([1, *(len(v) for v in self.preds.values())]), 5 + self.nc)
        for b, (path, (_, ((rw, _), (pw, ph)))) in enumerate(zip(paths, shapes)):
            for j, (x1, y1, x2, y2, conf, cls) in enumerate(self.preds.get(Path(path).stem, [])):
                x1, x2 = x1 * rw + pw, x2 * rw + pw
                y1, y2 = y1 * rw + ph, y2 * rw + ph
                out[b, j, :5] = torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, conf])
                out[b, j, 5 + int(cls)] = 1.0
        return out


class SpyLoader:
    """Iterates a real dataloader and hands each batch to the fake model (its side channel)."""

    def __init__(self, loader, model):
        self.loader, self.model = loader, model
        self.dataset, self.batch_size = loader.dataset, loader.batch_size

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            self.model.batch = batch
            yield batch


def run_validate(img_dir, preds, nc=3, imgsz=64, batch_size=2, **kw):
    loader = create_dataloader(str(img_dir), imgsz, batch_size, 32, pad=0.5, rect=kw.pop('rect', False),
                               workers=0, single_cls=kw.get('single_cls', False))[0]
    model = FakeModel(preds, nc)
    names = kw.pop('names', {i: NAMES[i] for i in range(nc)})
    return evaluate(model, SpyLoader(loader, model), names, **kw)


def evaluate(model, loader, names, compute_loss=None, **options):
    """validate() with an Evaluator built from EvalOptions(**options), in YOLOv5's return form."""
    evaluator = Evaluator(names, EvalOptions(**options), dataset=loader.dataset, compute_loss=compute_loss)
    results = validate(model, loader, evaluator)
    return results.as_tuple(), results.maps, results.times


# Two images: a 96x64 (w x h) image with two boxes and a 64x64 image with one box; imgsz 64 letterboxes the first.
GT = [[[0, 10, 8, 40, 40], [1, 50, 20, 86, 56]], [[2, 12, 12, 44, 52]]]
SIZES = [(96, 64), (64, 64)]


def perfect():
    return {'000': [[10, 8, 40, 40, 0.9, 0], [50, 20, 86, 56, 0.8, 1]], '001': [[12, 12, 44, 52, 0.7, 2]]}


@pytest.fixture
def gt_dir(tmp_path):
    return write_images(tmp_path / 'ds', GT, SIZES)


def test_perfect_predictions(gt_dir, log_text):
    (mp, mr, map50, map_, *losses), maps, times = run_validate(gt_dir, perfect())
    assert map50 == pytest.approx(1.0) and map_ == pytest.approx(1.0)
    assert mp == pytest.approx(1.0) and mr == pytest.approx(1.0)
    assert losses == [0.0, 0.0, 0.0] and len(times) == 3
    np.testing.assert_allclose(maps, [1.0] * 3)
    # YOLOv5's own integration (trapezoid ending at the (1, 0) sentinel) caps a perfect set at 0.995
    (_, _, map50, map_, *_), _, _ = run_validate(gt_dir, perfect(), ap_method='interp')
    assert map50 == pytest.approx(0.995) and map_ == pytest.approx(0.995)
    out = log_text.getvalue()
    assert HEADER in out and 'Class     Images  Instances          P          R      mAP50   mAP50-95' in out
    assert '                   all          2          3' in out
    for name in NAMES.values():  # nc < 50 and not training: per-class rows
        assert f'{name:>22s}          2          1' in out
    assert 'Speed: ' in out and 'per image at shape (2, 3, 64, 64)' in out


def test_perfect_predictions_pycocotools(gt_dir, tmp_path, log_text):
    (_, _, map50, map_, *_), _, _ = run_validate(gt_dir, perfect(), save_json=True, save_dir=tmp_path / 'run')
    assert map50 == pytest.approx(1.0) and map_ == pytest.approx(1.0)  # pycocotools' figures
    assert 'pycocotools mAP50 1 mAP50-95 1 | this project mAP50 1 mAP50-95 1' in log_text.getvalue()
    gt = json.loads((tmp_path / 'run/annotations.json').read_text())
    np.testing.assert_allclose([a['bbox'] for a in gt['annotations']],
                               [[10, 8, 30, 32], [50, 20, 36, 36], [12, 12, 32, 40]], atol=1e-3)
    assert [im['id'] for im in gt['images']] == [0, 1] and [im['width'] for im in gt['images']] == [96, 64]
    pred = json.loads((tmp_path / 'run/predictions.json').read_text())
    assert len(pred) == 3
    p0 = next(p for p in pred if p['category_id'] == 1)
    assert p0['image_id'] == 0 and p0['score'] == pytest.approx(0.8)
    assert p0['bbox'] == pytest.approx([50, 20, 36, 36], abs=0.01)  # back in original pixels


def shifted():
    # red box shifted right by 4 px in a 30x32 box: IoU = 26*32 / (2*30*32 - 26*32) = 0.7647 -> TP at 0.50..0.75
    p = perfect()
    p['000'][0] = [14, 8, 44, 40, 0.9, 0]
    return p


def test_shifted_box_hand_computed(gt_dir):
    (_, _, map50, map_, *_), maps, _ = run_validate(gt_dir, shifted())
    assert map50 == pytest.approx(1.0)
    # red: 6 of 10 thresholds -> 0.6; green and blue perfect
    np.testing.assert_allclose(maps, [0.6, 1.0, 1.0], atol=1e-6)
    assert map_ == pytest.approx((0.6 + 2) / 3)
    (_, _, _, map_, *_), _, _ = run_validate(gt_dir, shifted(), ap_method='interp')
    assert map_ == pytest.approx((0.6 + 2) / 3 * 0.995)


def test_shifted_box_pycocotools(gt_dir, tmp_path):
    (_, _, map50, map_, *_), _, _ = run_validate(gt_dir, shifted(), save_json=True, save_dir=tmp_path)
    assert map50 == pytest.approx(1.0) and map_ == pytest.approx((0.6 + 2) / 3)


def test_missed_and_false_positive(gt_dir):
    # blue missed entirely, one false positive for red in the empty corner of image 1 at lower confidence
    p = perfect()
    p['001'] = [[50, 50, 60, 60, 0.3, 0]]
    (mp, mr, map50, map_, *_), maps, _ = run_validate(gt_dir, p)
    # red: TP (0.9) then FP (0.3): AP = 1; green perfect; blue: no predictions -> AP 0
    np.testing.assert_allclose(maps, [1.0, 1.0, 0.0], atol=1e-6)
    assert map50 == pytest.approx(2 / 3)
    # P and R are read at the max smoothed-F1 confidence, where red's precision is interpolated between 1 and 0.5
    assert mr == pytest.approx(2 / 3) and 0.5 < mp < 2 / 3


def random_predictions(gt_boxes, sizes, rng, miss=0.2, fp=2):
    """Jittered copies of most gt boxes with random confidences plus random false positives (original pixels)."""
    preds = {}
    for i, (boxes, (w, h)) in enumerate(zip(gt_boxes, sizes)):
        rows = []
        for c, x1, y1, x2, y2 in boxes:
            if rng.random() < miss:
                continue
            bw, bh = x2 - x1, y2 - y1
            j = rng.normal(0, 0.08, 4) * [bw, bh, bw, bh]
            rows.append([x1 + j[0], y1 + j[1], x2 + j[2], y2 + j[3], rng.uniform(0.05, 1), c])
        for _ in range(fp):
            x, y = rng.uniform(0, w - 12), rng.uniform(0, h - 12)
            rows.append([x, y, x + rng.uniform(6, 12), y + rng.uniform(6, 12), rng.uniform(0.01, 0.6),
                         rng.integers(0, 3)])
        preds[f'{i:03d}'] = rows
    return preds


def random_scene(rng, n, w, h):
    boxes = []
    for _ in range(rng.integers(1, 4)):
        bw, bh = rng.uniform(10, 30, 2)
        x, y = rng.uniform(2, w - bw - 2), rng.uniform(2, h - bh - 2)
        boxes.append([int(rng.integers(0, 3)), x, y, x + bw, y + bh])
    return boxes


def test_matches_pycocotools_on_random_predictions(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [(128, 64) if i % 2 else (64, 128) for i in range(24)]  # exact letterbox ratios (0.5)
    gt = [random_scene(rng, i, w, h) for i, (w, h) in enumerate(sizes)]
    img_dir = write_images(tmp_path / 'ds', gt, sizes)
    preds = random_predictions(gt, sizes, rng)
    (_, _, ours50, ours, *_), _, _ = run_validate(img_dir, preds, batch_size=8, ap_method='interp')
    (_, _, coco50, coco, *_), _, _ = run_validate(img_dir, preds, batch_size=8, save_json=True,
                                                  save_dir=tmp_path / 'run')
    (_, _, step50, step, *_), _, _ = run_validate(img_dir, preds, batch_size=8)
    assert 0.3 < coco < 0.9  # a non-trivial case
    # Same predictions, same matching in original pixels: integrated as pycocotools does, the numbers agree
    # (left differences: YOLOv5 matches greedily by IoU, COCO by confidence; labels pass through the letterbox).
    assert step50 == pytest.approx(coco50, abs=0.005)
    assert step == pytest.approx(coco, abs=0.005)
    # YOLOv5's trapezoid AP ramps precision to 0 at recall 1 where recall stops short, so it is higher here
    assert 0 < ours50 - coco50 < 0.08 and 0 < ours - coco < 0.08


def test_plots_and_save_txt(gt_dir, tmp_path):
    run = tmp_path / 'run'
    run_validate(gt_dir, perfect(), save_dir=run, plots=True, save_txt=True, save_conf=True)
    for f in ('confusion_matrix.png', 'PR_curve.png', 'F1_curve.png', 'P_curve.png', 'R_curve.png',
              'val_batch0_labels.jpg', 'val_batch0_pred.jpg'):
        assert (run / f).stat().st_size > 1000, f
    assert not (run / 'val_batch1_labels.jpg').exists()  # one batch only
    rows = np.loadtxt(run / 'labels/000.txt', ndmin=2)
    # cls cx cy w h conf, normalised by the ORIGINAL 96x64 image; NMS orders by confidence
    np.testing.assert_allclose(rows, [[0, 25 / 96, 24 / 64, 30 / 96, 32 / 64, 0.9],
                                      [1, 68 / 96, 38 / 64, 36 / 96, 36 / 64, 0.8]], atol=2e-3)
    assert (run / 'labels/001.txt').read_text().startswith('2 ')


def test_single_cls_and_hybrid(gt_dir, tmp_path):
    p = perfect()
    p['000'][1][5] = 0  # green box predicted as red: wrong class, right place
    (_, _, map50, _, *_), maps, _ = run_validate(gt_dir, p)
    assert maps[1] == 0  # the green label is never found
    (_, _, map50, _, *_), maps, _ = run_validate(gt_dir, p, single_cls=True)
    assert map50 == pytest.approx(1.0) and maps.shape == (1,)
    # hybrid labels: ground truth is appended to the predictions with confidence 1 -> everything found
    (_, _, map50, _, *_), _, _ = run_validate(gt_dir, {}, save_hybrid=True, save_dir=tmp_path / 'h')
    assert map50 == pytest.approx(1.0)
    assert len(np.loadtxt(tmp_path / 'h/labels/000.txt', ndmin=2)) == 2  # --save-hybrid implies --save-txt


def test_no_labels_warning(tmp_path, log_text):
    img_dir = write_images(tmp_path / 'ds', [[], []], SIZES)
    (mp, mr, map50, map_, *_), maps, _ = run_validate(img_dir, perfect())
    assert (mp, mr, map50, map_) == (0, 0, 0, 0)
    assert 'no labels found in val set, can not compute metrics without labels' in log_text.getvalue()


def test_training_call_losses_and_quiet(gt_dir, log_text):
    """With compute_loss (the trainer), losses are averaged over batches; no per-class rows and no speed line."""

    class WithTrainOut(FakeModel):
        def forward(self, im):
            return super().forward(im), [torch.ones(1)]

    loader = create_dataloader(str(gt_dir), 64, 1, 32, pad=0.5, workers=0)[0]
    model = WithTrainOut(perfect(), 3)
    model.train()
    calls = []

    def compute_loss(p, targets):
        calls.append(len(targets))
        return torch.ones(1), torch.tensor([1.0, 2.0, 3.0])

    (*_, box, obj, cls), _, _ = evaluate(model, SpyLoader(loader, model), NAMES, compute_loss=compute_loss)
    assert (box, obj, cls) == (1.0, 2.0, 3.0) and sorted(calls) == [1, 2]  # 2 batches of 1 image
    assert model.training  # the caller's mode is restored
    out = log_text.getvalue()
    assert '                   all          2          3' in out and 'red  ' not in out and 'Speed' not in out


@pytest.mark.parametrize('bf16, is_backend, expect', [(True, False, torch.bfloat16), (False, False, None),
                                                       (True, True, None)])
def test_bf16_option_autocasts_pytorch_models_on_the_cpu(gt_dir, bf16, is_backend, expect):
    """``bf16`` (the trainer's per-epoch validation under bf16) runs a PyTorch model under CPU bf16 autocast; never an
    exported backend, and without the option nothing is autocast."""

    class Recording(FakeModel):
        def forward(self, im):
            on = torch.is_autocast_enabled('cpu')
            self.dtypes.append(torch.get_autocast_dtype('cpu') if on else None)
            return super().forward(im)

    loader = create_dataloader(str(gt_dir), 64, 2, 32, pad=0.5, workers=0)[0]
    model = Recording(perfect(), 3)
    model.dtypes, model.is_backend = [], is_backend
    evaluator = Evaluator(NAMES, EvalOptions(bf16=bf16), dataset=loader.dataset)
    map50 = validate(model, SpyLoader(loader, model), evaluator).map50
    assert model.dtypes == [expect] and map50 == pytest.approx(1.0)


def test_save_dir_required(gt_dir):
    with pytest.raises(ValueError, match='save_dir is required'):
        run_validate(gt_dir, perfect(), save_json=True)


# ----------------------------------------------------------------- val.py end to end


@pytest.fixture(scope='module')
def trained_like(tmp_path_factory):
    """A checkpoint (2 classes) and a 2-class dataset YAML."""
    from tests.commands.test_export import make_checkpoint, make_model
    from tests.helpers import write_dataset

    tmp = tmp_path_factory.mktemp('valpy')
    pt = make_checkpoint(make_model('yolov5n.yaml'), tmp / 'best.pt', names={0: 'class0', 1: 'class1'})
    return pt, write_dataset(tmp / 'ds', n_train=1, n_val=4, nc=2, imgsz=64)


@pytest.mark.slow
def test_val_py_outputs(trained_like, tmp_path, log_text):
    pt, data = trained_like
    (mp, mr, map50, map_, *losses), maps, times = val.run(
        data=data, weights=[str(pt)], imgsz=64, batch_size=2, workers=0, project=tmp_path, name='exp',
        save_json=True, save_txt=True, save_conf=True, verbose=True)
    run = tmp_path / 'exp'
    assert maps.shape == (2,) and len(times) == 3 and losses == [0.0, 0.0, 0.0]
    for f in ('confusion_matrix.png', 'PR_curve.png', 'val_batch0_labels.jpg', 'val_batch1_pred.jpg',
              'best_predictions.json', 'annotations.json'):
        assert (run / f).is_file(), f
    assert len(list((run / 'labels').glob('*.txt'))) >= 1
    out = log_text.getvalue()
    m = re.search(r'pycocotools mAP50 (\S+) mAP50-95 (\S+) \| this project mAP50 (\S+) mAP50-95 (\S+)', out)
    assert m and float(m.group(1)) == pytest.approx(map50, abs=1e-3) and float(m.group(2)) == pytest.approx(map_,
                                                                                                          abs=1e-3)
    assert 'Speed: ' in out and 'at shape (2, 3, 64, 64)' in out
    # a second run increments the run directory, as YOLOv5
    val.run(data=data, weights=pt, imgsz=64, batch_size=2, workers=0, project=tmp_path, name='exp', plots=False,
            task='speed')
    assert (tmp_path / 'exp2').is_dir()


def test_val_py_errors(trained_like, tmp_path):
    pt, data = trained_like
    from tests.helpers import write_dataset

    data3 = write_dataset(tmp_path / 'ds3', n_train=1, n_val=1, nc=3, imgsz=64)
    with pytest.raises(ConfigError, match=r'best\.pt \(2 classes\) trained on different --data than what you passed '
                                          r'\(3 classes\)'):
        val.run(data=data3, weights=pt, imgsz=64, workers=0, project=tmp_path)
    opt = val.parse_opt(['--weights', str(tmp_path / 'nope.pt'), '--data', str(data), '--img', '64'])
    assert (opt.conf_thres, opt.iou_thres, opt.max_det, opt.batch_size, opt.task) == (0.001, 0.6, 300, 32, 'val')
    with pytest.raises(SystemExit, match=r'val\.py: .*nope\.pt does not exist'):
        val.main(opt)
    opt = val.parse_opt(['--weights', str(pt), '--data', str(tmp_path / 'missing.yaml')])
    with pytest.raises(SystemExit, match=r'val\.py: .*missing\.yaml'):
        val.main(opt)



def test_val_py_class_check_for_exports(trained_like, tmp_path):
    """ONNX and TorchScript files say their nc (output width, names metadata): a 2-class export on a 3-class dataset
    is the same one-line error as the .pt (it ended in an IndexError inside the metrics)."""
    import export
    from tests.helpers import write_dataset

    pt, _ = trained_like
    files = export.run(weights=pt, imgsz=(64, 64), include=('onnx', 'torchscript'))
    data3 = write_dataset(tmp_path / 'ds3', n_train=1, n_val=1, nc=3, imgsz=64)
    for f in files:
        with pytest.raises(ConfigError, match=rf'{f.name} \(2 classes\) trained on different --data than what you '
                                              r'passed \(3 classes\)'):
            val.run(data=data3, weights=f, imgsz=64, workers=0, project=tmp_path, trust_weights=True)

def test_val_study(trained_like, tmp_path, log_text):
    """--task study: one row per size in YOLOv5's 10-column layout, study.zip and study.png; a missing weights file
    next to a good one is left out with one line."""
    pt, data = trained_like
    save_dir = val.study([str(pt), str(tmp_path / 'nope.pt')], data=data, sizes=(64, 96), project=tmp_path,
                         batch_size=2, workers=0)
    assert save_dir == tmp_path / 'exp'
    txt = save_dir / f'study_{Path(data).stem}_best.txt'
    rows = np.loadtxt(txt, ndmin=2)
    assert rows.shape == (2, 10)
    assert (rows[:, 4:7] == 0).all() and (rows[:, 7:] >= 0).all() and (rows[:, 8] > 0).all()
    assert zipfile.ZipFile(save_dir / 'study.zip').namelist() == [txt.name]
    assert (save_dir / 'study.png').stat().st_size > 10000
    assert 'study: ' in log_text.getvalue() and 'nope.pt left out' in log_text.getvalue()
    with pytest.raises(ConfigError, match='study: no weights file could be validated'):
        val.study(str(tmp_path / 'nope.pt'), data=data, sizes=(64,), project=tmp_path)
    opt = val.parse_opt(['--task', 'study', '--weights', str(pt)])
    assert opt.task == 'study'

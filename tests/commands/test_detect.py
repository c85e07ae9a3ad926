"""detect.py on images and a video: annotated outputs, labels, crops, console lines; bad sources; official YOLOv5
.pt files through detect.py and val.py."""
import copy
import re

import cv2
import numpy as np
import pytest
import torch
import yaml

import detect
import val
from tests.commands.test_export import NAMES, make_checkpoint, make_model, read_labels
from tests.helpers import draw_image
from utils.data.sources import SourceError

IMGSZ = 64




@pytest.fixture(scope='module')
def model():
    return make_model('yolov5n.yaml')


@pytest.fixture(scope='module')
def weights(model, tmp_path_factory):
    return make_checkpoint(model, tmp_path_factory.mktemp('w') / 'model.pt')


def write_video(path, n=4, w=80, h=64, seed=3):
    rng = np.random.default_rng(seed)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 5, (w, h))
    for _ in range(n):
        im, _ = draw_image(rng, max(w, h), 2)
        vw.write(np.ascontiguousarray(im[:h, :w]))
    vw.release()
    return path


@pytest.fixture
def source(tmp_path):
    d = tmp_path / 'src'
    d.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate((64, 96)):
        im, _ = draw_image(rng, size, 2)
        cv2.imwrite(str(d / f'im{i}.jpg'), im)
    write_video(d / 'clip.avi')
    return d


def run_detect(weights, source, tmp_path, **kw):
    kw = {'imgsz': [IMGSZ], 'conf_thres': 0.3, 'project': tmp_path / 'runs', 'name': 'exp', **kw}
    return detect.run(weights=weights, source=source, **kw)


@pytest.mark.slow
def test_images_and_video(weights, source, tmp_path, log_text):
    run = run_detect(weights, source, tmp_path, save_txt=True, save_conf=True, save_crop=True)
    assert run == tmp_path / 'runs/exp'
    # annotated images keep their names and sizes; the video is written as .mp4 with every frame
    assert cv2.imread(str(run / 'im0.jpg')).shape == (64, 64, 3)
    assert cv2.imread(str(run / 'im1.jpg')).shape == (96, 96, 3)
    cap = cv2.VideoCapture(str(run / 'clip.mp4'))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (80, 64)
    cap.release()
    labels = read_labels(run / 'labels')
    assert set(labels) <= {'im0.txt', 'im1.txt', 'clip_1.txt', 'clip_2.txt', 'clip_3.txt', 'clip_4.txt'}
    rows = np.concatenate(list(labels.values()))
    assert len(rows) >= 4 and rows.shape[1] == 6
    assert set(rows[:, 0]) <= {0, 1} and (rows[:, 1:5] >= 0).all() and (rows[:, 1:5] <= 1).all()
    assert ((rows[:, 5] >= 0.3) & (rows[:, 5] <= 1)).all()
    crops = list((run / 'crops').rglob('*.jpg'))
    assert {c.parent.name for c in crops} <= set(NAMES.values())
    assert len(crops) == len(rows)  # one crop per detection
    out = log_text.getvalue()
    assert len(re.findall(r'^image [12]/3 .*im[01]\.jpg: \d+x\d+ ', out, re.M)) == 2
    assert len(re.findall(r'^video 3/3 \([1-4]/4\) .*clip\.avi: 64x64 ', out, re.M)) == 4
    assert re.search(r'Speed: [\d.]+ms pre-process, [\d.]+ms inference, [\d.]+ms NMS per image at shape '
                     r'\(1, 3, 64, 64\)', out)
    assert f'labels saved to {run / "labels"}' in out and 'Results saved to' in out


def test_label_values_match_model(weights, model, tmp_path):
    """Labels are the model's NMS output rescaled to the original image, normalised (cx cy w h)."""
    from utils.ops.nms import non_max_suppression

    rng = np.random.default_rng(5)
    im, _ = draw_image(rng, IMGSZ, 2)
    cv2.imwrite(str(tmp_path / 'a.png'), im)
    run = run_detect(weights, tmp_path / 'a.png', tmp_path, save_txt=True, save_conf=True)
    m = copy.deepcopy(model).fuse().eval()
    x = torch.from_numpy(im[:, :, ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        det = non_max_suppression(m(x)[0], 0.3, 0.45, max_det=1000)[0]
    xyxy = det[:, :4].clamp(0, IMGSZ).round()  # scale_boxes clips to the image, then detect.py rounds
    ref = np.c_[det[:, 5], (xyxy[:, 0] + xyxy[:, 2]) / 2 / IMGSZ, (xyxy[:, 1] + xyxy[:, 3]) / 2 / IMGSZ,
                (xyxy[:, 2] - xyxy[:, 0]) / IMGSZ, (xyxy[:, 3] - xyxy[:, 1]) / IMGSZ, det[:, 4]]
    got = read_labels(run / 'labels')['a.txt']
    np.testing.assert_allclose(got, ref[np.lexsort(ref.T[::-1])], atol=1e-4)


def test_vid_stride_nosave_classes(weights, source, tmp_path):
    run = run_detect(weights, source / 'clip.avi', tmp_path, vid_stride=2, save_txt=True, nosave=True, classes=[1])
    assert not list(run.glob('*.mp4'))  # --nosave
    labels = read_labels(run / 'labels')
    assert set(labels) <= {'clip_1.txt', 'clip_2.txt'}  # 4 frames, every 2nd
    assert all((v[:, 0] == 1).all() for v in labels.values())  # --classes 1


def test_default_source_generated(weights, tmp_path, monkeypatch):
    default = tmp_path / 'data/images'
    monkeypatch.setattr(detect, 'DEFAULT_SOURCE', default)
    run = run_detect(weights, default, tmp_path)
    assert sorted(p.name for p in default.iterdir()) == [f'shapes_{i}.jpg' for i in range(4)]
    assert sorted(p.name for p in run.glob('*.jpg')) == [f'shapes_{i}.jpg' for i in range(4)]


def test_bad_sources(weights, source, tmp_path, log_text):
    with pytest.raises(SourceError, match=r'nothere\.jpg does not exist'):
        run_detect(weights, tmp_path / 'nothere.jpg', tmp_path)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(SourceError, match=r'No images or videos found in .*empty'):
        run_detect(weights, tmp_path / 'empty', tmp_path)
    # an unreadable image and a video that cannot be opened, next to good files: warned, the rest is processed
    (source / 'broken.jpg').write_bytes(b'\xff\xd8 not really a jpeg')
    (source / 'broken.mp4').write_bytes(b'\x00' * 64)
    run = run_detect(weights, source, tmp_path)
    out = log_text.getvalue()
    assert re.search(r'skipping .*broken\.jpg: unreadable or corrupt image', out)
    assert re.search(r'skipping .*broken\.mp4: video', out)
    assert sorted(p.name for p in run.iterdir() if p.is_file()) == ['clip.mp4', 'im0.jpg', 'im1.jpg']
    # only bad files: a clear error after the warnings
    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / 'x.png').write_bytes(b'nope')
    with pytest.raises(SourceError, match='no readable images or videos in .*bad'):
        run_detect(weights, bad, tmp_path)


def test_unwritable_outputs_warn_and_the_rest_is_saved(weights, source, tmp_path, log_text, monkeypatch):
    """An image OpenCV cannot write and a video it cannot open are one warning each and a count at the end; the
    other outputs are saved, and a .mpo source (readable, not writable by OpenCV) is saved as .jpg."""
    from utils.viz import imagefile

    (source / 'im2.mpo').write_bytes((source / 'im0.jpg').read_bytes())  # an MPO file starts as a JPEG
    real = imagefile.cv2.imwrite
    monkeypatch.setattr(imagefile.cv2, 'imwrite', lambda f, *a: False if f.endswith('im1.jpg') else real(f, *a))

    class ClosedWriter:  # what cv2.VideoWriter gives for an encoder or directory it cannot use
        def __init__(self, *a):
            pass

        def isOpened(self):
            return False

    monkeypatch.setattr(detect.cv2, 'VideoWriter', ClosedWriter)
    run = run_detect(weights, source, tmp_path)
    assert sorted(p.name for p in run.iterdir()) == ['im0.jpg', 'im2.jpg']
    assert np.array_equal(cv2.imread(str(run / 'im2.jpg')).shape, (64, 64, 3))
    warnings = [x for x in log_text.getvalue().splitlines() if 'WARNING' in x]
    assert warnings == [f'WARNING ⚠️ could not write {run / "im1.jpg"} (OpenCV imwrite failed: disk full or not '
                        'writable?)',
                        f'WARNING ⚠️ could not open {run / "clip.mp4"} for writing (OpenCV VideoWriter); frames not '
                        'saved',
                        'WARNING ⚠️ 2 files could not be written, see the warnings']


def test_ctrl_c_ends_the_run_with_its_files(weights, source, tmp_path, log_text, monkeypatch):
    """Ctrl-C is how a webcam or stream run ends: what was written stays (the open video finalised and playable), the
    summary is printed and run() returns; Ctrl-C before any image is the usual one-line 'interrupted'."""
    plain, calls = detect._handle_detections, []

    def interrupt_on_4th(*a, **k):
        calls.append(1)
        if len(calls) == 4:  # im0, im1, the video's first frame, then Ctrl-C
            raise KeyboardInterrupt
        return plain(*a, **k)

    monkeypatch.setattr(detect, '_handle_detections', interrupt_on_4th)
    run = run_detect(weights, source, tmp_path)
    assert sorted(p.name for p in run.iterdir()) == ['clip.mp4', 'im0.jpg', 'im1.jpg']
    cap = cv2.VideoCapture(str(run / 'clip.mp4'))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 1 and cap.read()[0]
    cap.release()
    out = log_text.getvalue()
    assert 'Interrupted (Ctrl-C) after 4 images/frames; the files written so far are kept' in out and 'Speed: ' in out
    monkeypatch.setattr(detect, 'preprocess', lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))  # 1st image
    with pytest.raises(SystemExit) as e:
        detect.main(detect.parse_opt(['--weights', str(weights), '--source', str(source), '--img', '64',
                                      '--project', str(tmp_path / 'cli')]))
    assert e.value.code == 130

def test_cli_messages(weights, tmp_path):
    opt = detect.parse_opt(['--weights', str(weights), '--source', str(tmp_path / 'missing'), '--img', '64'])
    assert opt.imgsz == [64, 64] and opt.conf_thres == 0.25 and opt.max_det == 1000 and opt.vid_stride == 1
    with pytest.raises(SystemExit, match=r'detect\.py: .*missing does not exist'):
        detect.main(opt)
    (tmp_path / 'a.jpg').write_bytes(b'')
    opt = detect.parse_opt(['--weights', str(tmp_path / 'w.pt'), '--source', str(tmp_path / 'a.jpg')])
    with pytest.raises(SystemExit, match=r'detect\.py: .*w\.pt does not exist'):
        detect.main(opt)


# ----------------------------------------------------------------- official YOLOv5 .pt files

@pytest.fixture(scope='module')
def official(model, tmp_path_factory):
    """An official-format YOLOv5 v7.0 file (pickled fp16 model) and our checkpoint of the same fp16 weights."""
    tmp = tmp_path_factory.mktemp('official')
    m = copy.deepcopy(model).half()
    m.names = dict(NAMES)
    path = tmp / 'yolov5n_official.pt'
    torch.save({'epoch': -1, 'best_fitness': None, 'model': m, 'ema': None, 'updates': None, 'optimizer': None,
                'opt': {}, 'git': {}, 'date': '2022-11-22T00:00:00'}, path)
    ours = make_checkpoint(copy.deepcopy(model).half().float(), tmp / 'ours.pt')
    return path, ours


@pytest.mark.slow
def test_official_pt_detect(official, source, tmp_path):
    path, ours = official
    a = run_detect(path, source, tmp_path, name='official', save_txt=True, save_conf=True)
    b = run_detect(ours, source, tmp_path, name='ours', save_txt=True, save_conf=True)
    la, lb = read_labels(a / 'labels'), read_labels(b / 'labels')
    assert la.keys() == lb.keys() and len(la) >= 2
    for k in la:
        np.testing.assert_allclose(la[k], lb[k], atol=1e-5)


def test_official_pt_val(official, source, tmp_path):
    path, ours = official
    ds = tmp_path / 'ds'
    (ds / 'images').mkdir(parents=True)
    (ds / 'labels').mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        im, lb = draw_image(rng, IMGSZ, 2)
        cv2.imwrite(str(ds / 'images' / f'{i}.png'), im)
        (ds / 'labels' / f'{i}.txt').write_text(''.join(f'{int(r[0])} {r[1]} {r[2]} {r[3]} {r[4]}\n' for r in lb))
    data = tmp_path / 'data.yaml'
    data.write_text(yaml.safe_dump({'path': str(ds), 'train': 'images', 'val': 'images', 'names': NAMES}))
    kw = dict(data=data, imgsz=IMGSZ, batch_size=2, workers=0, plots=False, project=tmp_path / 'val')
    ra, ma, _ = val.run(weights=path, **kw)
    rb, mb, _ = val.run(weights=ours, **kw)
    assert ra == pytest.approx(rb, abs=1e-6) and np.allclose(ma, mb)
    assert all(np.isfinite(ra))


def test_visualize_saves_every_layer_map_and_leaves_model_clean(weights, model, source, tmp_path, log_text):
    """--visualize: per image a directory of stage{i}_{type}_features.png + .npy, one per layer whose output is a
    (B, C, H, W) map larger than 1x1 (Detect skipped), with the exact map saved."""
    from utils.viz.features import features_saved

    run = run_detect(weights, source / 'im0.jpg', tmp_path, visualize=True)
    want = {}
    m = copy.deepcopy(model).eval()
    hooks = [layer.register_forward_hook(lambda mod, a, out, i=layer.i: want.__setitem__(i, out)) for layer in m.model]
    with torch.no_grad():
        m(torch.from_numpy(np.zeros((1, 3, IMGSZ, IMGSZ), np.float32)))
    for h in hooks:
        h.remove()
    expected = sorted(f"stage{i}_{m.model[i].type.split('.')[-1]}_features.png" for i, out in want.items()
                      if isinstance(out, torch.Tensor) and out.dim() == 4 and min(out.shape[2:]) > 1)
    assert len(expected) == len(m.model) - 1  # every yolov5n layer but Detect at 64 px
    assert sorted(p.name for p in (run / 'im0').glob('*.png')) == expected
    first = np.load(run / 'im0' / expected[0].replace('.png', '.npy'))
    assert first.shape == tuple(want[int(expected[0][5:].split('_')[0])].shape[1:])
    assert 'Saving ' in log_text.getvalue()

    with features_saved(m, tmp_path / 'again'):
        pass
    assert all(not layer._forward_hooks for layer in m.model)  # hooks are removed on exit


def test_visualize_needs_pt(weights, source, tmp_path, log_text):
    import export

    onnx_file = export.run(weights=str(weights), imgsz=(IMGSZ, IMGSZ), include=('onnx',))[0]
    run = run_detect(str(onnx_file), source / 'im0.jpg', tmp_path, visualize=True)
    assert '--visualize needs one PyTorch .pt model; model.onnx runs without it' in log_text.getvalue()
    assert not (run / 'im0').exists() and (run / 'im0.jpg').is_file()


def test_ensemble_of_pt_weights(model, weights, source, tmp_path, log_text):
    """Two .pt files: one model whose predictions are both models' predictions side by side (YOLOv5's NMS ensemble),
    used by detect.py and val.py; other formats or disagreeing classes are one-line errors."""
    from utils.inference.backend import BackendError, DetectBackend

    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01 * torch.randn_like(p))
    w2 = make_checkpoint(other, tmp_path / 'other.pt')
    pair, one, two = DetectBackend([weights, w2]), DetectBackend(weights), DetectBackend(w2)
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        assert torch.equal(pair(x), torch.cat([one(x), two(x)], 1))
    assert 'Ensemble created with' in log_text.getvalue() and pair.names == one.names
    run = run_detect([weights, w2], source / 'im0.jpg', tmp_path, visualize=True)
    assert (run / 'im0.jpg').is_file() and not (run / 'im0').exists()  # --visualize needs one model
    data = tmp_path / 'data.yaml'
    data.write_text(yaml.safe_dump({'path': str(source), 'train': '.', 'val': '.', 'names': NAMES}))
    _, maps, _ = val.run(data=data, weights=[weights, w2], imgsz=IMGSZ, workers=0, plots=False,
                         project=tmp_path / 'val')
    assert len(maps) == len(NAMES)
    with pytest.raises(BackendError, match=r'ensemble only as \.pt files'):
        DetectBackend([weights, tmp_path / 'x.onnx'])
    three = make_checkpoint(make_model('yolov5n.yaml', nc=3), tmp_path / 'three.pt', names={0: 'a', 1: 'b', 2: 'c'})
    with pytest.raises(BackendError, match=r'disagree on the number of classes: \[2, 3\]'):
        DetectBackend([weights, three])

"""AutoShape / Detections (the Python API) on a stub model whose boxes are known, and the PyTorch Hub entry points
(hubconf.py through torch.hub.load with source='local')."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import hubconf
from utils.inference.autoshape import AutoShape, Detections

ROOT = Path(__file__).resolve().parents[2]


class Stub(nn.Module):
    """Predicts one box, in letterboxed pixels, centred at (16, 8), 8x4, objectness 0.9, class 1 at 0.9."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.stride = torch.tensor([8.0, 16.0, 32.0])
        self.names = {0: 'cat', 1: 'dog'}
        self.seen = []

    def forward(self, x, augment=False):
        self.seen.append((tuple(x.shape), x.dtype, float(x.max())))
        box = torch.tensor([16.0, 8.0, 8.0, 4.0, 0.9, 0.1, 0.9])
        return box.expand(x.shape[0], 1, 7).clone(), None


def rgb(h: int = 100, w: int = 200) -> np.ndarray:
    im = np.zeros((h, w, 3), np.uint8)
    im[..., 0] = 255  # pure red: checks the RGB order reaches the model unchanged
    return im


def test_boxes_return_to_original_pixels():
    """100x200 at size 64: scaled to 32x64 (already a stride multiple), no padding, gain 0.32.
    Letterbox box xyxy (12, 6, 20, 10) -> original (37.5, 18.75, 62.5, 31.25)."""
    stub = Stub()
    r = AutoShape(stub, verbose=False)(rgb(), size=64)
    assert stub.seen[-1][0] == (1, 3, 32, 64) and stub.seen[-1][2] == pytest.approx(1.0)
    assert isinstance(r, Detections) and len(r) == 1 and r.s == (1, 3, 32, 64)
    x = r.xyxy[0]
    assert x.shape == (1, 6)
    assert x[0, :4].tolist() == pytest.approx([37.5, 18.75, 62.5, 31.25])
    assert x[0, 4].item() == pytest.approx(0.81) and x[0, 5].item() == 1
    assert r.xywh[0][0, :4].tolist() == pytest.approx([50.0, 25.0, 25.0, 12.5])
    assert r.xyxyn[0][0, :4].tolist() == pytest.approx([37.5 / 200, 18.75 / 100, 62.5 / 200, 31.25 / 100])
    assert r.xywhn[0][0, :4].tolist() == pytest.approx([0.25, 0.25, 0.125, 0.125])


def test_one_batch_shape_for_mixed_sizes_and_thresholds():
    stub = Stub()
    model = AutoShape(stub, verbose=False)
    r = model([rgb(100, 200), rgb(200, 100)], size=64)
    assert stub.seen[-1][0] == (2, 3, 64, 64) and r.n == 2
    model.conf = 0.9  # 0.81 < 0.9: filtered
    assert len(model(rgb(), size=64).xyxy[0]) == 0
    model.conf, model.classes = 0.25, [0]
    assert len(model(rgb(), size=64).xyxy[0]) == 0


def test_every_input_form_gives_the_same_result(tmp_path):
    im = rgb()
    im[10:30, 20:60] = (10, 200, 30)
    cv2.imwrite(str(tmp_path / 'a.png'), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    model = AutoShape(Stub(), verbose=False)
    forms = [im, str(tmp_path / 'a.png'), tmp_path / 'a.png', Image.fromarray(im), im.transpose(2, 0, 1)]
    results = [model(f, size=64) for f in forms]
    for r in results[1:]:
        assert np.array_equal(r.ims[0], results[0].ims[0])
        assert torch.equal(r.xyxy[0], results[0].xyxy[0])
    assert results[1].files == ['a.jpg'] and results[0].files == ['image0.jpg']
    gray = model(im[..., 1], size=64)
    assert gray.ims[0].shape == (100, 200, 3)


def test_array_dtypes_become_the_same_uint8_pixels():
    """uint16, 0-1 floats, 0-255 floats, int32 and bool give the uint8 picture they mean (a plain cast wrapped uint16
    modulo 256 and turned 0-1 floats black)."""
    im = rgb()
    model = AutoShape(Stub(), verbose=False)
    ref = model(im, size=64)
    forms = [im.astype(np.uint16) * 257, im.astype(np.float32) / 255, im.astype(np.float64), im.astype(np.int32)]
    for f in forms:
        r = model(f, size=64)
        assert np.array_equal(r.ims[0], ref.ims[0]), f.dtype
        assert torch.equal(r.xyxy[0], ref.xyxy[0])
    assert np.array_equal(model(np.full((8, 8, 3), 300.0), size=64).ims[0], np.full((8, 8, 3), 255, np.uint8))
    assert np.array_equal(model(np.ones((8, 8, 3), bool), size=64).ims[0], np.full((8, 8, 3), 255, np.uint8))


def test_truncated_jpeg_path_is_used_with_one_warning(tmp_path, log_text):
    """A JPEG path cut short decodes as detect.py decodes it (completed in memory), with detect.py's warning."""
    im = rgb()
    ok, buf = cv2.imencode('.jpg', im)
    (tmp_path / 'cut.jpg').write_bytes(buf.tobytes()[:len(buf) * 2 // 3])
    r = AutoShape(Stub(), verbose=False)(tmp_path / 'cut.jpg', size=64)
    assert r.ims[0].shape == (100, 200, 3) and len(r.xyxy[0]) == 1
    assert log_text.getvalue().splitlines() == [
        f'WARNING ⚠️ {tmp_path / "cut.jpg"}: truncated JPEG (no end marker): decoded as far as its data goes']


@pytest.mark.parametrize('bad, err, match', [
    ('https://example.com/a.jpg', ValueError, 'URLs are not downloaded'),
    ('missing.jpg', FileNotFoundError, 'missing.jpg: image not found'),
    (3.5, TypeError, 'unsupported input type float'),
    ([], ValueError, 'no images given'),
    (np.zeros((4, 4, 2), np.uint8), ValueError, 'expected an HxWx3 array'),
    (np.zeros((0, 10, 3), np.uint8), ValueError, r'image 0: empty array of shape \(0, 10, 3\)'),
    (np.full((8, 8, 3), np.nan, np.float32), ValueError, 'image 0: NaN or infinite pixel values'),
    (np.zeros((8, 8, 3), np.complex64), TypeError, 'image 0: unsupported array dtype complex64'),
])
def test_bad_inputs_are_clear(bad, err, match):
    with pytest.raises(err, match=match):
        AutoShape(Stub(), verbose=False)(bad, size=64)


def test_detections_print_save_crop_render_tolist(tmp_path, log_text):
    r = AutoShape(Stub(), verbose=False)([rgb(), rgb(60, 80)], size=64)
    r.print()
    out = log_text.getvalue()
    assert 'image 1/2: 100x200 1 dog' in out and 'image 2/2: 60x80 1 dog' in out and 'Speed: ' in out
    assert str(r) in repr(r)
    saved = r.save(save_dir=tmp_path / 'exp')
    assert saved == tmp_path / 'exp' and sorted(p.name for p in saved.iterdir()) == ['image0.jpg', 'image1.jpg']
    assert r.save(save_dir=tmp_path / 'exp') == tmp_path / 'exp2'  # numbered like a run directory
    crops = r.crop(save_dir=tmp_path / 'crops')
    assert len(crops) == 2 and crops[0]['label'] == 'dog 0.81' and crops[0]['im'].ndim == 3
    assert (tmp_path / 'crops' / 'crops' / 'dog' / 'image0.jpg').is_file()
    drawn = r.render()
    assert len(drawn) == 2 and not np.array_equal(drawn[0], rgb())
    parts = r.tolist()
    assert [p.n for p in parts] == [1, 1] and torch.equal(parts[1].xyxy[0], r.xyxy[1])


def test_detections_save_and_crop_go_on_past_a_failed_write(tmp_path, log_text, monkeypatch):
    """A file OpenCV cannot write is one warning; the other images are saved, crops still returned, and a source
    named .dng (readable, not writable by OpenCV) is saved as .jpg."""
    from utils.viz import imagefile

    r = AutoShape(Stub(), verbose=False)([rgb(), rgb(60, 80)], size=64)
    r.files = ['shot.dng', 'b.jpg']
    real = imagefile.cv2.imwrite
    monkeypatch.setattr(imagefile.cv2, 'imwrite', lambda f, *a: False if f.endswith('b.jpg') else real(f, *a))
    saved = r.save(save_dir=tmp_path / 'exp')
    assert sorted(p.name for p in saved.iterdir()) == ['shot.jpg']
    out = log_text.getvalue()
    assert f'WARNING ⚠️ could not write {saved / "b.jpg"} (OpenCV imwrite failed' in out
    assert f'Saved 1 image to {saved}' in out.replace('\x1b[1m', '').replace('\x1b[0m', '')
    crops = r.crop(save_dir=tmp_path / 'crops')
    assert len(crops) == 2 and all(c['im'].ndim == 3 and c['im'].size for c in crops)
    assert [p.name for p in (tmp_path / 'crops').rglob('*.jpg')] == ['shot.jpg']
    assert out.count('WARNING') + 1 == log_text.getvalue().count('WARNING')  # the b.jpg crop

def test_pandas_or_a_clear_error():
    r = AutoShape(Stub(), verbose=False)(rgb(), size=64)
    try:
        import pandas  # noqa: F401  (optional, not in requirements.txt)
    except ImportError:
        with pytest.raises(ImportError, match=r'needs pandas \(pip install pandas\)'):
            r.pandas()
        return
    df = r.pandas().xyxy[0]
    assert list(df.columns) == ['xmin', 'ymin', 'xmax', 'ymax', 'confidence', 'class', 'name']
    assert df.iloc[0]['name'] == 'dog' and df.iloc[0]['xmin'] == pytest.approx(37.5)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    from tests.commands.test_export import make_checkpoint, make_model

    return make_checkpoint(make_model('yolov5n.yaml'), tmp_path_factory.mktemp('hub') / 'best.pt',
                           names={0: 'class0', 1: 'class1'})


def test_torch_hub_load_custom_local(checkpoint):
    model = torch.hub.load(str(ROOT), 'custom', path=str(checkpoint), source='local', _verbose=False)
    assert isinstance(model, AutoShape) and model.names == {0: 'class0', 1: 'class1'}
    r = model(rgb(64, 96), size=64)
    assert r.s == (1, 3, 64, 64) and r.xyxy[0].shape[1] == 6  # 64x96 -> 43x64 -> stride multiples
    raw = torch.hub.load(str(ROOT), 'custom', path=str(checkpoint), source='local', autoshape=False)
    assert not isinstance(raw, AutoShape) and raw.nc == 2
    bns = [sum(isinstance(m, nn.BatchNorm2d) for m in x.modules()) for x in (model, raw)]
    assert bns[0] == 0 and bns[1] > 0  # fused for inference (as YOLOv5), trainable without AutoShape


def test_named_entry_points(checkpoint, tmp_path, monkeypatch):
    m = hubconf.yolov5n(pretrained=False, classes=3, _verbose=False)
    assert isinstance(m, AutoShape) and m.model.nc == 3
    assert not any(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    assert hubconf.yolov5_efficientvit(pretrained=False, classes=3, autoshape=False, _verbose=False).nc == 3
    assert hubconf.yolov5_efficientvit(pretrained=False, classes=3, _verbose=False).model.model[0].fast  # fast path
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match='yolov5s.pt not found .*nothing is downloaded'):
        hubconf.yolov5s()
    (tmp_path / 'yolov5n.pt').write_bytes(Path(checkpoint).read_bytes())  # a local "pretrained" file (2 classes)
    same = hubconf.yolov5n(classes=2, autoshape=False, _verbose=False)
    assert torch.equal(same.state_dict()['model.0.conv.weight'], torch.load(
        checkpoint, weights_only=True)['model']['model.0.conv.weight'].float())
    new_head = hubconf.yolov5n(classes=5, autoshape=False, _verbose=False)  # head rebuilt, the rest transferred
    assert new_head.nc == 5 and torch.equal(new_head.state_dict()['model.0.conv.weight'],
                                            same.state_dict()['model.0.conv.weight'])


def test_hubconf_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved = hubconf.main(['--model', 'yolov5n', '--source', str(tmp_path / 'images')])
    assert sorted(p.name for p in saved.iterdir()) == [f'shapes_{i}.jpg' for i in range(4)]

"""Hostile data (issue 11, items 2, 3, 4, 5, 7): dataset YAMLs, images, label caches and class names. Each test builds
the hostile file, then checks that nothing outside the run directory is written or deleted, good files next to bad
ones are still processed, and the user sees one line naming the file and the problem."""
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import detect
from models.yolo import DetectionModel, ModelConfigError
from tests import hostile as H
from tests.commands.test_export import make_checkpoint, make_model, write_images
from tests.helpers import write_dataset
from utils.core.logging import LOGGER
from utils.data import label_cache
from utils.data.config import ConfigError, DatasetError, check_dataset, load_hyp
from utils.data.dataset import LoadImagesAndLabels
from utils.data.loader import create_dataloader
from utils.data.sources import Frame
from utils.inference.autoshape import AutoShape

ROOT = Path(__file__).resolve().parents[2]


def snapshot(d: Path) -> dict:
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob('*')) if p.is_file()}


@pytest.fixture
def lines():
    """Every message the project logger emits during the test."""
    out: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: out.append(r.getMessage())
    LOGGER.addHandler(handler)
    yield out
    LOGGER.removeHandler(handler)


# ------------------------------------------------------------------------------------------------ 2: generate:
def test_yaml_copied_from_shapes_never_deletes_the_users_dataset(tmp_path):
    mine = tmp_path / 'mydata'
    write_dataset(mine, n_train=2, n_val=1, nc=2, imgsz=32)
    (mine / 'data.yaml').unlink()
    LoadImagesAndLabels(mine / 'images' / 'train', 32, 2)  # our own .cache is there too
    before = snapshot(tmp_path)
    cfg = yaml.safe_load((ROOT / 'data' / 'shapes.yaml').read_text())  # the template users copy
    cfg['path'] = str(mine)
    (tmp_path / 'mydata.yaml').write_text(yaml.safe_dump(cfg))
    before[Path('mydata.yaml')] = (tmp_path / 'mydata.yaml').read_bytes()
    with pytest.raises(DatasetError) as e:
        check_dataset(tmp_path / 'mydata.yaml')
    msg = str(e.value)
    assert 'mydata.yaml' in msg and 'is not empty and has no .generated.json' in msg and '\n' not in msg
    assert snapshot(tmp_path) == before  # nothing deleted, nothing added (no .partial sibling either)


# ------------------------------------------------------------------------------------------------ 4: YAML aliases
@pytest.mark.parametrize('kind', ['data', 'hyp', 'model'])
def test_yaml_aliases_are_refused_in_one_line(tmp_path, kind):
    base = {'data': ROOT / 'data' / 'shapes.yaml', 'hyp': ROOT / 'data' / 'hyps' / 'hyp.scratch-low.yaml',
            'model': ROOT / 'models' / 'yolov5n.yaml'}[kind]
    f = tmp_path / f'{kind}.yaml'
    f.write_text('x: &x {a: 1}\ny: *x\n' + base.read_text())  # even a harmless alias: refused, not expanded
    load = {'data': check_dataset, 'hyp': load_hyp, 'model': lambda p: DetectionModel(p, verbose=False)}[kind]
    with pytest.raises((ConfigError, ModelConfigError)) as e:
        load(f)
    msg = str(e.value)
    assert f'{kind}.yaml' in msg and 'YAML aliases (*x, line 2) are not accepted' in msg and '\n' not in msg


def test_dataset_names_are_bounded(tmp_path):
    write_dataset(tmp_path, n_train=1, n_val=1, nc=1, imgsz=32)
    cfg = yaml.safe_load((tmp_path / 'data.yaml').read_text())
    for names, text in (([f'c{i}' for i in range(5000)], '5000 class names, over the limit of 4096'),
                        ([['a', 'b']], "'names' values must be strings"), (['x' * 300], '300 characters')):
        (tmp_path / 'bad.yaml').write_text(yaml.safe_dump({**cfg, 'names': names}))
        with pytest.raises(DatasetError, match=r'bad\.yaml.*' + text.replace('(', r'\(')):
            check_dataset(tmp_path / 'bad.yaml')


# ------------------------------------------------------------------------------------------------ 4/5: images
@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    return make_checkpoint(make_model('yolov5n.yaml'), tmp_path_factory.mktemp('w') / 'model.pt')


def test_detect_processes_good_images_and_warns_about_hostile_ones(weights, tmp_path, lines):
    src = write_images(tmp_path / 'src', n=2)
    bad = {H.lying_jpeg(src / 'huge.jpg'): 'image header claims 625,000,000 pixels, over the limit of 100,000,000',
           H.lying_png(src / 'huge.png'): 'image header claims 4,294,836,225 pixels',  # past OpenCV's own limit
           src / 'junk.jpg': 'unreadable or corrupt image'}
    (src / 'junk.jpg').write_bytes(b'\xff\xd8\xff' + b'\x00' * 50)
    run = detect.run(weights=weights, source=src, imgsz=[64], project=tmp_path / 'runs', name='exp')
    assert sorted(p.name for p in run.iterdir()) == ['im0.png', 'im1.png']
    for path, text in bad.items():
        hits = [m for m in lines if str(path) in m]
        assert len(hits) == 1 and 'WARNING' in hits[0] and text in hits[0] and '\n' not in hits[0], hits


def test_autoshape_and_label_scan_read_headers_first(tmp_path):
    huge = H.lying_jpeg(tmp_path / 'huge.jpg')
    model = AutoShape(DetectionModel('yolov5n.yaml', nc=2, verbose=False).eval(), verbose=False)
    with pytest.raises(ValueError, match=r'huge\.jpg: cannot read image \(image header claims 625,000,000 pixels'):
        model([huge])
    write_dataset(tmp_path / 'ds', n_train=2, n_val=1, nc=2, imgsz=32)
    H.lying_jpeg(tmp_path / 'ds' / 'images' / 'train' / 'huge.jpg')
    ds = LoadImagesAndLabels(tmp_path / 'ds' / 'images' / 'train', 32, 2)
    assert ds.stats['corrupt'] == 1 and ds.n == 2
    assert any('huge.jpg: ignoring corrupt image: image header claims 625,000,000 pixels' in m for m in ds.msgs)


# ------------------------------------------------------------------------------------------------ 3: names -> paths
def test_dataset_names_never_become_paths(tmp_path):
    write_dataset(tmp_path / 'ds', n_train=1, n_val=1, nc=2, imgsz=32)
    cfg = yaml.safe_load((tmp_path / 'ds' / 'data.yaml').read_text())
    (tmp_path / 'ds' / 'data.yaml').write_text(yaml.safe_dump({**cfg, 'names': ['../../../up', '/etc/cron.d/x']}))
    names = check_dataset(tmp_path / 'ds' / 'data.yaml')['names']
    save_dir = tmp_path / 'runs' / 'exp'
    save_dir.mkdir(parents=True)
    frame = Frame(str(tmp_path / '..'), np.full((64, 64, 3), 128, np.uint8), 'image', 1, 1)  # stem '..' as well
    det = torch.tensor([[4.0, 4, 40, 40, 0.9, 0], [8, 8, 60, 60, 0.8, 1]])
    opt = dict(save_txt=True, save_conf=False, save_crop=True, save_img=True, view_img=False, line_thickness=1,
               hide_labels=False, hide_conf=False)
    (save_dir / 'labels').mkdir()
    detect._handle_detections(frame, det, names, save_dir, opt)
    files = [p for p in tmp_path.rglob('*') if p.is_file() and 'ds' not in p.parts]
    assert sorted(str(p.relative_to(save_dir)) for p in files) == [
        'crops/.._.._.._up/_.jpg', 'crops/_etc_cron.d_x/_.jpg', 'labels/_.txt']


# ------------------------------------------------------------------------------------------------ 7: the .cache
def test_cache_is_not_written_outside_the_dataset_root(tmp_path, lines):
    write_dataset(tmp_path / 'other', n_train=2, n_val=1, nc=1, imgsz=32)
    root = tmp_path / 'root'
    root.mkdir()
    (root / 'data.yaml').write_text(yaml.safe_dump({'path': str(root), 'train': '../other/images/train',
                                                    'val': '../other/images/val', 'names': ['a']}))
    data = check_dataset(root / 'data.yaml')
    before = snapshot(tmp_path / 'other')
    ds = create_dataloader(data['train'], 32, 2, 32, workers=0, root=data['path'])[1]
    assert ds.n == 2 and snapshot(tmp_path / 'other') == before  # nothing written beside the labels
    hits = [m for m in lines if 'label cache not written' in m]
    assert len(hits) == 1 and f'{tmp_path / "other" / "labels" / "train.cache"} is outside the dataset root' in hits[0]
    inside = create_dataloader(data['train'], 32, 2, 32, workers=0, root=tmp_path)[1]  # a root that holds it
    assert inside.cache_path.is_file()


def test_cache_hash_is_checked_first_and_reading_is_bounded(tmp_path, monkeypatch):
    write_dataset(tmp_path, n_train=2, n_val=1, nc=1, imgsz=32)
    cache = LoadImagesAndLabels(tmp_path / 'images' / 'train', 32, 2).cache_path
    read = []
    real = label_cache._array
    monkeypatch.setattr(label_cache, '_array', lambda z, info: read.append(info.filename) or real(z, info))
    assert label_cache.load_cache(cache, 'another hash') is None
    assert read == ['version.npy', 'hash.npy']  # nothing else is read for a stale cache
    deflated = tmp_path / 'deflated.cache'  # a compressed member could expand without bound: not even opened
    with zipfile.ZipFile(cache) as src, zipfile.ZipFile(deflated, 'w', zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    read.clear()
    assert label_cache.load_cache(deflated) is None and read == []
    liar = tmp_path / 'liar.cache'  # an .npy header claiming 80 GB in a 128-byte member
    with zipfile.ZipFile(cache) as src, zipfile.ZipFile(liar, 'w') as dst:
        for info in src.infolist():
            data = src.read(info)
            data = H.npy_header_only() if info.filename == 'labels.npy' else data
            dst.writestr(info.filename, data)
    with zipfile.ZipFile(liar) as z, pytest.raises(ValueError, match='header claims more data than the member holds'):
        real(z, z.getinfo('labels.npy'))
    assert label_cache.load_cache(liar) is None


# ------------------------------------------------------------------------------------------------ 5: '$' in names
def test_dollar_in_class_names_does_not_break_plots(tmp_path):
    from matplotlib.figure import Figure

    from utils.ops.metrics import ConfusionMatrix, ap_per_class
    from utils.viz.charts import plot_ap_curves, plot_confusion_matrix, plot_labels
    names = {0: '$x^$', 1: '$$'}
    fig = Figure()  # as drawn before: matplotlib parses '$x^$' as mathtext and raises
    fig.text(0, 0, names[0])
    with pytest.raises(ValueError):
        fig.savefig(tmp_path / 'raw.png')
    labels = np.array([[0, 0.5, 0.5, 0.2, 0.2], [1, 0.3, 0.3, 0.1, 0.1]])
    assert plot_labels(labels, names, tmp_path).is_file()
    cm = ConfusionMatrix(nc=2)
    cm.process_batch(torch.tensor([[0.0, 0, 10, 10, 0.9, 1]]), torch.tensor([[0.0, 0, 0, 10, 10]]))
    assert plot_confusion_matrix(cm.matrix, tmp_path / 'confusion_matrix.png', names=list(names.values())).is_file()
    tp = np.array([[True], [False], [True]])
    plot_ap_curves(ap_per_class(tp, np.array([0.9, 0.8, 0.7]), np.array([0, 1, 1]), np.array([0, 1])).curves,
                   tmp_path, names=names)
    assert {'labels.jpg', 'confusion_matrix.png', 'PR_curve.png', 'F1_curve.png'} <= {p.name for p in
                                                                                     tmp_path.iterdir()}

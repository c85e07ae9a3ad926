"""Dataset YAML and hyp YAML loading: paths, names, generation hook and the one-line errors."""
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

import utils.data
from utils.data import config as dataset_config
from utils.data.config import HYP_KEYS, ConfigError, DatasetError, check_dataset, load_hyp


def _img(path: Path, h: int = 32, w: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 80, np.uint8))
    return path


def _yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _fake_synthetic(monkeypatch, generate) -> None:
    """Stand-in for H5's utils.data.synthetic so these tests pin only the hook (spec and root passed, called once)."""
    fake = types.SimpleNamespace(generate=generate)
    monkeypatch.setitem(sys.modules, 'utils.data.synthetic', fake)
    monkeypatch.setattr(utils.data, 'synthetic', fake, raising=False)


@pytest.fixture
def ds(tmp_path):
    for split, n in (('train', 3), ('val', 2)):
        for i in range(n):
            _img(tmp_path / 'd' / 'images' / split / f'{i}.jpg')
    return tmp_path / 'd'


def test_dirs_list_names(ds, tmp_path):
    f = _yaml(tmp_path / 'x.yaml', {'path': str(ds), 'train': 'images/train', 'val': 'images/val', 'names': ['a', 'b']})
    d = check_dataset(f)
    assert d['train'] == str(ds / 'images' / 'train') and d['val'] == str(ds / 'images' / 'val')
    assert d['names'] == {0: 'a', 1: 'b'} and d['nc'] == 2 and d['test'] is None
    assert d['yaml_file'] == str(f.resolve()) and d['path'] == str(ds.resolve())


def test_dict_names_txt_and_lists(ds, tmp_path):
    (ds / 'train.txt').write_text('./images/train/0.jpg\n./images/train/1.jpg\n')
    f = _yaml(tmp_path / 'x.yaml', {'path': str(ds), 'train': ['train.txt', 'images/val'], 'val': 'images/val',
                                    'test': 'images/val', 'names': {0: 'cat', 1: 'dog', 2: 'cow'}, 'nc': 3})
    d = check_dataset(f)
    assert d['train'] == [str(ds / 'train.txt'), str(ds / 'images' / 'val')]
    assert d['nc'] == 3 and d['names'][2] == 'cow' and d['test'] == str(ds / 'images' / 'val')
    files = list(dataset_config.image_files_in(ds / 'train.txt'))
    assert files == [ds / 'images/train/0.jpg', ds / 'images/train/1.jpg']


def test_txt_list_line_forms(ds, monkeypatch, tmp_path):
    lst = ds / 'lists' / 'train.txt'
    lst.parent.mkdir()
    lst.write_text(f'./../images/train/0.jpg\n../images/train/1.jpg\n{ds / "images/train/2.jpg"}\n\nnotes.md\n')
    assert list(dataset_config.image_files_in(lst)) == [lst.parent / '../images/train/0.jpg',
                                                        lst.parent / '../images/train/1.jpg', ds / 'images/train/2.jpg']
    monkeypatch.chdir(ds)  # YOLOv5 read relative lines against the working dir: still found when only there
    lst.write_text('images/val/0.jpg\n')
    assert list(dataset_config.image_files_in(lst)) == [ds / 'images/val/0.jpg']



def test_txt_list_with_bom_or_binary(ds):
    lst = ds / 'bom.txt'
    lst.write_bytes('\ufeff./images/train/0.jpg\n'.encode('utf-8'))  # Windows Notepad's UTF-8
    assert list(dataset_config.image_files_in(lst)) == [ds / 'images/train/0.jpg']
    lst.write_bytes(b'\xff\xd8\xff\xe0 a JPEG saved as .txt')
    with pytest.raises(DatasetError, match=rf'^{lst}: not a text list of image paths \(not UTF-8 text\)$'):
        list(dataset_config.image_files_in(lst))

def test_relative_path_resolves_against_root(ds, tmp_path):
    rel = Path('../' * len(dataset_config.ROOT.parts)) / ds.relative_to('/')
    d = check_dataset({'path': str(rel), 'train': 'images/train', 'val': 'images/val', 'names': ['a']})
    assert d['path'] == str(ds.resolve())


@pytest.mark.parametrize('drop', ['train', 'val', 'names'])
def test_missing_key(ds, tmp_path, drop):
    data = {'path': str(ds), 'train': 'images/train', 'val': 'images/val', 'names': ['a']}
    del data[drop]
    f = _yaml(tmp_path / 'bad.yaml', data)
    with pytest.raises(DatasetError, match=rf"bad\.yaml: missing key\(s\) {drop}"):
        check_dataset(f)


def test_missing_yaml_and_bad_yaml(tmp_path):
    with pytest.raises(DatasetError, match='dataset YAML .*nope.yaml not found'):
        check_dataset(tmp_path / 'nope.yaml')
    (tmp_path / 'broken.yaml').write_text('train: [a, b\n')
    with pytest.raises(DatasetError, match=r'broken\.yaml: cannot read YAML'):
        check_dataset(tmp_path / 'broken.yaml')


def test_nc_mismatch_and_bad_names(ds, tmp_path):
    base = {'path': str(ds), 'train': 'images/train', 'val': 'images/val'}
    with pytest.raises(DatasetError, match=r"x\.yaml: nc=3 but 'names' has 2 entries"):
        check_dataset(_yaml(tmp_path / 'x.yaml', {**base, 'names': ['a', 'b'], 'nc': 3}))
    with pytest.raises(DatasetError, match=r"'names' keys must be 0\.\.1"):
        check_dataset(_yaml(tmp_path / 'x.yaml', {**base, 'names': {0: 'a', 2: 'b'}}))


def test_no_images_and_missing_dir(ds, tmp_path):
    (ds / 'images' / 'empty').mkdir()
    f = _yaml(tmp_path / 'x.yaml', {'path': str(ds), 'train': 'images/empty', 'val': 'images/val', 'names': ['a']})
    with pytest.raises(DatasetError, match=r'x\.yaml: no images found in train path .*empty'):
        check_dataset(f)
    f = _yaml(tmp_path / 'y.yaml', {'path': str(ds), 'train': 'images/train', 'val': 'images/nope', 'names': ['a']})
    with pytest.raises(DatasetError, match=r'y\.yaml: dataset not found: .*nope missing'):
        check_dataset(f)
    f = _yaml(tmp_path / 'z.yaml', {'path': str(ds), 'train': 'images/nope', 'val': 'images/nope', 'names': ['a'],
                                    'download': 'https://example.com/x.zip'})
    with pytest.raises(DatasetError, match=rf'^{f}: dataset not found: {ds / "images/nope"} missing \(downloads are '
                                           r'not supported; put the data there\)$'):  # named once, not per split
        check_dataset(f)


def test_generate_hook(tmp_path, monkeypatch):
    calls = []

    def fake_generate(spec, root):
        calls.append((spec, Path(root)))
        for split in ('train', 'val'):
            _img(Path(root) / 'images' / split / '0.png')

    _fake_synthetic(monkeypatch, fake_generate)
    data = {'path': str(tmp_path / 'gen'), 'train': 'images/train', 'val': 'images/val', 'names': ['a'],
            'generate': {'generator': 'fake', 'seed': 1}}
    f = _yaml(tmp_path / 'g.yaml', data)
    d = check_dataset(f)
    assert calls == [({'generator': 'fake', 'seed': 1}, (tmp_path / 'gen').resolve())]
    assert d['nc'] == 1
    check_dataset(f)  # called again: generate() itself is a no-op when the data matches the spec
    assert len(calls) == 2 and calls[1] == calls[0]
    check_dataset(f, autogenerate=False)
    assert len(calls) == 2
    with pytest.raises(DatasetError, match='dataset not found'):
        check_dataset({**data, 'path': str(tmp_path / 'gen2')}, autogenerate=False)


def test_generate_failure_is_one_line(tmp_path, monkeypatch):
    def boom(spec, root):
        raise RuntimeError('bad spec\nsecond line')

    _fake_synthetic(monkeypatch, boom)
    f = _yaml(tmp_path / 'g.yaml', {'path': str(tmp_path / 'gen'), 'train': 'a', 'val': 'b', 'names': ['x'],
                                    'generate': {'generator': 'fake'}})
    with pytest.raises(DatasetError, match=r'g\.yaml: generating the dataset into .* failed: bad spec second line$'):
        check_dataset(f)


@pytest.mark.parametrize('name', ['hyp.scratch-low.yaml', 'hyp.scratch-med.yaml', 'hyp.scratch-high.yaml',
                                  'hyp.no-augmentation.yaml'])
def test_hyp_files_complete(name):
    hyp = load_hyp(name)
    assert set(HYP_KEYS) <= set(hyp) and hyp['lr0'] == 0.01 and hyp['anchor_t'] == 4.0


def test_hyp_values_match_yolov5():
    low, med, high, noaug = (load_hyp(f'hyp.{n}.yaml') for n in
                             ('scratch-low', 'scratch-med', 'scratch-high', 'no-augmentation'))
    assert (low['lrf'], low['cls'], low['obj'], low['scale'], low['mixup']) == (0.01, 0.5, 1.0, 0.5, 0.0)
    assert (med['lrf'], med['cls'], med['obj'], med['scale'], med['mixup'], med['copy_paste']) == \
        (0.1, 0.3, 0.7, 0.9, 0.1, 0.0)
    assert high['copy_paste'] == 0.1 and high['scale'] == 0.9
    aug = ('hsv_h', 'hsv_s', 'hsv_v', 'degrees', 'translate', 'scale', 'shear', 'perspective', 'flipud', 'fliplr',
           'mosaic', 'mixup', 'copy_paste')
    assert all(noaug[k] == 0 for k in aug) and (noaug['lrf'], noaug['cls'], noaug['obj']) == (0.1, 0.3, 0.7)
    assert all(low[k] == v for k, v in dict(hsv_h=0.015, hsv_s=0.7, hsv_v=0.4, fliplr=0.5, mosaic=1.0,
                                             translate=0.1, momentum=0.937, weight_decay=0.0005).items())


def test_short_budget_hyp_is_scratch_low_with_adamw_settings():
    """hyp.scratch-short.yaml changes only the optimizer schedule of scratch-low and asks for anchors evolved for the
    data (augmentation and loss gains kept)."""
    low, short = load_hyp('hyp.scratch-low.yaml'), load_hyp('hyp.scratch-short.yaml')
    changed = {k: short[k] for k in set(low) | set(short) if low.get(k) != short.get(k)}
    assert changed == {'lr0': 0.006, 'momentum': 0.9, 'warmup_epochs': 1.0, 'warmup_bias_lr': 0.0, 'nbs': 16,
                       'anchors': 3}


def test_hyp_errors(tmp_path):
    with pytest.raises(ConfigError, match='hyperparameter file .*nope.yaml not found'):
        load_hyp(tmp_path / 'nope.yaml')
    hyp = load_hyp('hyp.scratch-low.yaml')
    del hyp['mosaic'], hyp['lr0']
    f = _yaml(tmp_path / 'h.yaml', hyp)
    with pytest.raises(ConfigError, match=r'h\.yaml: missing hyperparameter\(s\) lr0, mosaic$'):
        load_hyp(f)
    with pytest.raises(ConfigError, match=r'hyperparameter\(s\) fliplr must be numbers'):
        load_hyp({**load_hyp('hyp.scratch-low.yaml'), 'fliplr': 'half'})


@pytest.mark.parametrize('key, value, need', [
    ('lr0', -1.0, 'must be > 0'),  # was ValueError('Invalid learning rate') from torch.optim
    ('lr0', 0, 'must be > 0'),
    ('anchor_t', 0.0, 'must be > 0'),  # was ZeroDivisionError in the loss
    ('momentum', 1.5, r'must be in \[0, 1\)'),  # SGD accepted it and diverged
    ('warmup_momentum', 1.0, r'must be in \[0, 1\)'),
    ('weight_decay', -0.1, 'must be >= 0'),
    ('mosaic', 2.0, 'must be between 0 and 1'),
    ('fliplr', -0.5, 'must be between 0 and 1'),
    ('scale', 1.5, 'must be between 0 and 1'),
    ('anchors', 0, 'must be > 0'),
])
def test_hyp_values_out_of_range(key, value, need, tmp_path):
    f = _yaml(tmp_path / 'h.yaml', {**load_hyp('hyp.scratch-low.yaml'), key: value})
    with pytest.raises(ConfigError, match=rf'h\.yaml: hyperparameter {key} {need}, got {value!r}'):
        load_hyp(f)


def test_hyp_range_edges_are_accepted():
    base = load_hyp('hyp.scratch-low.yaml')
    edges = {'lrf': 0, 'momentum': 0, 'weight_decay': 0, 'warmup_epochs': 0, 'mosaic': 1, 'mixup': 0, 'scale': 1,
             'iou_t': 1, 'degrees': 180, 'anchors': 3}
    assert load_hyp({**base, **edges})['degrees'] == 180

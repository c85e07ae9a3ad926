"""The embedded shapes dataset: determinism, label format and geometry, completion marker, spec errors."""
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from utils.data import synthetic
from utils.data.synthetic import (
    MARKER,
    SHAPE_NAMES,
    SyntheticError,
    _check_shapes_spec,
    _rng,
    ensure_sample_images,
    generate,
    is_generated,
    render_scene,
    visible_boxes,
)

SMALL = {'generator': 'shapes', 'seed': 3, 'train': 12, 'val': 4, 'imgsz': [96, 128], 'min_size': 8,
         'max_objects': 5, 'background': 0.1}


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def small_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('gen') / 'shapes'
    generate(SMALL, root)
    return root


def test_layout_and_counts(small_dataset):
    for split, n in (('train', 12), ('val', 4)):
        ims = sorted((small_dataset / 'images' / split).glob('*.jpg'))
        labels = sorted((small_dataset / 'labels' / split).glob('*.txt'))
        assert len(ims) == n and len(labels) == n
        assert [p.stem for p in ims] == [p.stem for p in labels]
    assert not (small_dataset / 'images' / 'test').exists()
    marker = json.loads((small_dataset / MARKER).read_text())
    assert marker['seed'] == 3 and marker['train'] == 12 and marker['generator'] == 'shapes'
    assert is_generated(SMALL, small_dataset)
    assert not is_generated({**SMALL, 'seed': 4}, small_dataset)


def test_regeneration_is_byte_identical(small_dataset, tmp_path):
    generate(SMALL, tmp_path / 'again')
    a, b = _hashes(small_dataset), _hashes(tmp_path / 'again')
    assert len(a) == 12 * 2 + 4 * 2 + 1
    assert a == b


def test_different_seed_gives_different_images(small_dataset, tmp_path):
    generate({**SMALL, 'seed': 4, 'train': 2, 'val': 1}, tmp_path / 'other')
    a = (small_dataset / 'images/train/train_00000.jpg').read_bytes()
    assert a != (tmp_path / 'other/images/train/train_00000.jpg').read_bytes()


def test_label_format_and_ranges(small_dataset):
    rows = []
    for f in (small_dataset / 'labels').rglob('*.txt'):
        for line in f.read_text().splitlines():
            parts = line.split()
            assert len(parts) == 5
            assert all(len(p.split('.')[1]) == 6 for p in parts[1:]), line  # 6 decimals
            rows.append([float(p) for p in parts])
    rows = np.array(rows)
    assert len(rows) > 16
    assert set(rows[:, 0].astype(int)) <= set(range(len(SHAPE_NAMES)))
    assert (rows[:, 1:] > 0).all() and (rows[:, 1:] <= 1).all()
    x1, x2 = rows[:, 1] - rows[:, 3] / 2, rows[:, 1] + rows[:, 3] / 2
    assert (x1 >= -1e-6).all() and (x2 <= 1 + 1e-6).all()


def test_images_decode_with_drawn_sizes(small_dataset):
    for p in (small_dataset / 'images' / 'train').glob('*.jpg'):
        im = cv2.imread(str(p))
        assert im is not None and im.ndim == 3 and im.shape[2] == 3
        assert 96 <= im.shape[0] <= 128 and 96 <= im.shape[1] <= 128


def test_visible_boxes_on_a_hand_made_owner_map():
    owner = np.full((10, 20), -1)
    owner[2:5, 3:9] = 0  # 6 x 3 px block
    owner[7, 15] = 1  # a single pixel
    owner[3, 4] = 1  # object 1 also shows through object 0 -> its visible box spans both pixels
    boxes = visible_boxes(owner, 2)
    np.testing.assert_allclose(boxes[0], [6 / 20, 3.5 / 10, 6 / 20, 3 / 10])
    np.testing.assert_allclose(boxes[1], [(4 + 16) / 2 / 20, (3 + 8) / 2 / 10, 12 / 20, 5 / 10])


@pytest.mark.parametrize('index', range(8))
def test_rendered_box_edges_sit_on_object_edges(index, monkeypatch):
    """One object on a flat background: on each side of the label box, the strongest image edge along the box line
    is much stronger than along a line 3 px outside it (a box that is loose or shifted fails this)."""
    monkeypatch.setattr(synthetic, '_background', lambda rng, h, w: np.full((h, w, 3), 128, np.float32))
    spec = _check_shapes_spec({'imgsz': [128, 128], 'min_size': 24, 'max_objects': 1, 'background': 0.0})
    im, labels = render_scene(_rng(5, 'train', index), spec)
    assert labels.shape == (1, 5)
    _, cx, cy, w, h = labels[0] * [1, 128, 128, 128, 128]
    x1, y1, x2, y2 = (round(v) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    g = cv2.GaussianBlur(im, (3, 3), 0).astype(np.float32)
    gx = np.abs(cv2.Sobel(g, cv2.CV_32F, 1, 0)).sum(2)  # strong where a vertical edge (left/right side) is
    gy = np.abs(cv2.Sobel(g, cv2.CV_32F, 0, 1)).sum(2)
    pad = np.pad  # lines outside the image read as zero gradient

    gx, gy = pad(gx, 8), pad(gy, 8)
    x1, y1, x2, y2 = x1 + 8, y1 + 8, x2 + 8, y2 + 8
    sides = [  # (max edge on the box line, max edge 3 px outside)
        (gx[y1:y2, x1 - 1:x1 + 1].max(), gx[y1:y2, x1 - 4].max()),
        (gx[y1:y2, x2 - 1:x2 + 1].max(), gx[y1:y2, x2 + 3].max()),
        (gy[y1 - 1:y1 + 1, x1:x2].max(), gy[y1 - 4, x1:x2].max()),
        (gy[y2 - 1:y2 + 1, x1:x2].max(), gy[y2 + 3, x1:x2].max()),
    ]
    at_border = [x1 == 8, x2 == 136, y1 == 8, y2 == 136]  # the image border is the edge there (no gradient)
    assert all(on > 3 * off or border for (on, off), border in zip(sides, at_border)), sides


def test_occlusion_never_hides_more_than_60_percent():
    spec = _check_shapes_spec({'imgsz': [128, 128], 'min_size': 20, 'max_objects': 8, 'background': 0.0})
    counts = []
    for i in range(20):
        _, labels = render_scene(_rng(1, 'train', i), spec)
        counts.append(len(labels))
        assert (labels[:, 3] > 0).all() and (labels[:, 4] > 0).all()
    assert max(counts) >= 3  # crowded scenes exist
    assert min(counts) >= 1


def test_background_fraction():
    spec = _check_shapes_spec({'imgsz': [64, 64], 'min_size': 8, 'background': 1.0})
    _, labels = render_scene(_rng(0, 'train', 0), spec)
    assert labels.shape == (0, 5)


def test_unmarked_images_dir_is_refused_not_replaced(tmp_path):
    """A killed run leaves its files in a hidden .partial sibling, never in root: images/ without our marker is
    someone's data, so it is refused and kept byte for byte (it used to be deleted and regenerated)."""
    root = tmp_path / 'shapes'
    spec = {**SMALL, 'train': 3, 'val': 1}
    (root / 'images' / 'train').mkdir(parents=True)
    (root / 'images' / 'train' / 'train_00000.jpg').write_bytes(b'mine')
    with pytest.raises(SyntheticError, match=r'shapes is not empty and has no \.generated\.json'):
        generate(spec, root)
    assert (root / 'images' / 'train' / 'train_00000.jpg').read_bytes() == b'mine'
    assert not list(tmp_path.glob('.shapes.partial-*'))


def test_empty_existing_dir_is_used(tmp_path):
    root = tmp_path / 'shapes'
    root.mkdir()
    spec = {**SMALL, 'train': 2, 'val': 1}
    generate(spec, root)
    assert is_generated(spec, root) and len(list((root / 'images' / 'train').glob('*.jpg'))) == 2
    assert cv2.imread(str(root / 'images' / 'train' / 'train_00000.jpg')) is not None


def test_changed_spec_regenerates_and_same_spec_is_a_no_op(tmp_path):
    root = tmp_path / 'shapes'
    spec = {**SMALL, 'train': 2, 'val': 1}
    generate(spec, root)
    stamp = (root / MARKER).stat().st_mtime_ns
    generate(spec, root)
    assert (root / MARKER).stat().st_mtime_ns == stamp
    generate({**spec, 'train': 4}, root)
    assert len(list((root / 'images' / 'train').glob('*.jpg'))) == 4


def test_refuses_to_overwrite_foreign_directory(tmp_path):
    root = tmp_path / 'mine'
    root.mkdir()
    (root / 'notes.txt').write_text('precious')
    with pytest.raises(SyntheticError, match='was not generated by utils.data.synthetic'):
        generate({**SMALL, 'train': 1, 'val': 1}, root)
    assert (root / 'notes.txt').read_text() == 'precious'


@pytest.mark.parametrize('spec, match', [
    ({'generator': 'nope'}, r"unknown generator 'nope'.*shapes"),
    ({'generator': 'shapes', 'trian': 5}, r"unknown key\(s\) \['trian'\]"),
    ({'train': -1}, 'train must be a non-negative integer'),
    ({'imgsz': [300, 200]}, 'imgsz must be'),
    ({'min_size': 2}, 'min_size must be in'),
    ({'background': 2}, 'background must be a fraction'),
])
def test_bad_specs_raise_one_line_errors(tmp_path, spec, match):
    with pytest.raises(SyntheticError, match=match):
        generate(spec, tmp_path / 'x')
    assert not (tmp_path / 'x').exists()


def test_ensure_sample_images(tmp_path):
    paths = ensure_sample_images(tmp_path / 'images', n=3, seed=0)
    assert [p.name for p in paths] == ['shapes_0.jpg', 'shapes_1.jpg', 'shapes_2.jpg']
    first = [p.read_bytes() for p in paths]
    assert all(cv2.imread(str(p)) is not None for p in paths)
    again = ensure_sample_images(tmp_path / 'other', n=3, seed=0)
    assert [p.read_bytes() for p in again] == first


def test_shapes_yaml_matches_generator(root):
    cfg = yaml.safe_load((root / 'data' / 'shapes.yaml').read_text())
    assert cfg['path'] == 'datasets/shapes' and cfg['train'] == 'images/train' and cfg['val'] == 'images/val'
    assert cfg['names'] == dict(enumerate(SHAPE_NAMES))
    spec = _check_shapes_spec(cfg['generate'])
    assert spec['train'] == 600 and spec['val'] == 150 and spec['seed'] == 0

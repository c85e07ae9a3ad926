"""python -m utils.data.convert: COCO/VOC -> YOLO and YOLO -> COCO through the label scan; the round trip
YOLO -> COCO -> YOLO is lossless to 1e-6, bad files give the scan's one-line warnings, the source is left alone."""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers import write_annotation_yamls, write_dataset
from utils.data import convert
from utils.data.config import check_dataset


def labels_of(root: Path, split: str) -> dict[str, np.ndarray]:
    return {f.stem: np.loadtxt(f, ndmin=2).reshape(-1, 5) for f in sorted((root / 'labels' / split).glob('*.txt'))}


def tree(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob('*') if p.suffix != '.cache'}


def test_yolo_coco_yolo_round_trip_is_lossless(tmp_path, log_lines):
    a = tmp_path / 'a'
    data_yaml = write_dataset(a, n_train=4, n_val=3, nc=3)
    before = tree(a)
    assert convert.main(['--from', 'yolo', str(data_yaml), '--to', 'coco', str(tmp_path / 'b')]) == 0
    b = tmp_path / 'b'
    coco = json.loads((b / 'annotations/instances_val.json').read_text())
    assert [c['id'] for c in coco['categories']] == [1, 2, 3] and len(coco['images']) == 3
    data_b = check_dataset(b / 'data.yaml')  # the written YAML reads back as a COCO dataset
    assert data_b['val']['format'] == 'coco' and data_b['names'] == {0: 'class0', 1: 'class1', 2: 'class2'}
    for split in ('train', 'val'):
        convert.main(['--from', 'coco', str(b / f'annotations/instances_{split}.json'), '--images',
                      str(b / 'images' / split), '--to', 'yolo', str(tmp_path / 'c')])
        la, lc = labels_of(a, split), labels_of(tmp_path / 'c', split)
        assert list(la) == list(lc) and sum(len(x) for x in la.values()) > 0
        for k in la:
            np.testing.assert_allclose(lc[k], la[k], atol=1e-6, rtol=0)
            assert (tmp_path / 'c/images' / split / f'{k}.png').read_bytes() == (a / 'images' / split /
                                                                                 f'{k}.png').read_bytes()
    cfg = yaml.safe_load((tmp_path / 'c/data.yaml').read_text())
    assert cfg['train'] == 'images/train' and cfg['val'] == 'images/val' and cfg['names'][2] == 'class2'
    assert tree(a) == before  # nothing written into the source but its label cache
    assert [m for m in log_lines if 'WARNING' in m] == []


def test_voc_to_yolo_matches_and_warns_like_the_scan(tmp_path, log_lines):
    write_dataset(tmp_path, n_train=2, n_val=3, nc=3)
    write_annotation_yamls(tmp_path)
    bad = tmp_path / 'voc/val/val_0001.xml'
    bad.write_text('<annotation><object>')
    convert.main(['--from', 'voc', str(tmp_path), '--annotations', 'voc/val', '--images', 'images/val', '--to',
                  'yolo', str(tmp_path / 'out'), '--split', 'val', '--symlink', '--names', 'class0,class1,class2'])
    out, ref = labels_of(tmp_path / 'out', 'val'), labels_of(tmp_path, 'val')
    assert list(out) == ['val_0000', 'val_0002']  # the broken XML's image is skipped, as in training
    for k in out:
        np.testing.assert_allclose(out[k], ref[k], atol=1e-6, rtol=0)
    assert (tmp_path / 'out/images/val/val_0000.png').is_symlink()
    hits = [m for m in log_lines if 'WARNING' in m]
    assert len(hits) == 1 and str(bad) in hits[0] and 'ignoring corrupt label: XML does not parse' in hits[0]


def test_default_split_names():
    assert convert.default_split(Path('ann/instances_val2017.json'), 'coco', None) == 'val2017'
    assert convert.default_split(Path('train/_annotations.coco.json'), 'coco', None) == 'train'
    assert convert.default_split(Path('VOC'), 'voc', 'ImageSets/Main/trainval.txt') == 'trainval'


def test_bad_requests_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match='convert: --from voc --to coco: not supported'):
        convert.main(['--from', 'voc', str(tmp_path), '--to', 'coco', str(tmp_path / 'o')])
    with pytest.raises(SystemExit, match='convert: .*nope.json: not found'):
        convert.main(['--from', 'coco', str(tmp_path / 'nope.json'), '--to', 'yolo', str(tmp_path / 'o')])
    (tmp_path / 'x.json').write_text('{"a": 1}')
    with pytest.raises(SystemExit, match=r'convert: .*x.json: not a COCO annotation file'):
        convert.main(['--from', 'coco', str(tmp_path / 'x.json'), '--to', 'yolo', str(tmp_path / 'o')])

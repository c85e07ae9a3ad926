"""COCO JSON and Pascal VOC XML splits read directly: the same labels and counts as the equivalent YOLO .txt dataset,
every bad case one warning line naming the file with the counts adding up, and the cache keyed by the annotation
file (a hit never parses the JSON). Every dataset is written by the test."""
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from tests.helpers import voc_xml, write_annotation_yamls, write_dataset
from utils.data import coco_json, formats
from utils.data.config import DatasetError, check_dataset
from utils.data.dataset import LoadImagesAndLabels


@pytest.fixture(scope='module')
def trio(tmp_path_factory):
    """A YOLO dataset and the same labels as COCO and VOC; {format: YAML}."""
    root = tmp_path_factory.mktemp('trio')
    write_dataset(root, n_train=5, n_val=4, nc=3, imgsz=64)
    return write_annotation_yamls(root, nc=3)


def load(split, root, **kw):
    return LoadImagesAndLabels(split, kw.pop('img_size', 64), 2, root=root, **kw)


def warnings_about(lines, name):
    hits = [m for m in lines if 'WARNING' in m and str(name) in m]
    assert all('\n' not in m for m in hits)
    return hits


def partition(ds):
    s = ds.stats
    assert s['found'] + s['missing'] + s['empty'] + s['corrupt'] == s['total']
    return s['found'], s['missing'], s['empty'], s['corrupt'], s['total']


@pytest.mark.parametrize('fmt', ['coco', 'voc'])
def test_same_labels_counts_and_names_as_yolo(trio, fmt, log_lines):
    ref, data = check_dataset(trio['yolo']), check_dataset(trio[fmt])
    assert data['names'] == ref['names'] and data['nc'] == 3
    for split in ('train', 'val'):
        a, b = load(ref[split], ref['path']), load(data[split], data['path'])
        assert b.im_files == a.im_files and partition(b) == partition(a)
        assert len(b.labels) == len(a.labels)
        for x, y in zip(b.labels, a.labels):
            np.testing.assert_allclose(x, y, atol=2e-6)
        np.testing.assert_array_equal(b.shapes, a.shapes)
    if fmt == 'coco':  # names from the categories, sorted by id, the mapping printed
        assert any('10->0 class0, 20->1 class1, 30->2 class2' in m for m in log_lines)
        src = b.annotation_sources[0]
        assert src.class_map == (10, 20, 30) and sorted(src.image_ids.values())[0] == 1000
    assert [m for m in log_lines if 'WARNING' in m] == []


def test_cache_hit_does_not_parse_the_json_and_edits_invalidate(trio, monkeypatch, log_lines):
    data = check_dataset(trio['coco'])
    spec = data['val']
    first = load(spec, data['path'])
    cache = formats.cache_file(spec)
    assert cache.is_file() and cache == Path(spec['annotations']).with_suffix('.cache')

    def refuse(*a, **k):
        raise AssertionError('the JSON was parsed on a cache hit')

    monkeypatch.setattr(formats, 'read_coco', refuse)
    monkeypatch.setattr(formats, 'load_json', refuse)
    again = load(spec, data['path'])
    assert again.im_files == first.im_files and check_dataset(trio['coco'])['names'] == data['names']
    # a touched image or annotation file invalidates the cache
    for f in (first.im_files[0], spec['annotations']):
        monkeypatch.undo()
        st = os.stat(f)
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert formats.cached_split(spec, cache) is None
        load(spec, data['path'])
        assert formats.cached_split(spec, cache) is not None


def test_yaml_names_map_by_name_and_other_names_are_removed(trio, tmp_path, log_lines):
    root = Path(trio['coco']).parent
    cfg = yaml.safe_load(Path(trio['coco']).read_text())
    cfg['names'] = ['class2', 'class0']  # class1 is not in the dataset: its boxes go, with one line
    (tmp_path / 'd.yaml').write_text(yaml.safe_dump(cfg))
    data = check_dataset(tmp_path / 'd.yaml')
    ref = load(check_dataset(trio['yolo'])['val'], str(root))
    ds = load(data['val'], data['path'])
    lines = warnings_about(log_lines, data['val']['annotations'])
    n1 = sum(int((lb[:, 0] == 1).sum()) for lb in ref.labels)
    assert len(lines) == 1 and f'{n1} box(es) of classes not in the dataset names removed' in lines[0]
    lut = {0: 1, 2: 0}
    for x, y in zip(ds.labels, ref.labels):
        y = y[y[:, 0] != 1]
        np.testing.assert_array_equal(x[:, 0], [lut[int(c)] for c in y[:, 0]])
    assert ds.annotation_sources[0].class_map == (30, 10)


def _image(path: Path, w=48, h=40):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 99, np.uint8))


def test_coco_bad_cases_one_line_each_and_counts_add_up(tmp_path, log_lines):
    img = tmp_path / 'images'
    for n in ('a', 'b', 'c'):
        _image(img / f'{n}.png')
    ann = tmp_path / 'ann.json'
    box = lambda i, c, b, **k: {'image_id': i, 'category_id': c, 'bbox': b, **k}  # noqa: E731
    ann.write_text(json.dumps({
        'images': [{'id': 1, 'file_name': 'a.png', 'width': 48, 'height': 40},
                   {'id': 2, 'file_name': 'b.png'},
                   {'id': 3, 'file_name': 'c.png'},  # no annotations: a background
                   {'id': 4, 'file_name': 'missing.png'}],  # the image file does not exist
        'annotations': [box(1, 7, [4, 4, 10, 10]), box(1, 7, [40, 30, 20, 20]),  # clipped to 8x10
                        box(1, 9, [60, 50, 5, 5]),  # wholly outside the image
                        box(2, 7, [5, 5, -3, 4]),  # inverted
                        box(2, 9, [1, 1, 2, 2], iscrowd=1),  # crowd: ignored
                        box(2, 99, [1, 1, 2, 2]),  # unknown category id
                        box(77, 7, [1, 1, 2, 2]),  # image id that does not exist
                        {'image_id': 1, 'bbox': 'x'},  # malformed
                        box(4, 7, [1, 1, 5, 5])],
        'categories': [{'id': 9, 'name': 'dog'}, {'id': 7, 'name': 'cat'}]}))
    ds = load({'format': 'coco', 'annotations': str(ann), 'images': str(img)}, tmp_path)
    assert partition(ds) == (1, 0, 2, 1, 4)  # a found; b (all boxes removed) and c empty; missing.png corrupt
    c = ds.annotation_sources[0].counts
    assert c['annotations'] == 9 == c['boxes'] + c['crowd'] + c['unknown_category'] + c['missing_image'] \
        + c['malformed'] and (c['boxes'], c['crowd'], c['unknown_category'], c['missing_image'], c['malformed']) \
        == (5, 1, 1, 1, 1)
    lines = warnings_about(log_lines, ann) + warnings_about(log_lines, 'missing.png')
    text = '\n'.join(lines)
    assert len(lines) == 6, text
    for part in ('1 annotation(s) with unknown category id(s)', '1 annotation(s) for image id(s) that do not exist',
                 '1 malformed annotation(s)', 'image 1 (a.png): 1 box(es) removed (0 inverted or empty, 1 outside',
                 'image 2 (b.png): 1 box(es) removed (1 inverted or empty, 0 outside', 'missing.png: ignoring corrupt'):
        assert part in text
    # boxes kept = boxes read - boxes removed; a's clipped box is 8x10 px (names: cat=7 -> 0, dog=9 -> 1 by id)
    assert sum(len(lb) for lb in ds.labels) == c['boxes'] - 2 - 1  # 2 removed, 1 on the corrupt image
    a = ds.labels[ds.im_files.index(str(img / 'a.png'))]
    np.testing.assert_allclose(a, [[0, 9 / 48, 9 / 40, 10 / 48, 10 / 40], [0, 44 / 48, 35 / 40, 8 / 48, 10 / 40]],
                               atol=1e-6)


@pytest.mark.parametrize('content, why', [('[1, 2]', 'not a COCO annotation file'),
                                          ('{"images": []}', 'not a COCO annotation file'),
                                          ('{"images": [', 'cannot read JSON')])
def test_json_that_is_not_coco_is_one_line(tmp_path, content, why, log_lines):
    f = tmp_path / 'x.json'
    f.write_text(content)
    write_dataset(tmp_path, n_train=2, n_val=1)
    spec = {'format': 'coco', 'annotations': str(f), 'images': str(tmp_path / 'images')}
    ds = load([str(tmp_path / 'images/train'), spec], tmp_path)  # the other parts of the split still load
    assert partition(ds) == (2, 0, 0, 0, 2)
    assert len(warnings_about(log_lines, f)) == 1 and why in warnings_about(log_lines, f)[0]
    with pytest.raises(DatasetError, match='No usable images'):
        load(spec, tmp_path)
    (tmp_path / 'd.yaml').write_text(yaml.safe_dump({'path': str(tmp_path), 'train': {'coco': 'x.json'},
                                                     'val': {'coco': 'x.json'}}))
    with pytest.raises(DatasetError, match=f'no names given and none readable from {f}'):
        check_dataset(tmp_path / 'd.yaml')


def test_json_size_is_bounded(tmp_path):
    f = tmp_path / 'big.json'
    f.write_text('{"images": []}' + ' ' * 100)
    with pytest.raises(coco_json.AnnotationError, match='over the limit of 50'):
        coco_json.load_json(f, limit=50)


def test_voc_bad_cases_one_line_each_and_counts_add_up(tmp_path, log_lines):
    img, ann = tmp_path / 'JPEGImages', tmp_path / 'Annotations'
    ann.mkdir()
    for n in ('a', 'b', 'c', 'd', 'e', 'f'):
        _image(img / f'{n}.jpg')
    (ann / 'a.xml').write_text(voc_xml('a.jpg', (48, 40), [('cat', 2, 2, 20, 20, 0), ('dog', 5, 5, 9, 9, 1)]))
    (ann / 'b.xml').write_text('<annotation><object>')  # does not parse
    (ann / 'c.xml').write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xx">]><annotation>&x;</annotation>')
    (ann / 'd.xml').write_text(voc_xml('d.jpg', (48, 40), [('cat', 60, 50, 70, 60, 0), ('cat', 9, 9, 3, 20, 0)]))
    (ann / 'e.xml').write_text(voc_xml('e.jpg', (48, 40), [('bird', 1, 1, 10, 10, 0)]))  # not in names
    (ann / 'g.xml').write_text(voc_xml('g.jpg', (48, 40), [('cat', 1, 1, 10, 10, 0)]))  # no image g.jpg
    (tmp_path / 'list.txt').write_text('a\nb\nc\nd\ne\nf\ng\n')  # f: image without XML -> background
    (tmp_path / 'd.yaml').write_text(yaml.safe_dump({'path': str(tmp_path), 'names': ['cat', 'dog'],
                                                     'train': {'voc': 'list.txt'},
                                                     'val': {'voc': 'list.txt', 'difficult': False}}))
    data = check_dataset(tmp_path / 'd.yaml')
    ds = load(data['train'], data['path'])
    assert partition(ds) == (2, 1, 1, 3, 7)  # a, e found; f missing; d empty; b, c, g corrupt
    assert ds.annotation_sources[0].counts['annotations'] == 6
    text = '\n'.join(log_lines)
    for name, part in (('b.xml', 'ignoring corrupt label: XML does not parse'),
                       ('c.xml', 'ignoring corrupt label: DOCTYPE/ENTITY declarations are not accepted'),
                       ('d.xml', '2 box(es) removed (1 inverted or empty, 1 outside the image)'),
                       ('e.xml', "1 box(es) of classes not in the dataset names removed ('bird' x1)"),
                       ('g.jpg', 'ignoring corrupt image')):
        assert len(warnings_about(log_lines, name)) == 1, text
        assert part in warnings_about(log_lines, name)[0]
    assert len([m for m in log_lines if 'WARNING' in m]) == 5
    a = ds.labels[ds.im_files.index(str(img / 'a.jpg'))]
    np.testing.assert_allclose(a, [[0, 11 / 48, 11 / 40, 18 / 48, 18 / 40], [1, 7 / 48, 7 / 40, 4 / 48, 4 / 40]],
                               atol=1e-6)
    assert len(ds.labels[ds.im_files.index(str(img / 'e.jpg'))]) == 0
    easy = load(data['val'], data['path'])  # difficult: false leaves a's dog out; its own cache file
    assert len(easy.labels[easy.im_files.index(str(img / 'a.jpg'))]) == 1
    assert {f.name for f in tmp_path.glob('*.cache')} == {'list.cache', 'list-nodifficult.cache'}


def test_voc_names_from_xml_sorted_and_defaults(tmp_path, log_lines):
    for n, cls in (('a', 'zebra'), ('b', 'ant')):
        _image(tmp_path / 'JPEGImages' / f'{n}.png')
        (tmp_path / 'Annotations').mkdir(exist_ok=True)
        (tmp_path / 'Annotations' / f'{n}.xml').write_text(voc_xml(f'{n}.png', (48, 40), [(cls, 1, 1, 9, 9, 0)]))
    (tmp_path / 'd.yaml').write_text(yaml.safe_dump({'path': str(tmp_path), 'train': {'voc': True},
                                                     'val': {'voc': None}}))
    data = check_dataset(tmp_path / 'd.yaml')
    assert data['names'] == {0: 'ant', 1: 'zebra'}
    assert any('0 ant, 1 zebra' in m for m in log_lines)
    ds = load(data['val'], data['path'])
    assert [int(lb[0, 0]) for lb in ds.labels] == [1, 0]


def test_bad_split_mappings_are_one_line(tmp_path):
    write_dataset(tmp_path, n_train=1, n_val=1)
    for val, why in (({'coco': 'a.json', 'voc': 'x'}, "exactly one of 'coco:' or 'voc:'"),
                     ({'coco': 'a.json', 'imgs': 'x'}, r"unknown key\(s\) \['imgs'\]"),
                     ({'voc': 'x', 'difficult': 'no'}, "'difficult:' must be true or false"),
                     ({'coco': 'nope.json'}, 'nope.json')):
        (tmp_path / 'd.yaml').write_text(yaml.safe_dump({'path': str(tmp_path), 'train': 'images/train',
                                                         'val': val, 'names': ['a', 'b', 'c']}))
        with pytest.raises(DatasetError, match=why):
            check_dataset(tmp_path / 'd.yaml')


def test_nothing_but_the_cache_is_written_into_the_dataset(tmp_path):
    write_dataset(tmp_path, n_train=2, n_val=2)
    yamls = write_annotation_yamls(tmp_path)
    before = {p for p in tmp_path.rglob('*')}
    for fmt in ('coco', 'voc'):
        data = check_dataset(yamls[fmt])
        load(data['train'], data['path'])
        load(data['train'], data['path'])
    new = {p.relative_to(tmp_path).as_posix() for p in set(tmp_path.rglob('*')) - before}
    assert new == {'annotations/instances_train.cache', 'voc/train.cache'}


def test_mixed_split_list_merges_parts(trio):
    ref = check_dataset(trio['yolo'])
    coco = check_dataset(trio['coco'])
    ds = load([ref['val'], coco['train']], ref['path'])
    a, b = load(ref['val'], ref['path']), load(coco['train'], coco['path'])
    assert ds.im_files == a.im_files + b.im_files and ds.stats['total'] == a.stats['total'] + b.stats['total']
    assert ds.label_files[-1] == coco['train']['annotations']


def test_unresolved_mapping_is_relative_to_the_root(trio):
    data = check_dataset(trio['coco'])
    raw = load({'coco': 'annotations/instances_val.json', 'images': 'images/val'}, data['path'])
    assert raw.im_files == load(data['val'], data['path']).im_files
    with pytest.raises(DatasetError, match="exactly one of 'coco:' or 'voc:'"):
        load({'images': 'images/val'}, data['path'])

"""--save-json on a dataset read from a COCO JSON: predictions carry the file's own image and category ids, and
pycocotools scores them against that very file, agreeing with the project's mAP on a hand-made case."""
import json

import numpy as np
import pytest

import val
from tests.engine.test_val import FakeModel, SpyLoader, evaluate, random_predictions, random_scene, write_images
from utils.data.loader import create_dataloader

CAT_IDS = (3, 7, 11)  # not 0..nc-1: the ids must survive into the predictions


def write_coco_scene(root, n=16, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(128, 64) if i % 2 else (64, 128) for i in range(n)]  # exact letterbox ratios (0.5)
    gt = [random_scene(rng, i, w, h) for i, (w, h) in enumerate(sizes)]
    img_dir = write_images(root / 'ds', gt, sizes)
    images = [{'id': 500 + i, 'file_name': f'{i:03d}.png', 'width': w, 'height': h} for i, (w, h) in enumerate(sizes)]
    anns = [{'id': len(images) + k, 'image_id': 500 + i, 'category_id': CAT_IDS[int(c)],
             'bbox': [x1, y1, x2 - x1, y2 - y1], 'area': (x2 - x1) * (y2 - y1), 'iscrowd': 0}
            for i, boxes in enumerate(gt) for k, (c, x1, y1, x2, y2) in enumerate(boxes, start=10 * i)]
    ann = root / 'instances_val.json'
    ann.write_text(json.dumps({'images': images, 'annotations': anns, 'categories': [
        {'id': c, 'name': n} for c, n in zip(CAT_IDS, ('red', 'green', 'blue'))]}))
    return ann, img_dir, random_predictions(gt, sizes, rng)


def test_save_json_uses_the_files_ids_and_pycocotools_agrees(tmp_path, log_text):
    ann, img_dir, preds = write_coco_scene(tmp_path)
    spec = {'format': 'coco', 'annotations': str(ann), 'images': str(img_dir)}
    loader = create_dataloader(spec, 64, 8, 32, pad=0.5, workers=0)[0]
    names = {0: 'red', 1: 'green', 2: 'blue'}

    def run(**kw):
        model = FakeModel(preds, 3)
        return evaluate(model, SpyLoader(loader, model), names, **kw)[0]

    ours = run()
    coco = run(save_json=True, save_dir=tmp_path / 'run')
    assert 0.3 < coco[3] < 0.9  # a non-trivial case
    assert coco[2] == pytest.approx(ours[2], abs=0.005) and coco[3] == pytest.approx(ours[3], abs=0.005)
    assert f'saving {tmp_path / "run"}' in log_text.getvalue() and 'pycocotools mAP50' in log_text.getvalue()
    pred = json.loads((tmp_path / 'run/predictions.json').read_text())
    assert {p['image_id'] for p in pred} <= set(range(500, 516)) and {p['category_id'] for p in pred} == set(CAT_IDS)
    assert not (tmp_path / 'run/annotations.json').exists()  # scored against the user's own file


def test_val_anno_json_must_exist(tmp_path):
    with pytest.raises(val.ConfigError, match='--anno-json .*nope.json: file not found'):
        val._anno_json(tmp_path / 'nope.json', {}, False)
    assert val._anno_json(None, {}, False) is None
    assert val.parse_opt(['--anno-json', 'a.json']).anno_json == 'a.json'


def test_same_map_on_yolo_coco_and_voc(tmp_path):
    """One scene as YOLO .txt, COCO JSON and VOC XML; the same predictions score the same on each."""
    from tests.helpers import voc_xml

    ann, img_dir, preds = write_coco_scene(tmp_path)
    d = json.loads(ann.read_text())
    (tmp_path / 'voc').mkdir()
    for im in d['images']:
        objs = [(['red', 'green', 'blue'][CAT_IDS.index(a['category_id'])], a['bbox'][0], a['bbox'][1],
                 a['bbox'][0] + a['bbox'][2], a['bbox'][1] + a['bbox'][3], 0)
                for a in d['annotations'] if a['image_id'] == im['id']]
        (tmp_path / 'voc' / f'{im["file_name"][:-4]}.xml').write_text(
            voc_xml(im['file_name'], (im['width'], im['height']), objs))
    names = {0: 'red', 1: 'green', 2: 'blue'}
    splits = {'yolo': str(img_dir), 'coco': {'format': 'coco', 'annotations': str(ann), 'images': str(img_dir)},
              'voc': {'format': 'voc', 'list': None, 'annotations': str(tmp_path / 'voc'), 'images': str(img_dir),
                      'names': names}}
    out = {}
    for fmt, split in splits.items():
        loader = create_dataloader(split, 64, 8, 32, pad=0.5, workers=0)[0]
        model = FakeModel(preds, 3)
        out[fmt] = evaluate(model, SpyLoader(loader, model), names)[0]
    assert 0.3 < out['yolo'][3] < 0.9
    for fmt in ('coco', 'voc'):
        np.testing.assert_allclose(out[fmt][:4], out['yolo'][:4], atol=1e-4)

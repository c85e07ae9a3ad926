"""Training one epoch straight from COCO JSON and from VOC XML, then validating the weights on each format."""
import pytest
import torch

import val
from tests.engine.test_train import tiny_run
from tests.helpers import write_annotation_yamls, write_dataset


@pytest.fixture(scope='module')
def yamls(tmp_path_factory):
    root = tmp_path_factory.mktemp('formats')
    write_dataset(root, n_train=4, n_val=2, nc=3, imgsz=64)
    return write_annotation_yamls(root, nc=3)


@pytest.fixture
def one_thread():
    """Tiny 64 px models on a shared 2-core machine: one intra-op thread avoids spin-wait contention (measured
    1.5 s instead of 26 s per training under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.usefixtures('one_thread')
@pytest.mark.parametrize('fmt', ['coco', 'voc'])
def test_train_one_epoch_and_validate_on_every_format(yamls, fmt, tmp_path):
    save_dir = tiny_run(yamls[fmt], tmp_path, noplots=True, noautoanchor=True)
    best = save_dir / 'weights/best.pt'
    assert best.is_file() and (save_dir / 'results.csv').is_file()
    results = {f: val.run(data=yamls[f], weights=best, imgsz=64, batch_size=2, device='cpu', workers=0,
                          project=tmp_path / 'val', name=f, plots=False, half=False)[0] for f in yamls}
    assert results['coco'] == pytest.approx(results['yolo'], abs=1e-4)
    assert results['voc'] == pytest.approx(results['yolo'], abs=1e-4)

"""Impossible flag values stop at parsing with one line naming the flag, in every entry point (they used to fail
deep inside OpenCV, NMS or the LR schedule: --imgsz 0, --conf-thres 2, --epochs 0, --batch-size 0)."""
import pytest

import detect
import export
import train
import val
from utils.core.sizes import check_img_size
from utils.engine.options import TrainError


@pytest.mark.parametrize('parse, argv, message', [
    (detect.parse_opt, ['--imgsz', '0'], 'argument --imgsz/--img/--img-size: must be a positive integer, got 0'),
    (detect.parse_opt, ['--imgsz', '640', '-64'], 'must be a positive integer, got -64'),
    (detect.parse_opt, ['--conf-thres', '2'], 'argument --conf-thres: must be between 0 and 1, got 2'),
    (detect.parse_opt, ['--iou-thres', 'x'], "argument --iou-thres: expected a number between 0 and 1, got 'x'"),
    (detect.parse_opt, ['--vid-stride', '0'], 'argument --vid-stride: must be a positive integer, got 0'),
    (val.parse_opt, ['--imgsz', '0'], 'must be a positive integer, got 0'),
    (val.parse_opt, ['--batch-size', '0'], 'argument --batch-size: must be a positive integer, got 0'),
    (val.parse_opt, ['--workers', '-1'], 'argument --workers: must be an integer >= 0, got -1'),
    (export.parse_opt, ['--imgsz', '0'], 'must be a positive integer, got 0'),
    (export.parse_opt, ['--opset', '0'], 'argument --opset: must be a positive integer, got 0'),
    (lambda a: train.parse_opt(args=a), ['--epochs', '0'], 'argument --epochs: must be a positive integer, got 0'),
    (lambda a: train.parse_opt(args=a), ['--batch-size', '0'], 'must be positive, or -1 for AutoBatch; got 0'),
    (lambda a: train.parse_opt(args=a), ['--label-smoothing', '1.5'], 'must be between 0 and 1, got 1.5'),
])
def test_cli_rejects_impossible_values(parse, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err


def test_good_values_still_parse():
    assert detect.parse_opt(['--imgsz', '320', '256', '--conf-thres', '0']).imgsz == [320, 256]
    assert train.parse_opt(args=['--batch-size', '-1', '--epochs', '1']).batch_size == -1
    assert val.parse_opt(['--workers', '0', '--iou-thres', '1']).workers == 0


def test_python_api_rejects_them_too(tmp_path):
    with pytest.raises(ValueError, match=r'--img-size must be positive, got \[0, 64\]'):
        check_img_size([0, 64], 32)
    for kw, flag in (({'epochs': 0}, '--epochs'), ({'imgsz': -32, 'epochs': 1}, '--imgsz')):
        with pytest.raises(TrainError, match=f'{flag} must be a positive integer'):
            train.run(project=str(tmp_path), **kw)

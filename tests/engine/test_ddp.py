"""Two-process DDP training on CPU (gloo) through torch.distributed.run, and the DDP helpers outside a launch."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.yolo import DetectionModel
from tests.helpers import write_dataset
from utils.checkpoint.format import save_checkpoint
from utils.engine.distributed import DistInfo, broadcast_object, check_ddp_options, dist_info, wrap_ddp
from utils.engine.runlog import read_results_csv

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path):
    """Two ranks train yolov5n from saved weights with --freeze 3: logs, run dir and LRs as YOLOv5, and the frozen
    layers keep every bit of the starting weights (model and EMA) although each rank sees other images."""
    data = write_dataset(tmp_path / 'tiny', n_train=8, n_val=2, nc=3, imgsz=64)
    torch.manual_seed(0)
    start = DetectionModel('models/yolov5n.yaml', nc=3, verbose=False)
    init = save_checkpoint({'model': start.state_dict(), 'model_yaml': start.yaml, 'nc': 3,
                            'names': {0: 'a', 1: 'b', 2: 'c'}}, tmp_path / 'init.pt')
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE')}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
           '--master_port', str(free_port()), str(ROOT / 'train.py'), '--data', str(data), '--cfg',
           'models/yolov5n.yaml', '--epochs', '1', '--img', '64', '--batch-size', '4', '--workers', '0',
           '--device', 'cpu', '--project', str(tmp_path / 'runs'), '--name', 'ddp', '--noplots', '--sync-bn',
           '--weights', str(init), '--freeze', '3', '--save-period', '1']
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert 'DDP: rank 0/2 on cpu (gloo)' in out and 'DDP: rank 1/2 on cpu (gloo)' in out
    assert 'WARNING --sync-bn needs CUDA devices; ignored on CPU' in out
    assert out.count('Starting training for 1 epochs') == 1  # rank 0 alone logs
    save_dir = tmp_path / 'runs/ddp'
    assert sorted(p.name for p in (tmp_path / 'runs').iterdir()) == ['ddp']  # one run dir, named by rank 0
    _, rows = read_results_csv(save_dir / 'results.csv')
    assert [row[0] for row in rows] == [0]
    # 8 images / (2 ranks x 2 per rank) = 2 iterations: bias LR after warmup step ni=1 is 0.1 - 0.09 * 1/100
    assert rows[0][11] == pytest.approx(0.0991)
    ckpt = torch.load(save_dir / 'weights/last.pt', map_location='cpu', weights_only=True)
    assert ckpt['epoch'] == -1 and not any(k.startswith('module.') for k in ckpt['model'])  # de-paralleled
    e0 = torch.load(save_dir / 'weights/epoch0.pt', map_location='cpu', weights_only=True)
    frozen = {k: v for k, v in start.state_dict().items() if k.startswith(('model.0.', 'model.1.', 'model.2.'))}
    assert any(k.endswith('running_var') for k in frozen)
    for state in ('model', 'ema'):
        assert all(torch.equal(e0[state][k], v) for k, v in frozen.items()), state
        assert not torch.equal(e0[state]['model.3.conv.weight'], start.state_dict()['model.3.conv.weight'])


def test_helpers_outside_a_launch(monkeypatch):
    for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'):
        monkeypatch.delenv(k, raising=False)
    info = dist_info()
    assert info == DistInfo(-1, -1, 1) and info.is_main and not info.ddp
    model = torch.nn.Linear(2, 2)
    assert wrap_ddp(model, info, torch.device('cpu'), sync_bn=True) is model
    assert broadcast_object({'stop': True}, info) == {'stop': True}
    check_ddp_options(info, batch_size=3)  # no constraints without DDP


def test_ddp_option_checks(monkeypatch):
    monkeypatch.setenv('LOCAL_RANK', '1')
    monkeypatch.setenv('RANK', '1')
    monkeypatch.setenv('WORLD_SIZE', '2')
    info = dist_info()
    assert info == DistInfo(1, 1, 2) and not info.is_main and info.ddp
    with pytest.raises(ValueError, match='--batch-size 5 must be a multiple of WORLD_SIZE 2'):
        check_ddp_options(info, 5)
    with pytest.raises(ValueError, match=r'AutoBatch \(--batch-size -1\) is not supported with DDP'):
        check_ddp_options(info, -1)
    with pytest.raises(ValueError, match='--image-weights is not supported with DDP'):
        check_ddp_options(info, 4, image_weights=True)


def run_forced_budget(tmp_path: Path, forcing: str) -> tuple[str, Path]:
    """Two-rank ``train.py --time 1`` on a tiny dataset through a wrapper that first runs ``forcing`` (Python lines
    replacing the trainer's budget functions, so the test does not depend on the machine's speed); returns the log
    and the run directory, after checking the run succeeded."""
    data = write_dataset(tmp_path / 'tiny', n_train=8, n_val=2, nc=3, imgsz=64)
    wrapper = tmp_path / 'train_forced.py'
    wrapper.write_text(
        'import dataclasses, sys\n'
        f'sys.path.insert(0, {str(ROOT)!r})\n'
        'from utils.engine import trainer\n'
        'from utils.engine.time_budget import BudgetRevision\n'
        'real = trainer.decide_epochs\n'
        + forcing +
        'import train\n'
        'train.cli(sys.argv[1:])\n')
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE')}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
           '--master_port', str(free_port()), str(wrapper), '--data', str(data), '--cfg', 'models/yolov5n.yaml',
           '--time', '1', '--img', '64', '--batch-size', '4', '--workers', '0', '--device', 'cpu', '--project',
           str(tmp_path / 'runs'), '--name', 'ddp', '--noplots', '--noautoanchor']
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    return out, tmp_path / 'runs/ddp'


@pytest.mark.slow
def test_two_process_time_budget_agrees_on_the_epoch_count(tmp_path):
    """--time under DDP: rank 0 fixes the count after epoch 0 (forced to 3 here by a wrapper, so the test does not
    depend on the machine's speed) and rank 1 takes it from the broadcast. A rank left at the placeholder of 100
    epochs would wait in a collective until the timeout fails the test."""
    out, save_dir = run_forced_budget(
        tmp_path, 'trainer.decide_epochs = lambda *a, **k: dataclasses.replace(real(*a, **k), epochs=3)\n')
    assert out.count('Starting training for 1 hours') == 1 and out.count('so 3 epochs in all') == 1  # rank 0 only
    assert torch.load(save_dir / 'weights/last.pt', map_location='cpu', weights_only=True)['opt']['epochs'] == 3
    _, rows = read_results_csv(save_dir / 'results.csv')
    assert [int(row[0]) for row in rows] == [0, 1, 2] and '3 epochs completed' in out


@pytest.mark.slow
def test_two_process_time_budget_agrees_on_a_revised_count(tmp_path):
    """A revision under DDP: rank 0 decides 6 epochs and revises to 3 after epoch 2 (both forced by a wrapper); rank
    1 takes the revision from the broadcast and stops with it. A rank still at 6 would wait in epoch 3's collectives
    until the timeout fails the test."""
    out, save_dir = run_forced_budget(
        tmp_path, 'trainer.decide_epochs = lambda *a, **k: dataclasses.replace(real(*a, **k), epochs=6)\n'
                  'trainer.revise_epochs = lambda h, el, epoch, epochs, d, v: (\n'
                  '    BudgetRevision(epoch, epochs, 3, 1.0, 10.0) if epoch == 2 else None)\n')
    assert out.count('so 6 epochs in all') == 1 and out.count('so 3 epochs in all instead of 6') == 1  # rank 0 only
    assert torch.load(save_dir / 'weights/last.pt', map_location='cpu', weights_only=True)['opt']['epochs'] == 3
    _, rows = read_results_csv(save_dir / 'results.csv')
    assert [int(row[0]) for row in rows] == [0, 1, 2] and '3 epochs completed' in out

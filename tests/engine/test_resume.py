"""--resume: a run killed with SIGKILL mid-training continues to its planned last epoch, exactly as if never killed."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from tests.helpers import write_dataset
from utils.engine import trainer as trainer_mod
from utils.engine.options import TrainError
from utils.engine.runlog import read_results_csv

ROOT = Path(__file__).resolve().parents[2]
OPTS = dict(cfg='models/yolov5n.yaml', epochs=3, imgsz=64, batch_size=2, workers=0, device='cpu', noplots=True,
            seed=0)


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp('tiny'), n_train=4, n_val=2, nc=3, imgsz=64)


def cli_args(opts: dict) -> list[str]:
    args = []
    for k, v in opts.items():
        flag = '--' + k.replace('_', '-')
        args += [flag] if v is True else [] if v is False else [flag, str(v)]
    return args


def train_cli(*args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    return subprocess.Popen([sys.executable, str(ROOT / 'train.py'), *args], cwd=ROOT, env=env, text=True, **popen)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, f'training ended (rc={proc.returncode}) before {path.name} appeared'
        assert time.time() - t0 < timeout, f'{path} did not appear in {timeout}s'
        time.sleep(0.02)


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(data, tmp_path):
    reference = train.run(data=str(data), project=str(tmp_path), name='reference', **OPTS)

    log = open(tmp_path / 'killed.log', 'w')
    proc = train_cli(*cli_args(dict(data=data, project=tmp_path, name='killed', **OPTS)), stdout=log, stderr=log)
    last = tmp_path / 'killed/weights/last.pt'
    try:
        wait_for(last, proc)  # epoch 0 is saved: the run is now in epoch 1 (or saving best.pt)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    ckpt = torch.load(last, map_location='cpu', weights_only=True)  # never a torn file: written then renamed
    assert ckpt['epoch'] in (0, 1) and ckpt['optimizer'] is not None and ckpt['train_state'] is not None
    killed_at = ckpt['epoch']

    r = subprocess.run([sys.executable, str(ROOT / 'train.py'), '--resume', str(last)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f'from epoch {killed_at + 1} to 3 total epochs' in r.stdout

    keys, rows = read_results_csv(tmp_path / 'killed/results.csv')
    _, ref_rows = read_results_csv(reference / 'results.csv')
    assert [row[0] for row in rows] == [0, 1, 2]  # each epoch logged once, the last one is the planned last
    for row, ref in zip(rows, ref_rows):  # same losses, metrics and LRs as the run that was never killed
        assert row == pytest.approx(ref, rel=1e-3, abs=1e-6), keys
    final = torch.load(last, map_location='cpu', weights_only=True)
    ref_final = torch.load(reference / 'weights/last.pt', map_location='cpu', weights_only=True)
    assert final['epoch'] == -1 and final['optimizer'] is None  # finished and stripped
    worst = max((final['model'][k].float() - v.float()).abs().max().item() for k, v in ref_final['model'].items())
    assert worst < 1e-2


class Crash(Exception):
    pass


def test_bare_resume_continues_latest_run_and_refuses_finished(data, tmp_path, monkeypatch):
    """In-process: a crash right after epoch 0 is saved; `--resume` with no path finds that run's last.pt."""
    opts = dict(OPTS, epochs=2, noautoanchor=True, data=str(data), project=str(tmp_path))
    save = trainer_mod.Trainer.save

    def save_then_crash(self, epoch, fi):
        save(self, epoch, fi)
        raise Crash

    monkeypatch.setattr(trainer_mod.Trainer, 'save', save_then_crash)
    with pytest.raises(Crash):
        train.run(name='crashed', **opts)
    monkeypatch.setattr(trainer_mod.Trainer, 'save', save)
    last = tmp_path / 'crashed/weights/last.pt'
    saved = torch.load(last, weights_only=True)
    # 2 batches of 2; accumulate rises 1 -> 32 over the 100 warmup iterations: steps at ni=0 and 1
    assert saved['epoch'] == 0 and saved['train_state']['last_opt_step'] == 1 and saved['updates'] == 2
    seen = {}
    one_epoch = trainer_mod.Trainer.train_one_epoch

    def record(self, epoch):
        group0 = self.optimizer.param_groups[0]
        seen[epoch] = (self.last_opt_step, self.ema.updates, self.scheduler.last_epoch, group0['lr'])
        one_epoch(self, epoch)

    monkeypatch.setattr(trainer_mod.Trainer, 'train_one_epoch', record)
    assert train.run(resume=True, project=str(tmp_path)) == tmp_path / 'crashed'
    lr0 = saved['optimizer']['param_groups'][0]['lr']
    assert lr0 == pytest.approx(0.01 * 0.505)  # already stepped to lf(1) for epoch 1 (not reset to lf(0))
    assert seen == {1: (1, 2, 1, lr0)}  # accumulation, EMA updates, scheduler and LR continue where they were
    assert [r[0] for r in read_results_csv(tmp_path / 'crashed/results.csv')[1]] == [0, 1]
    assert torch.load(last, weights_only=True)['epoch'] == -1
    with pytest.raises(TrainError, match=r'last\.pt training to 2 epochs is finished, nothing to resume'):
        train.run(resume=str(last))


def test_resume_errors_are_one_line(tmp_path):
    with pytest.raises(TrainError, match=r'--resume checkpoint .*nope\.pt not found'):
        train.run(resume=str(tmp_path / 'nope.pt'))
    with pytest.raises(TrainError, match='--resume: no last.pt found under'):
        train.run(resume=True, project=str(tmp_path))

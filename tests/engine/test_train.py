"""train.py end to end on a tiny dataset the tests write (64 px images, 1 epoch, no workers), plus the CLI surface."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import train
from tests.helpers import write_dataset, write_hyp
from utils.engine import options, trainer
from utils.engine.options import TrainError
from utils.engine.runlog import RESULT_KEYS, read_results_csv

ROOT = Path(__file__).resolve().parents[2]
HYP = ROOT / 'data/hyps/hyp.scratch-low.yaml'
RUN_FILES = ('weights/last.pt', 'weights/best.pt', 'hyp.yaml', 'opt.yaml', 'results.csv', 'results.png',
             'labels.jpg', 'train_batch0.jpg', 'train_batch1.jpg', 'train_batch2.jpg',  # before / during training
             'confusion_matrix.png', 'val_batch0_labels.jpg', 'val_batch0_pred.jpg')  # final validation of best.pt
# PR/F1/P/R curves are drawn only when some prediction is a true positive (as YOLOv5): not after 1 tiny epoch.


@pytest.fixture(scope='module')
def finished_run(data, tmp_path_factory) -> Path:
    """One finished 1-epoch yolov5n run (seed 0) shared by the output, checkpoint, seed and transfer tests."""
    return tiny_run(data, tmp_path_factory.mktemp('base'), seed=0)




def tiny_run(data: Path, project: Path, **kw) -> Path:
    opts = dict(data=str(data), cfg='models/yolov5n.yaml', epochs=1, imgsz=64, batch_size=2, workers=0,
                project=str(project), name='exp', device='cpu')
    opts.update(kw)
    return train.run(**opts)


@pytest.mark.slow
@pytest.mark.parametrize('cfg', ['models/yolov5-efficientvit.yaml', 'models/yolov5n.yaml'])
def test_one_epoch_writes_every_output(data, finished_run, tmp_path, cfg, log_lines):
    if cfg == 'models/yolov5n.yaml':
        save_dir = finished_run  # the shared run is exactly this one
    else:
        save_dir = tiny_run(data, tmp_path, cfg=cfg)
        assert save_dir == tmp_path / 'exp'
        # 64 px: M0's 8x8 stride-8 map is padded to four 7x7 windows (the backbone's input_size_note)
        assert 'EfficientViT at 64x64: window attention computes on 2.22x the tokens' in '\n'.join(log_lines)
    missing = [f for f in RUN_FILES if not (save_dir / f).is_file() or (save_dir / f).stat().st_size == 0]
    assert missing == []

    # results.csv: YOLOv5's columns, 20-wide padded fields, one row for epoch 0
    lines = (save_dir / 'results.csv').read_text().splitlines()
    assert len(lines) == 2 and all(len(f) == 20 for f in lines[0].split(','))
    keys, rows = read_results_csv(save_dir / 'results.csv')
    assert keys == ['epoch', *RESULT_KEYS] and len(keys) == 14
    row = dict(zip(keys, rows[0]))
    assert row['epoch'] == 0
    assert all(math.isfinite(row[k]) and row[k] > 0 for k in keys[1:4])  # train box/obj/cls losses
    assert all(math.isfinite(row[k]) and row[k] > 0 for k in keys[8:11])  # val losses from compute_loss
    # 3 iterations of warmup (nw=100): last ni=2 -> bias lr 0.1 + 2/100*(0.01-0.1), weights 0.01*2/100
    assert row['x/lr0'] == pytest.approx(0.0982) and row['x/lr1'] == pytest.approx(0.0002)
    assert row['x/lr2'] == pytest.approx(0.0002)

    assert yaml.safe_load((save_dir / 'hyp.yaml').read_text()) == yaml.safe_load(HYP.read_text())  # unscaled
    opt = yaml.safe_load((save_dir / 'opt.yaml').read_text())
    assert (opt['epochs'], opt['imgsz'], opt['batch_size'], opt['save_dir']) == (1, 64, 2, str(save_dir))
    assert opt['cfg'].endswith(cfg) and opt['hyp']['lr0'] == 0.01

    ckpt = torch.load(save_dir / 'weights/last.pt', map_location='cpu', weights_only=True)
    assert ckpt['format'] == 'yolov5-efficientvit' and ckpt['epoch'] == -1 and ckpt['optimizer'] is None
    assert ckpt['nc'] == 3 and ckpt['names'] == {0: 'class0', 1: 'class1', 2: 'class2'}
    assert ckpt['opt']['epochs'] == 1 and ckpt['model_yaml']['nc'] == 3


def test_last_pt_loads_weights_only_and_rebuilds(finished_run):
    save_dir = finished_run
    ckpt = torch.load(save_dir / 'weights/last.pt', map_location='cpu', weights_only=True)
    from utils.checkpoint.model import model_from_checkpoint
    model = model_from_checkpoint(ckpt)
    assert set(model.state_dict()) == set(ckpt['model'])
    assert all(v.dtype == torch.float16 for v in ckpt['model'].values() if v.is_floating_point())  # stripped
    pred, _ = model(torch.zeros(1, 3, 64, 64))
    assert pred.shape == (1, 3 * (8 * 8 + 4 * 4 + 2 * 2), 8)  # 3 anchors x cells of strides 8/16/32, 5 + nc


def test_checkpoints_hold_the_state_at_the_save_and_best_pt_is_its_copy(data, tmp_path, monkeypatch):
    """last.pt holds the model, EMA and optimizer as they were when it was saved (the checkpoint refers to the live
    tensors and is written at once); an epoch that ties or beats the best fitness copies its bytes to best.pt, and
    --save-period to epoch{N}.pt."""
    seen = []
    save = trainer.Trainer.save

    def checking_save(self, epoch, fi):
        save(self, epoch, fi)
        last = torch.load(self.last, weights_only=True)
        for key, live in (('model', self.model), ('ema', self.ema.ema)):
            state = live.state_dict()
            assert last[key].keys() == state.keys() and all(torch.equal(last[key][k], v) for k, v in state.items())
        assert last['optimizer']['state'].keys() == self.optimizer.state_dict()['state'].keys()
        copies = [f.read_bytes() == self.last.read_bytes() for f in (self.best, self.wdir / f'epoch{epoch}.pt')]
        seen.append((epoch, self.best_fitness == fi, *copies))

    monkeypatch.setattr(trainer.Trainer, 'save', checking_save)
    run = tiny_run(data, tmp_path, epochs=2, save_period=1, noplots=True)
    assert seen == [(0, True, True, True), (1, True, True, True)]  # the tiny runs' fitness ties at every epoch
    assert torch.load(run / 'weights/epoch0.pt', weights_only=True)['epoch'] == 0


@pytest.mark.slow
def test_seeded_runs_repeat_first_epoch_losses(data, finished_run, tmp_path):
    def losses(d):
        return read_results_csv(d / 'results.csv')[1][0][1:4].tolist()
    again = tiny_run(data, tmp_path, name='again', noplots=True, seed=0)
    other = tiny_run(data, tmp_path, name='other', noplots=True, seed=1)
    assert not any(again.glob('*.jpg')) and not any(again.glob('*.png'))  # --noplots
    assert losses(again) == losses(finished_run)
    assert losses(other) != losses(finished_run)  # the seed matters (model init, augmentation, data order)
    # augmentation seeds come from the sampler, not from the workers: 2 workers give the same epoch as none
    workers = tiny_run(data, tmp_path, name='workers', noplots=True, seed=0, workers=2)
    assert losses(workers) == losses(finished_run)


def test_augmentation_does_not_depend_on_the_number_of_workers(data):
    """The augmented batches themselves (mosaic, HSV, flips drawn per sample) are equal with 0 and 2 workers, and
    the main process's own random draws are not shifted by loading."""
    import random

    from utils.data.config import load_hyp
    from utils.data.loader import create_dataloader

    hyp = load_hyp(HYP)

    def batches(workers):
        random.seed(5)
        loader, _ = create_dataloader(str(data.parent / 'images' / 'train'), 64, 2, 32, hyp=hyp, augment=True,
                                      workers=workers, shuffle=True, seed=3)
        out = [(im.clone(), t.clone()) for im, t, *_ in loader]
        return out, random.random()

    (a, ra), (b, rb) = batches(0), batches(2)
    assert len(a) == 3 and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert ra == rb
    c, _ = batches(0)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, c))


@pytest.mark.slow
def test_loss_falls_on_learnable_data(tmp_path):
    """8 images in one batch, no augmentation: the same batch every epoch. Adam moves weights even inside YOLOv5's
    100-iteration warmup (SGD's warmed-up LR is ~1e-4 here, too small to show in 12 steps)."""
    data = write_dataset(tmp_path / 'learn', n_train=8, n_val=2, nc=2, imgsz=64, seed=1)
    hyp = write_hyp(tmp_path / 'hyp.yaml', ROOT / 'data/hyps/hyp.no-augmentation.yaml', lr0=0.01, warmup_bias_lr=0.01)
    save_dir = tiny_run(data, tmp_path, epochs=10, batch_size=8, hyp=str(hyp), optimizer='Adam', noplots=True,
                        noval=True, noautoanchor=True)
    _, rows = read_results_csv(save_dir / 'results.csv')
    assert [r[0] for r in rows] == list(range(10))
    total = [sum(r[1:4]) for r in rows]  # box + obj + cls
    assert sum(total[-2:]) / 2 < 0.92 * total[0], total  # measured: 0.147 -> 0.126 (-14%) at epochs 8-9


@pytest.mark.parametrize('nbs, steps', [(None, 2), (2, 3)])
def test_hyp_nbs_sets_images_per_optimizer_step(data, tmp_path, nbs, steps):
    """3 batches of 2: YOLOv5's nbs 64 accumulates 2 batches by the third warmup iteration (2 steps); nbs 2 steps
    after every batch (3). Counted by the EMA, which updates once per optimizer step."""
    extra = {} if nbs is None else {'nbs': nbs}
    hyp = write_hyp(tmp_path / 'hyp.yaml', HYP, **extra)
    save_dir = tiny_run(data, tmp_path, hyp=str(hyp), noplots=True, noval=True, noautoanchor=True, save_period=1)
    assert torch.load(save_dir / 'weights/epoch0.pt', weights_only=True)['updates'] == steps  # kept unstripped
    assert yaml.safe_load((save_dir / 'hyp.yaml').read_text()).get('nbs') == nbs


def test_diverged_training_stops_with_one_line(data, tmp_path, monkeypatch):
    """A loss that is no longer finite ends training with one line naming epoch, batch and losses and what to do
    (YOLOv5 trains on with NaN rows); nothing past that batch runs."""
    from utils.ops.loss import ComputeLoss

    plain, calls = ComputeLoss.__call__, []

    def nan_on_call(self, p, targets, n=2):
        loss, items = plain(self, p, targets)
        calls.append(1)
        return (loss * float('nan'), items * float('nan')) if len(calls) == n else (loss, items)

    monkeypatch.setattr(ComputeLoss, '__call__', nan_on_call)
    with pytest.raises(TrainError, match=r'^epoch 0, batch 1: training diverged \(box nan, obj nan, cls nan loss\); '
                                         r'no epoch finished, nothing was saved\. Lower lr0 \(now 0\.01\)'):
        tiny_run(data, tmp_path, noplots=True, noval=True)
    assert len(calls) == 2
    calls.clear()  # 3 batches per epoch: NaN on the 5th call is epoch 1, batch 1, after epoch 0 was saved
    monkeypatch.setattr(ComputeLoss, '__call__', lambda self, p, t: nan_on_call(self, p, t, 5))
    with pytest.raises(TrainError, match=r'^epoch 1, batch 1: .*weights/last\.pt holds the last finished epoch\.'):
        tiny_run(data, tmp_path / 'second', noplots=True, noval=True, epochs=2)



def test_ctrl_c_is_one_line_naming_what_was_kept(data, tmp_path, monkeypatch, capsys):
    """Ctrl-C during training: one line saying which epoch last.pt holds and how to continue, exit status 130 (YOLOv5
    prints the KeyboardInterrupt traceback from inside whatever layer was running)."""
    from utils.engine.options import TrainInterrupted
    from utils.engine.trainer import Trainer

    plain = Trainer.train_one_epoch

    def interrupt_in(n):
        def one_epoch(self, epoch):
            if epoch == n:
                raise KeyboardInterrupt
            plain(self, epoch)
        return one_epoch

    monkeypatch.setattr(Trainer, 'train_one_epoch', interrupt_in(0))
    with pytest.raises(TrainInterrupted, match=r'^interrupted in epoch 0; no epoch was saved yet$'):
        tiny_run(data, tmp_path, noplots=True, noval=True, epochs=3)
    monkeypatch.setattr(Trainer, 'train_one_epoch', interrupt_in(1))
    last = tmp_path / 'b' / 'exp' / 'weights' / 'last.pt'
    with pytest.raises(SystemExit) as e:
        train.cli(['--data', str(data), '--cfg', 'models/yolov5n.yaml', '--epochs', '3', '--img', '64',
                   '--batch-size', '2', '--workers', '0', '--project', str(tmp_path / 'b'), '--device', 'cpu',
                   '--noplots', '--noval'])
    assert e.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f'train.py: interrupted in epoch 1; {last} holds epoch 0. Continue with: python train.py --resume '
                   f'{last}')
    assert torch.load(last, weights_only=True)['epoch'] == 0
    # resumed and stopped again before its first epoch ends: last.pt still holds the epoch the first run saved
    with pytest.raises(TrainInterrupted, match=r'^interrupted in epoch 1; .*last\.pt holds epoch 0\.'):
        train.run(resume=str(last))

def test_cpu_training_runs_channels_last(finished_run):
    """The trainer converts model and images to channels-last on CPU; the saved weights keep that layout."""
    from utils.core.torch_utils import training_memory_format
    assert training_memory_format('cpu') == torch.channels_last
    assert training_memory_format('cuda:0') == torch.contiguous_format
    w = torch.load(finished_run / 'weights/last.pt', weights_only=True)['model']['model.0.conv.weight']
    assert w.shape[1:] == (3, 6, 6) and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


@pytest.mark.parametrize('cfg', ['models/yolov5-efficientvit.yaml', 'models/yolov5n.yaml'])
def test_channels_last_training_step_matches_contiguous(cfg):
    """Same loss and gradients in both layouts: the layout change is a speed choice, never a numbers one. Measured:
    gradient-vector difference 1.6e-5 (M0) / 9e-5 (yolov5n) of its norm (float32 sums in another order); a layout bug
    would be O(1)."""
    from models.yolo import Model
    from utils.data.config import load_hyp
    from utils.ops.loss import ComputeLoss
    torch.manual_seed(0)
    model = Model(cfg, nc=3, verbose=False).train()
    model.hyp = load_hyp(HYP)
    x = torch.rand(2, 3, 96, 128)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4], [1, 2, 0.3, 0.6, 0.2, 0.2]])
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        m = model.to(memory_format=fmt)
        m.zero_grad()
        loss, _ = ComputeLoss(m)(m(x.contiguous(memory_format=fmt)), targets)
        loss.backward()
        results.append((loss.detach().clone(), [p.grad.clone() for p in m.parameters()]))
    (l0, g0), (l1, g1) = results
    assert torch.allclose(l0, l1, rtol=1e-5)
    # atol relative to the largest gradient: a bias feeding a train-mode BN has a true gradient of 0 (~1e-7 of noise)
    atol = 1e-3 * max(g.abs().max().item() for g in g0)
    assert all(torch.allclose(a, b, rtol=1e-3, atol=atol) for a, b in zip(g0, g1))
    flat0, flat1 = torch.cat([g.flatten() for g in g0]), torch.cat([g.flatten() for g in g1])
    assert (flat0 - flat1).norm() / flat0.norm() < 1e-3


@pytest.mark.parametrize('cfg, min_cosine', [('models/yolov5-efficientvit.yaml', 0.9), ('models/yolov5n.yaml', 0.8)])
def test_bf16_autocast_training_step_follows_float32(cfg, min_cosine):
    """The CPU bf16 training step (utils/core/precision, used on CPUs with AMX or AVX-512 BF16) computes the float32
    step's loss and a gradient pointing the same way. Measured at 160 px, batch 4: loss within 0.12 %, gradient
    cosine 0.97 (M0) / 0.88 (yolov5n). bf16 keeps 8 significant bits, and a randomly initialised detector with
    BatchNorm amplifies input rounding ~100x in its weight gradients (float32 summation order alone moves them
    1.6e-5, see the channels-last test), so the gradients differ by 25-50 % of their norm; a cast bug or a layer
    left in bf16 where it must not be gives a cosine near 0 or a different loss."""
    from models.yolo import Model
    from utils.data.config import load_hyp
    from utils.ops.loss import ComputeLoss
    torch.manual_seed(0)
    model = Model(cfg, nc=3, verbose=False).train().to(memory_format=torch.channels_last)
    model.hyp = load_hyp(HYP)
    x = torch.rand(4, 3, 160, 160).contiguous(memory_format=torch.channels_last)
    targets = torch.tensor([[i, i % 3, 0.3 + 0.1 * i, 0.5, 0.3, 0.4] for i in range(4)])
    results, head_dtypes = [], []
    model.model[-1].m[0].register_forward_hook(lambda m, i, out: head_dtypes.append(out.dtype))
    for dtype in (None, torch.bfloat16):
        model.zero_grad()
        with torch.autocast('cpu', dtype=dtype, enabled=dtype is not None):
            pred = model(x)
        assert head_dtypes[-1] == (dtype or torch.float32)  # the detector really ran in bf16
        assert pred[0].dtype == torch.float32  # Detect hands the loss float32
        loss, _ = ComputeLoss(model)(pred, targets)
        loss.backward()
        results.append((loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    (l0, g0), (l1, g1) = results
    assert abs(l1 - l0) < 1e-2 * l0
    assert torch.nn.functional.cosine_similarity(g0, g1, dim=0) > min_cosine


def test_trainer_precision_follows_no_amp_and_the_cpu(monkeypatch):
    """bf16 autocast on a CPU with bf16 hardware, float32 without or with --no-amp; predictions reach the loss in
    float32."""
    from utils.core import precision
    from utils.engine.trainer import Trainer
    monkeypatch.setattr(precision, 'cpu_bf16_unit', lambda: 'AVX-512 BF16')
    cpu = torch.device('cpu')
    trainer = Trainer(options.TrainOptions(), cpu)
    assert trainer.autocast_dtype == torch.bfloat16 and trainer.amp is False  # no GradScaler on the CPU
    from models.yolo import Model
    conv = torch.nn.Conv2d(3, 4, 1)
    pred = trainer.predict(Model('models/yolov5n.yaml', nc=3, verbose=False).train(), torch.rand(1, 3, 64, 64))
    assert [p.dtype for p in pred] == [torch.float32] * 3
    with trainer.autocast():
        assert conv(torch.rand(1, 3, 4, 4)).dtype == torch.bfloat16
    assert Trainer(options.TrainOptions(no_amp=True), cpu).autocast_dtype is None
    monkeypatch.setattr(precision, 'cpu_bf16_unit', lambda: None)
    assert Trainer(options.TrainOptions(), cpu).autocast_dtype is None
    assert train.parse_opt(args=['--no-amp']).no_amp is True and train.parse_opt(args=[]).no_amp is False


@pytest.mark.parametrize('bad', [0, 2.5, 'big', True])
def test_hyp_nbs_must_be_a_positive_integer(tmp_path, bad):
    from utils.data.config import ConfigError, load_hyp
    hyp = write_hyp(tmp_path / 'hyp.yaml', HYP, nbs=bad)
    with pytest.raises(ConfigError, match=r'hyp.yaml: hyperparameter nbs must be a positive integer'):
        load_hyp(hyp)


def test_freeze_5_freezes_the_whole_efficientvit_backbone(data, tmp_path):
    from models.yolo import Model
    from utils.engine import optim
    model = Model('models/yolov5-efficientvit.yaml', nc=3, verbose=False)
    frozen = model.freeze(optim.freeze_indices([5]))
    backbone = [n for n, _ in model.named_parameters() if n.startswith('model.0.')]
    assert len(backbone) > 100 and frozen == backbone
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith('model.0.'))
    decay, no_decay, biases = optim.split_params(model, model.no_weight_decay())
    ab = [p for n, p in model.named_parameters() if n.endswith('attention_biases')]
    assert len(ab) > 0 and {id(p) for p in ab} <= {id(p) for p in no_decay}
    assert len(decay) + len(no_decay) + len(biases) == len(list(model.parameters()))


def test_official_yolov5_pt_fine_tunes_its_own_architecture(data, tmp_path, log_lines):
    """A file as YOLOv5 v7.0 writes it (pickled fp16 model, 80 classes), fine-tuned on 3 classes without --cfg."""
    from models.yolo import Model
    official = Model('models/yolov5n.yaml', verbose=False).half()
    official.names = {i: f'coco{i}' for i in range(80)}
    path = tmp_path / 'yolov5n.pt'
    torch.save({'epoch': -1, 'best_fitness': None, 'model': official, 'ema': None, 'updates': None,
                'optimizer': None, 'opt': {}, 'git': {}, 'date': '2022-11-22T00:00:00'}, path)
    opt = train.parse_opt(args=['--weights', str(path)])  # --cfg left at its default
    for k, v in dict(data=str(data), epochs=1, imgsz=64, batch_size=2, workers=0, project=str(tmp_path),
                     device='cpu', noplots=True, noautoanchor=True, noval=True).items():
        setattr(opt, k, v)
    save_dir = train.main(opt)
    assert f'--cfg not set: using the model YAML stored in {path}' in log_lines
    total = len(Model('models/yolov5n.yaml', nc=3, verbose=False).state_dict())
    # all but Detect's 3 output convs (weight + bias, nc 80 -> 3); anchors kept (no --cfg: YOLOv5's rule)
    assert f'Transferred {total - 6}/{total} items from {path}' in log_lines
    assert torch.load(save_dir / 'weights/last.pt', weights_only=True)['model_yaml']['depth_multiple'] == 0.33


@pytest.mark.slow
def test_many_flags_in_one_run(data, finished_run, tmp_path, log_lines):
    """--weights (our best.pt) --cfg --cos-lr --image-weights --multi-scale --save-period 1 --freeze 10
    --optimizer AdamW --label-smoothing --single-cls --cache ram --no-amp, two epochs: each flag leaves a trace we
    can check (--no-amp also keeps a float32 run end to end in the suite on CPUs with AMX or AVX-512 BF16, which
    train in bf16)."""
    best = finished_run / 'weights/best.pt'
    save_dir = tiny_run(data, tmp_path, epochs=2, cos_lr=True, image_weights=True, multi_scale=True, save_period=1,
                        freeze=[10], optimizer='AdamW', label_smoothing=0.1, single_cls=True, cache='ram',
                        noplots=True, noautoanchor=True, noval=True, weights=str(best), no_amp=True)
    assert 'AMP: off, training in float32 on cpu' in log_lines
    assert yaml.safe_load((save_dir / 'opt.yaml').read_text())['no_amp'] is True
    n = len(torch.load(best, weights_only=True)['model'])  # all but Detect's 3 output convs (nc 3 -> 1) and,
    assert f'Transferred {n - 7}/{n} items from {best}' in log_lines  # --cfg given, the anchors (YOLOv5's rule)
    assert any(line.startswith('optimizer: AdamW(lr=0.01) with parameter groups 57 weight(decay=0.0), 60 weight('
                               'decay=0.0005), 60 bias') for line in log_lines)  # YOLOv5's yolov5s/n group counts
    e0, e1 = (torch.load(save_dir / f'weights/epoch{i}.pt', weights_only=True) for i in (0, 1))
    assert (e0['epoch'], e1['epoch']) == (0, 1) and e0['optimizer'] is not None  # --save-period 1: kept unstripped
    assert e1['nc'] == 1 and e1['names'] == {0: 'item'}  # --single-cls
    assert e1['optimizer']['param_groups'][1]['weight_decay'] == pytest.approx(0.0005)
    assert 'betas' in e1['optimizer']['param_groups'][0]  # AdamW
    for k in ('model.0.conv.weight', 'model.9.cv2.conv.weight'):  # --freeze 10: backbone 0-9 never moves
        assert torch.equal(e0['model'][k], e1['model'][k]), k
    assert not torch.equal(e0['model']['model.24.m.0.weight'], e1['model']['model.24.m.0.weight'])
    _, rows = read_results_csv(save_dir / 'results.csv')
    # cosine one-cycle: lf(1) = 0.505 for 2 epochs; 3 batches/epoch, last warmup step of epoch 1 is ni=5
    assert rows[1][12] == pytest.approx(0.01 * 0.505 * 5 / 100)


# ------------------------------------------------------------------------------------------------ options / errors
def test_parse_opt_defaults_match_yolov5_v7(data):
    opt = options.apply_train_defaults(train.parse_opt(args=['--data', str(data)]))  # a YAML without train_defaults
    assert (opt.weights, opt.cfg) == ('', 'models/yolov5-efficientvit.yaml')
    assert train.parse_opt(args=[]).data == 'data/shapes.yaml'
    assert opt.hyp == 'data/hyps/hyp.scratch-low.yaml'
    assert (opt.epochs, opt.batch_size, opt.imgsz, opt.workers, opt.patience, opt.seed) == (100, 16, 640, 8, 100, 0)
    assert (opt.optimizer, opt.freeze, opt.save_period, opt.label_smoothing) == ('SGD', [0], -1, 0.0)
    assert opt.resume is False and opt.cache is None and opt.evolve is None and opt.name == 'exp'
    assert Path(opt.project).parts[-2:] == ('runs', 'train')
    flags = train.parse_opt(args=['--img', '320', '--resume', '--cache', '--evolve', '--freeze', '0', '1'])
    assert (flags.imgsz, flags.resume, flags.cache, flags.evolve, flags.freeze) == (320, True, 'ram', 300, [0, 1])


def test_dataset_train_defaults_fill_only_unset_flags(data, tmp_path, log_lines):
    d = yaml.safe_load(Path(data).read_text())
    d['train_defaults'] = {'epochs': 3, 'imgsz': 96, 'hyp': 'data/hyps/hyp.scratch-high.yaml'}
    rec = tmp_path / 'rec.yaml'
    rec.write_text(yaml.safe_dump(d))
    opt = options.apply_train_defaults(train.parse_opt(args=['--data', str(rec), '--epochs', '5']))
    assert (opt.epochs, opt.imgsz, opt.batch_size, opt.patience) == (5, 96, 16, 100)  # the flag wins, then the YAML
    assert opt.hyp == 'data/hyps/hyp.scratch-high.yaml'
    assert any(f'using {rec} train_defaults: imgsz=96, hyp=data/hyps/hyp.scratch-high.yaml' in x for x in log_lines)
    d['train_defaults'] = {'epoch': 3}
    rec.write_text(yaml.safe_dump(d))
    with pytest.raises(TrainError, match=r"train_defaults keys \['epoch'\] are not allowed"):
        options.apply_train_defaults(train.parse_opt(args=['--data', str(rec)]))
    from utils.engine.optim import OPTIMIZERS
    assert train.OPTIMIZERS == OPTIMIZERS  # one tuple, defined in utils/engine/options.py (no torch for --help)
    d['train_defaults'] = {'optimizer': 'AdamW'}
    rec.write_text(yaml.safe_dump(d))
    assert options.apply_train_defaults(train.parse_opt(args=['--data', str(rec)])).optimizer == 'AdamW'
    assert options.apply_train_defaults(train.parse_opt(args=['--data', str(rec), '--optimizer', 'SGD'])).optimizer \
        == 'SGD'
    d['train_defaults'] = {'optimizer': 'Lion'}
    rec.write_text(yaml.safe_dump(d))
    with pytest.raises(TrainError, match=r"train_defaults optimizer 'Lion' is not one of SGD, Adam, AdamW"):
        options.apply_train_defaults(train.parse_opt(args=['--data', str(rec)]))


def test_shapes_yaml_recommends_a_cpu_budget():
    rec = options.dataset_train_defaults('data/shapes.yaml')
    assert set(rec) <= set(options.RECOMMENDABLE) and rec['imgsz'] < 640 and rec['epochs'] < 100
    assert 0 < rec['time'] <= 0.2  # the quick start's 12 minutes, setup, import and a busy epoch's margin left over
    assert rec['cache'] == 'ram'  # 600 small images: decoding them once takes the JPEG decode off every epoch


def test_dataset_cache_recommendation_and_off(data, tmp_path, log_lines):
    d = yaml.safe_load(Path(data).read_text())
    d['train_defaults'] = {'cache': 'ram'}
    rec = tmp_path / 'rec.yaml'
    rec.write_text(yaml.safe_dump(d))
    assert options.apply_train_defaults(train.parse_opt(args=['--data', str(rec)])).cache == 'ram'
    assert any(f'using {rec} train_defaults: cache=ram' in x for x in log_lines)
    assert options.apply_train_defaults(train.parse_opt(args=['--data', str(rec), '--cache', 'off'])).cache is None
    assert options.apply_train_defaults(train.parse_opt(args=['--data', str(rec), '--cache', 'disk'])).cache == 'disk'
    assert options.apply_train_defaults(train.parse_opt(args=['--data', str(data), '--cache', 'off'])).cache is None
    d['train_defaults'] = {'cache': 'gpu'}
    rec.write_text(yaml.safe_dump(d))
    with pytest.raises(TrainError, match=r"train_defaults cache 'gpu' is not one of ram, disk, val, off"):
        options.apply_train_defaults(train.parse_opt(args=['--data', str(rec)]))


def test_training_says_where_results_are_once(data, tmp_path, log_lines):
    """The final validation of best.pt plots into the run directory; the run ends with one 'Results saved' line
    (the evaluator said it too, a second identical line, before the trainer's)."""
    run = tiny_run(data, tmp_path, noautoanchor=True)
    saved = [line for line in log_lines if line.startswith('Results saved to')]
    assert len(saved) == 1 and str(run) in saved[0]


def test_run_rejects_unknown_option():
    with pytest.raises(TypeError, match="unknown option 'epoch'"):
        train.run(epoch=3)


def test_missing_official_weights_is_a_clear_error_not_a_download(data, tmp_path):
    with pytest.raises(TrainError, match=r'weights yolov5s\.pt not found; nothing is downloaded'):
        tiny_run(data, tmp_path, weights='yolov5s.pt')
    assert not (tmp_path / 'exp').exists()


@pytest.mark.parametrize('name, kind', [('best.onnx', 'an ONNX export'), ('best.torchscript', 'a TorchScript export'),
                                        ('best_openvino_model', 'an OpenVINO export'),
                                        ('best_openvino_model/best.xml', 'an OpenVINO export')])
def test_exported_weights_are_named_not_called_missing(data, tmp_path, name, kind):
    """An export holds no training state; an OpenVINO folder used to be reported as 'not found'."""
    w = tmp_path / 'w' / name
    if w.suffix:
        w.parent.mkdir(parents=True, exist_ok=True)
        w.write_bytes(b'exported bytes')
    else:
        w.mkdir(parents=True)
    with pytest.raises(TrainError, match=rf'--weights .*{w.name} is {kind}: train.py starts from PyTorch .pt weights'):
        tiny_run(data, tmp_path, weights=str(w))
    with pytest.raises(TrainError, match=rf'--resume .*{w.name} is {kind}'):
        train.run(resume=str(w))
    with pytest.raises(TrainError, match=r'--weights .* is a directory: give a \.pt file'):
        tiny_run(data, tmp_path, weights=str(tmp_path / 'w'))
    assert not (tmp_path / 'exp').exists()


def test_missing_cfg_and_nothing_to_build(data, tmp_path):
    with pytest.raises(TrainError, match='model YAML nope.yaml not found'):
        tiny_run(data, tmp_path, cfg='nope.yaml')
    with pytest.raises(TrainError, match='either --cfg or --weights must be specified'):
        tiny_run(data, tmp_path, cfg='')


def test_cli_reports_bad_dataset_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / 'train.py'), '--data', str(tmp_path / 'missing.yaml'),
                        '--cfg', 'models/yolov5n.yaml', '--device', 'cpu', '--project', str(tmp_path)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 1
    assert 'Traceback' not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith('train.py: DatasetError: dataset YAML')
    assert 'missing.yaml not found' in r.stderr


# ------------------------------------------------------------------------------------------------ run records
def test_results_csv_layout_truncate_and_tensorboard_mirror(tmp_path, monkeypatch):
    import types

    from utils.engine.runlog import RunLogger
    scalars = []

    class FakeWriter:
        def __init__(self, log_dir):
            self.log_dir = log_dir

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def close(self):
            scalars.append('closed')

    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', types.SimpleNamespace(SummaryWriter=FakeWriter))
    log = RunLogger(tmp_path)
    for epoch in range(3):
        log.log_epoch(epoch, [0.1 * (epoch + 1)] * 10 + [0.0982, 0.0002, 0.0002])
    log.close()
    lines = (tmp_path / 'results.csv').read_text().splitlines()
    assert lines[0].startswith('               epoch,      train/box_loss,')
    fields = lines[1].split(',')
    assert len(fields) == 14 and all(len(f) == 20 for f in fields)
    assert (fields[0], fields[1], fields[11], fields[13]) == (' ' * 19 + '0', ' ' * 17 + '0.1', ' ' * 14 + '0.0982',
                                                              ' ' * 14 + '0.0002')
    assert len(scalars) == 3 * 13 + 1 and scalars[0] == ('train/box_loss', 0.1, 0) and scalars[-1] == 'closed'
    assert scalars[-2] == ('x/lr2', 0.0002, 2)
    RunLogger(tmp_path, tensorboard=False).truncate(1)  # a resume from epoch 1 drops rows 1 and 2
    keys, rows = read_results_csv(tmp_path / 'results.csv')
    assert len(keys) == 14 and [r[0] for r in rows] == [0] and rows[0][1] == pytest.approx(0.1)


def test_early_stopping_counts_epochs_without_improvement():
    from utils.engine.early_stopping import EarlyStopping
    stopper = EarlyStopping(patience=2)
    assert [stopper(e, f) for e, f in enumerate([0.0, 0.3, 0.2, 0.25])] == [False, False, False, True]
    assert stopper.best_epoch == 1 and stopper.best_fitness == 0.3
    restored = EarlyStopping(patience=2)
    restored.load_state_dict(stopper.state_dict())
    assert restored(4, 0.29) is True  # resumed runs keep counting from the saved best epoch
    never = EarlyStopping(patience=0)
    assert not any(never(e, 0.0 if e else 1.0) for e in range(50))

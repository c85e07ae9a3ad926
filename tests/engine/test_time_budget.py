"""train.py --time: the epoch count a wall-clock budget allows, decided after epoch 0 and revised if the pace changes,
and a budgeted run equal to the --epochs run with that count."""
import time
from pathlib import Path

import pytest
import torch
import yaml

import train
from utils.engine import options, trainer
from utils.engine.options import TrainError
from utils.engine.runlog import progress_row, read_results_csv
from utils.engine.time_budget import BudgetDecision, BudgetRevision, decide_epochs, revise_epochs


def budget_run(data: Path, project: Path, **kw) -> Path:
    opts = dict(data=str(data), cfg='models/yolov5n.yaml', imgsz=64, batch_size=2, workers=0, project=str(project),
                name='exp', device='cpu', noplots=True, noautoanchor=True)
    return train.run(**{**opts, **kw})


def record_saved_counts(monkeypatch) -> list[tuple[int, int]]:
    """(epoch, the epoch count last.pt records) after every save of the runs that follow."""
    saved = []
    save = trainer.Trainer.save

    def recording_save(self, epoch, fi):
        save(self, epoch, fi)
        saved.append((epoch, torch.load(self.last, weights_only=True)['opt']['epochs']))

    monkeypatch.setattr(trainer.Trainer, 'save', recording_save)
    return saved


# ------------------------------------------------------------------------------------------------ the decision
def test_decide_epochs_fills_the_budget_and_reserves_the_final_validation():
    # 0.1 h = 360 s; 40 s gone; epochs of 25 s training + 5 s validation; 2 * 5 + 10 s kept for best.pt's validation
    d = decide_epochs(0.1, elapsed_s=40, train_s=25, val_s=5)
    assert (d.epochs, d.epoch_s, d.reserve_s) == (11, 30, 20)
    assert d.planned_s == pytest.approx(360)  # 40 + 10 * 30 + 20: exactly the budget
    assert decide_epochs(0.1, elapsed_s=41, train_s=25, val_s=5).epochs == 10  # one second more: one epoch less
    assert decide_epochs(0.1, elapsed_s=40, train_s=25, val_s=5, validate_every_epoch=False).epochs == 13  # 300 / 25
    assert decide_epochs(0.01, elapsed_s=40, train_s=25, val_s=5).epochs == 1  # over budget already: epoch 0 only
    line = d.describe(0.1)
    assert '--time 0.1 (6.0 min)' in line and '11 epochs in all' in line and 'the run --epochs 11 makes' in line
    with pytest.raises(ValueError, match='positive number of hours'):
        decide_epochs(0, elapsed_s=1, train_s=1, val_s=1)


def test_progress_row_shows_an_open_count_until_time_fixes_it():
    assert progress_row(0, None, 0.0, [1, 2, 3], 4, 64).split()[0] == '0/?'
    assert progress_row(0, 26, 0.0, [1, 2, 3], 4, 64).split()[0] == '0/25'


# ------------------------------------------------------------------------------------------------ the options
def test_time_flag_and_dataset_time(data, tmp_path, log_lines):
    assert train.parse_opt(args=['--time', '0.25']).time == 0.25
    d = yaml.safe_load(Path(data).read_text())
    d['train_defaults'] = {'time': 0.2, 'epochs': 7, 'imgsz': 96}
    rec = tmp_path / 'rec.yaml'
    rec.write_text(yaml.safe_dump(d))
    opt = options.apply_train_defaults(train.parse_opt(args=['--data', str(rec)]))
    assert (opt.time, opt.epochs, opt.imgsz) == (0.2, 7, 96)  # epochs: only the LR schedule's placeholder
    assert any(f'using {rec} train_defaults: time=0.2 h (epochs decided after epoch 0), imgsz=96' in x
               for x in log_lines)
    opt = options.apply_train_defaults(train.parse_opt(args=['--data', str(rec), '--epochs', '5']))
    assert (opt.time, opt.epochs) == (None, 5)  # an explicit --epochs beats a recommended time
    opt = options.apply_train_defaults(train.parse_opt(args=['--data', str(rec), '--evolve', '3']))
    assert (opt.time, opt.epochs) == (None, 7)  # generations train the same epochs
    opt = options.apply_train_defaults(train.parse_opt(args=['--data', str(data), '--time', '0.5']))
    assert (opt.time, opt.epochs) == (0.5, 100)
    with pytest.raises(TrainError, match='give --epochs or --time, not both'):
        options.apply_train_defaults(train.parse_opt(args=['--data', str(rec), '--time', '1', '--epochs', '3']))
    with pytest.raises(TrainError, match='--time cannot be used with --evolve'):
        options.apply_train_defaults(train.parse_opt(args=['--data', str(rec), '--time', '1', '--evolve', '3']))
    for bad in (0, -1, 'soon', True):
        d['train_defaults'] = {'time': bad}
        rec.write_text(yaml.safe_dump(d))
        with pytest.raises(TrainError, match='train_defaults time must be a positive number of hours'):
            options.apply_train_defaults(train.parse_opt(args=['--data', str(rec)]))
    with pytest.raises(SystemExit):
        train.parse_opt(args=['--time', '0'])


# ------------------------------------------------------------------------------------------------ the run
def test_budgeted_run_is_the_epochs_run_it_names(data, tmp_path, monkeypatch, log_lines):
    """With the decision forced to 3 epochs, the budgeted run repeats ``--epochs 3`` row for row (losses, mAPs and
    the LRs, which depend on the total through the linear schedule: the placeholder of 100 epochs would give epoch
    1 other LRs), and records the count where --resume reads it."""
    plain = budget_run(data, tmp_path, name='epochs3', epochs=3)
    real = trainer.decide_epochs

    saves = []

    def three(hours, elapsed_s, train_s, val_s, validate_every_epoch=True, save_s=0.0):
        d = real(hours, elapsed_s, train_s, val_s, validate_every_epoch, save_s)
        assert elapsed_s >= train_s + val_s > 0 and validate_every_epoch
        saves.append(save_s)
        return BudgetDecision(3, d.budget_s, d.elapsed_s, d.epoch_s, d.reserve_s, d.save_s)

    monkeypatch.setattr(trainer, 'decide_epochs', three)
    budgeted = budget_run(data, tmp_path, name='time', time=1.0)
    _, want = read_results_csv(plain / 'results.csv')
    _, got = read_results_csv(budgeted / 'results.csv')
    assert got.shape == want.shape == (3, 14) and (got == want).all()  # epoch 0 to 2: losses, metrics, LRs
    assert any('time: --time 1 (60.0 min)' in x and 'the run --epochs 3 makes' in x for x in log_lines)
    assert len(saves) == 2 and saves[0] == 0 and saves[1] > 0  # decided, saved, decided with the save's time
    assert sum('time: --time' in x for x in log_lines) == 1  # one line: the decision the run trains with
    opt = yaml.safe_load((budgeted / 'opt.yaml').read_text())
    assert (opt['epochs'], opt['time']) == (3, 1.0)
    last = torch.load(budgeted / 'weights/last.pt', weights_only=True)
    assert (last['opt']['epochs'], last['epoch']) == (3, -1)  # stripped at the end, as every finished run
    ref = torch.load(plain / 'weights/last.pt', weights_only=True)
    assert all(torch.equal(ref['model'][k], v) for k, v in last['model'].items())


def test_epoch_0_validation_is_timed_after_an_untimed_warm_up_pass(data, tmp_path, monkeypatch):
    """--time runs one forward pass over the val loader before epoch 0's timed validation (the quick start's first
    validation took 2.7 s, the ones after it ~1.6 s): the decision's val_s leaves the warm-up out, its elapsed_s
    counts it. An --epochs run has nothing to time and no warm-up."""
    events, decided = [], []
    real_warm, real_decide = trainer.warm_up, trainer.decide_epochs

    def slow_warm(model, loader, **kw):
        events.append('warm_up')
        real_warm(model, loader, **kw)
        time.sleep(0.5)

    def validate(model, loader, evaluator):
        events.append('validate')
        return real_validate(model, loader, evaluator)

    def decide(hours, elapsed_s, train_s, val_s, validate_every_epoch=True, save_s=0.0):
        decided.append((elapsed_s, val_s))
        return real_decide(hours, elapsed_s, train_s, val_s, validate_every_epoch, save_s)

    real_validate = trainer.validate
    monkeypatch.setattr(trainer, 'warm_up', slow_warm)
    monkeypatch.setattr(trainer, 'validate', validate)
    monkeypatch.setattr(trainer, 'decide_epochs', decide)
    budget_run(data, tmp_path, name='epochs2', epochs=2)
    assert events == ['validate'] * 3 and not decided  # epochs 0 and 1, best.pt: no warm-up
    events.clear()
    budget_run(data, tmp_path, name='time', time=1e-4)  # over budget after epoch 0: epoch 0 only
    assert events == ['warm_up', 'validate', 'validate']  # epoch 0 (timed), best.pt
    assert len(decided) == 2 and all(val_s < 0.5 <= elapsed_s for elapsed_s, val_s in decided)


def test_decision_counts_the_checkpoints_of_every_epoch():
    # as above, but each epoch also writes its checkpoints for 5 s: 35-s epochs, 300 / 35 = 8 more
    d = decide_epochs(0.1, elapsed_s=40, train_s=25, val_s=5, save_s=5)
    assert (d.epochs, d.epoch_s, d.save_s, d.reserve_s) == (9, 35, 5, 20)
    assert 'one epoch 35.0 s (5.0 s of it saving checkpoints)' in d.describe(0.1)
    assert 'saving' not in decide_epochs(0.1, elapsed_s=40, train_s=25, val_s=5).describe(0.1)


def test_a_slow_save_lowers_the_count_and_last_pt_records_it(data, tmp_path, monkeypatch, log_lines):
    """Decided 3 before epoch 0's save, 2 once the save is timed: the run is the --epochs 2 run, and last.pt (saved
    again after the second decision) records 2, so --resume trains to 2."""
    plain = budget_run(data, tmp_path, name='epochs2', epochs=2)
    counts = {False: 3, True: 2}
    seen = []

    def decide(hours, elapsed_s, train_s, val_s, validate_every_epoch=True, save_s=0.0):
        seen.append(save_s > 0)
        return BudgetDecision(counts[save_s > 0], hours * 3600, elapsed_s, train_s + val_s + save_s, 1.0, save_s)

    monkeypatch.setattr(trainer, 'decide_epochs', decide)
    saved = record_saved_counts(monkeypatch)
    budgeted = budget_run(data, tmp_path, name='time', time=1.0)
    assert seen == [False, True] and saved == [(0, 3), (0, 2), (1, 2)]
    _, want = read_results_csv(plain / 'results.csv')
    _, got = read_results_csv(budgeted / 'results.csv')
    assert got.shape == want.shape == (2, 14) and (got == want).all()
    assert yaml.safe_load((budgeted / 'opt.yaml').read_text())['epochs'] == 2
    assert any('2 epochs in all' in x and 's of it saving checkpoints' in x for x in log_lines)


def test_revise_epochs_keeps_the_count_near_the_budget_and_moves_it_when_the_pace_does():
    # 0.1 h = 360 s, 20 epochs, 20 s kept for the end; epoch 5 just ended; recent epochs: 10 s (median of the last 8)
    def revise(elapsed_s, epoch=5, epochs=20, durations=(30.0, 10.0, 9.0, 11.0, 10.0, 10.0, 9.0, 11.0, 10.0)):
        return revise_epochs(0.1, elapsed_s, epoch, epochs, list(durations), val_s=5)  # 2 * 5 + 10 s reserved

    assert revise(200) is None  # 200 + 14 * 10 + 20 = 360: on budget
    # 14 epochs left: the tolerance is 5 % of their 140 s (7 s) late, one epoch more (17 s) early
    assert revise(183) is None and revise(207) is None  # ends 1.7 epochs early / 0.7 epochs late: kept
    late = revise(208)  # 0.8 epochs late: the most that fit, 6 + floor(132 / 10)
    assert (late.old, late.new, late.epoch_s) == (20, 19, 10.0) and late.planned_s == pytest.approx(358)
    assert revise(182).new == 21  # 1.8 epochs early: 6 + floor(158 / 10)
    # 5 epochs left (5 % of 50 s is less than half an epoch): half an epoch late, 1.5 early, as the end nears
    assert revise(295, epoch=14) is None and revise(296, epoch=14).new == 19  # 0.6 late: 15 + floor(44 / 10)
    assert revise(276, epoch=14) is None and revise(274, epoch=14).new == 21  # 1.6 early: 15 + floor(66 / 10)
    assert revise(100).new == 30  # a host that sped up: 6 + floor(240 / 10)
    assert revise(400).new == 6  # the budget is spent: stop after this epoch
    assert revise(186, durations=(30.0,) * 6 + (10.0, 10.0)).new == 11  # the median (30 s), not the last: 6 + 154 // 30
    assert revise(400, epoch=16).new == 17 and revise(400, epoch=17) is None  # 2 epochs left: the last decay stays
    assert revise(400, epoch=3, durations=(10.0,) * 3) is None  # too early: 3 epochs are too few to judge a pace
    line = late.describe(0.1)
    assert 'after epoch 5 epochs take 10.0 s, so 19 epochs in all instead of 20' in line
    assert line.endswith('(~6.0 min); LRs from epoch 6 on follow the new count')
    assert 'revised 2 times' in BudgetRevision.summary(2, 19) and '--epochs 19 repeats' in BudgetRevision.summary(2, 19)


def test_a_revised_count_takes_effect_from_the_next_epoch(data, tmp_path, monkeypatch, log_lines):
    """Decided 8 after epoch 0, revised to 4 after epoch 2: the run trains epochs 0-3, with epochs 0-2 at the LRs of
    the --epochs 8 run and epoch 3 at those of the --epochs 4 run; last.pt and opt.yaml record 4."""
    runs = {n: read_results_csv(budget_run(data, tmp_path, name=f'epochs{n}', epochs=n) / 'results.csv')[1]
            for n in (8, 4)}
    monkeypatch.setattr(trainer, 'decide_epochs', lambda hours, elapsed_s, *a, **k: BudgetDecision(
        8, hours * 3600, elapsed_s, 1.0, 1.0))
    real, calls = trainer.revise_epochs, []

    def revise(hours, elapsed_s, epoch, epochs, durations, val_s):
        calls.append((epoch, epochs, len(durations)))
        assert all(d > 0 for d in durations) and elapsed_s > sum(durations) and val_s > 0
        if epoch == 2:
            return BudgetRevision(2, epochs, 4, 1.0, 10.0)
        return real(hours, elapsed_s, epoch, epochs, durations, val_s)

    monkeypatch.setattr(trainer, 'revise_epochs', revise)
    saved = record_saved_counts(monkeypatch)
    run = budget_run(data, tmp_path, name='time', time=1.0)
    assert calls == [(1, 8, 1), (2, 8, 2), (3, 4, 3)]  # every epoch after 0; the real one declines 1 and 3
    assert saved == [(0, 8), (1, 8), (2, 4), (3, 4)]
    _, got = read_results_csv(run / 'results.csv')
    assert got.shape == (4, 14)
    assert (got[:3, -3:] == runs[8][:3, -3:]).all() and (got[3, -3:] == runs[4][3, -3:]).all()
    assert (got[3, -3:] != runs[8][3, -3:]).all()  # epoch 3 of 8 would have had other LRs
    assert yaml.safe_load((run / 'opt.yaml').read_text())['epochs'] == 4
    assert any('after epoch 2 epochs take 1.0 s, so 4 epochs in all instead of 8' in x for x in log_lines)
    assert any('the epoch count was revised 1 time as' in x and '--epochs 4 repeats' in x for x in log_lines)


def test_a_budget_smaller_than_one_epoch_trains_epoch_0_only(data, tmp_path, log_lines):
    run = budget_run(data, tmp_path, time=1e-4, noval=True)  # 0.36 s: spent before epoch 0 ends
    _, rows = read_results_csv(run / 'results.csv')
    assert len(rows) == 1 and rows[0][5] >= 0  # epoch 0 was validated (timed for the budget) despite --noval
    assert yaml.safe_load((run / 'opt.yaml').read_text())['epochs'] == 1
    assert any('Starting training for 0.0001 hours (the epoch count is decided after epoch 0)' in x for x in log_lines)
    assert any('1 epoch in all' in x for x in log_lines)


def test_reschedule_gives_the_lrs_of_a_scheduler_built_with_the_final_count():
    """After warm-up (100 iterations at least, more than the tiny runs above have) the scheduler alone sets the LRs:
    rescheduled after epoch 0, it must hold what a scheduler built for the final count holds."""
    from utils.engine import optim

    def stepped(epochs: int):
        params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
        opt = torch.optim.SGD([{'params': [p], 'lr': lr} for p, lr in zip(params, (0.01, 0.02, 0.03))])
        sched = optim.build_scheduler(opt, optim.lr_lambda(epochs, 0.01))
        opt.step()
        sched.step()
        return opt, sched

    want_opt, want = stepped(3)
    got_opt, got = stepped(100)  # the placeholder
    assert optim.group_lrs(got_opt) != pytest.approx(optim.group_lrs(want_opt))
    optim.reschedule(got, optim.lr_lambda(3, 0.01))
    assert optim.group_lrs(got_opt) == optim.group_lrs(want_opt) == pytest.approx([0.01 * 0.67, 0.02 * 0.67,
                                                                                   0.03 * 0.67])
    assert got.get_last_lr() == want.get_last_lr()
    got.step(), want.step()
    assert optim.group_lrs(got_opt) == optim.group_lrs(want_opt)  # and it stays on the new schedule


def test_epoch_timer_leaves_out_the_first_steps(monkeypatch):
    from utils.engine import time_budget
    clock = iter([0.0, 10.0, 13.0])  # created at 0; iteration 3 starts at 10 s; the epoch ends at 13 s
    monkeypatch.setattr(time_budget.time, 'perf_counter', lambda: next(clock))
    timer = time_budget.EpochTimer(9)
    for i in range(9):
        timer.step(i)
    assert timer.steady_s() == pytest.approx(3.0 * 9 / 6)  # 6 settled steps in 3 s: 4.5 s for 9, not 13 s
    clock = iter([0.0, 2.0])
    timer = time_budget.EpochTimer(3)  # too short to settle: timed whole, from iteration 0
    for i in range(3):
        timer.step(i)
    assert timer.steady_s() == 2.0


def test_killed_budgeted_run_resumes_with_its_fixed_count(data, tmp_path, monkeypatch):
    """A budgeted run killed after epoch 1 resumes to the count fixed after epoch 0 (no new decision: resuming is
    another process on another clock) and ends where the --epochs run with that count ends."""
    plain = budget_run(data, tmp_path, name='epochs3', epochs=3)
    monkeypatch.setattr(trainer, 'decide_epochs', lambda hours, elapsed_s, *a, **k: BudgetDecision(3, hours * 3600,
                                                                                                 elapsed_s, 1.0, 1.0))
    save = trainer.Trainer.save

    def save_then_crash(self, epoch, fi):
        save(self, epoch, fi)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Trainer, 'save', save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        budget_run(data, tmp_path, name='killed', time=1.0)
    last = tmp_path / 'killed/weights/last.pt'
    assert torch.load(last, weights_only=True)['opt']['epochs'] == 3

    def no_decision(*a, **k):
        raise AssertionError('a resumed run must not decide its epoch count again')

    monkeypatch.setattr(trainer, 'decide_epochs', no_decision)
    monkeypatch.setattr(trainer.Trainer, 'save', save)
    assert train.run(resume=str(last)) == tmp_path / 'killed'
    _, want = read_results_csv(plain / 'results.csv')
    _, got = read_results_csv(tmp_path / 'killed/results.csv')
    assert got.shape == (3, 14) and (got == want).all()

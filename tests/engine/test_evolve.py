"""Hyperparameter evolution (train.py --evolve): the mutation on hand-checked draws, parent choice, the files, and two
tiny generations end to end."""
import argparse
from pathlib import Path

import numpy as np
import pytest
import yaml

import train
from tests.helpers import write_dataset
from utils.data.config import load_hyp
from utils.engine import evolve as ev
from utils.engine import options
from utils.engine.options import TrainError
from utils.engine.result_plots import plot_evolve
from utils.ops.metrics import fitness

ROOT = Path(__file__).resolve().parents[2]
HYP = ROOT / 'data/hyps/hyp.scratch-low.yaml'


class Draws:
    """A stand-in for np.random.Generator that returns scripted draws, to check the formula by hand."""

    def __init__(self, uniform_vectors, normals, uniforms):
        self.uv, self.n, self.u = list(uniform_vectors), list(normals), list(uniforms)

    def random(self, size=None):
        return np.array(self.uv.pop(0)) if size is not None else self.u.pop(0)

    def standard_normal(self, size):
        return np.array(self.n.pop(0))


def test_mutation_factor_by_hand():
    """factor = gain * [U < 0.8] * N * u * 0.2 + 1: lr0 (gain 1, U 0.5, N 1, u 0.5) -> x1.1; momentum's U 0.9 is
    above 0.8 (no change); iou_t has gain 0 (never changes)."""
    hyp = {'lr0': 0.01, 'momentum': 0.9, 'iou_t': 0.2, 'nbs': 16}
    out = ev.mutate(hyp, ['lr0', 'momentum', 'iou_t'], Draws([[0.5, 0.9, 0.1]], [[1.0, 2.0, 3.0]], [0.5]))
    assert out == {'lr0': 0.011, 'momentum': 0.9, 'iou_t': 0.2, 'nbs': 16}


def test_mutation_redraws_until_something_changes_and_clips_factor():
    """All masks off on the first draw -> drawn again; a factor below 0.3 is clipped to 0.3 (then bounds, rounding)."""
    hyp = {'lr0': 0.01, 'box': 0.05}
    draws = Draws([[0.9, 0.95], [0.1, 0.9]], [[1.0, 1.0], [-9.0, 0.0]], [0.5, 1.0])
    out = ev.mutate(hyp, ['lr0', 'box'], draws)
    assert out == {'lr0': 0.003, 'box': 0.05}  # 1 - 9 * 0.2 = -0.8 -> clipped to 0.3


def test_constrain_clips_to_bounds_and_rounds():
    out = ev.constrain({'lr0': 0.5, 'momentum': 0.1, 'scale': 0.1234567, 'nbs': 16, 'anchors': 11})
    assert out == {'lr0': 0.1, 'momentum': 0.6, 'scale': 0.12346, 'nbs': 16, 'anchors': 10.0}


def test_mutate_real_generator_is_reproducible_and_bounded():
    base = {**load_hyp(HYP), 'anchors': 3}
    keys = ev.evolvable_keys(base)
    assert 'nbs' not in keys and keys[0] == 'lr0' and keys[-1] == 'anchors'
    a = ev.mutate(base, keys, np.random.default_rng([0, 3]))
    assert a == ev.mutate(base, keys, np.random.default_rng([0, 3]))
    assert a != ev.mutate(base, keys, np.random.default_rng([0, 4]))
    assert any(a[k] != base[k] for k in keys)
    for k in keys:
        gain, lo, hi = ev.META[k]
        assert lo <= a[k] <= hi, k
        if gain == 0:
            assert a[k] == base[k], k
        elif base[k] > 0 and lo < a[k] < hi:
            assert 0.3 - 1e-4 <= a[k] / base[k] <= 3.0 + 1e-4, k


def rows_with_fitness(values: list[float], n_keys: int = 2) -> np.ndarray:
    """Rows whose fitness is exactly ``v`` (mAP@0.5 = mAP@0.5:0.95 = v -> 0.1 v + 0.9 v)."""
    rows = np.zeros((len(values), len(ev.VAL_KEYS) + n_keys))
    rows[:, 2] = rows[:, 3] = values
    rows[:, 7:] = np.arange(len(values))[:, None]  # hyp columns carry the row number
    return rows


def test_select_parent_draws_from_the_five_fittest_by_weight():
    rows = rows_with_fitness([0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4, 0.5])
    rng = np.random.default_rng(0)
    picks = [int(ev.select_parent(rows, rng)[7]) for _ in range(2000)]
    counts = {i: picks.count(i) for i in set(picks)}
    # top five are rows 1 (0.8), 3 (0.7), 5 (0.6), 7 (0.5), 6 (0.4); weights f - 0.4 -> 0.4 : 0.3 : 0.2 : 0.1 : ~0
    assert set(counts) <= {1, 3, 5, 7}
    shares = np.array([counts.get(i, 0) for i in (1, 3, 5, 7)]) / 2000
    assert np.allclose(shares, [0.4, 0.3, 0.2, 0.1], atol=0.04)


def test_select_parent_single_row():
    rows = rows_with_fitness([0.0])
    assert (ev.select_parent(rows, np.random.default_rng(0)) == rows[0]).all()


def test_evolve_csv_round_trip_padding_and_column_check(tmp_path):
    f = tmp_path / 'evolve.csv'
    keys = ['lr0', 'mosaic']
    assert ev.read_evolve_csv(f, keys).shape == (0, 9)
    ev.append_evolve_row(f, keys, (0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.02), {'lr0': 0.01, 'mosaic': 1.0, 'nbs': 16})
    ev.append_evolve_row(f, keys, (0.6, 0.5, 0.4, 0.3, 0.1, 0.05, 0.02), {'lr0': 0.0123456789, 'mosaic': 0.5})
    lines = f.read_text().splitlines()
    assert len(lines) == 3 and all(len(x) == 20 for line in lines for x in line.split(','))
    rows = ev.read_evolve_csv(f, keys)
    assert rows.shape == (2, 9)
    assert rows[1].tolist() == [0.6, 0.5, 0.4, 0.3, 0.1, 0.05, 0.02, 0.012346, 0.5]  # %20.5g
    with pytest.raises(ev.EvolveError, match=r"evolve.csv: columns do not match.*extra \['mosaic'\]"):
        ev.read_evolve_csv(f, ['lr0'])
    f.write_text(lines[0] + '\n' + 'x' * 20 + ',' * 8 + '\n')
    with pytest.raises(ev.EvolveError, match='evolve.csv: cannot read'):
        ev.read_evolve_csv(f, keys)


def test_best_hyp_file_is_a_complete_hyp(tmp_path):
    base = load_hyp(ROOT / 'data/hyps/hyp.scratch-short.yaml')  # has the optional nbs key
    keys = ev.evolvable_keys(base)
    rows = np.zeros((3, 7 + len(keys)))
    rows[:, 3] = [0.2, 0.5, 0.3]
    rows[:, 7:] = [[0.001 * (i + 1)] * len(keys) for i in range(3)]
    i, best = ev.write_best_hyp(rows, keys, base, tmp_path / 'hyp_evolve.yaml')
    assert i == 1 and best['lr0'] == 0.002 and best['nbs'] == 16
    text = (tmp_path / 'hyp_evolve.yaml').read_text()
    assert '# Best generation: 1' in text and 'last: 2' in text
    assert load_hyp(tmp_path / 'hyp_evolve.yaml') == best


def test_plot_evolve(tmp_path, log_text):
    f = tmp_path / 'evolve.csv'
    for v in (0.1, 0.3, 0.2):
        ev.append_evolve_row(f, ['lr0', 'mosaic', 'scale'], (0, 0, v, v, 0, 0, 0), {'lr0': v, 'mosaic': 1, 'scale': .5})
    assert plot_evolve(f) == tmp_path / 'evolve.png' and (tmp_path / 'evolve.png').stat().st_size > 5000
    (tmp_path / 'bad.csv').write_text('')
    assert plot_evolve(tmp_path / 'bad.csv') is None
    assert 'bad.csv: cannot plot evolution' in log_text.getvalue()


def test_evolve_options_follow_yolov5():
    opt = train.parse_opt(args=['--evolve'])
    assert opt.evolve == 300
    opt = options.evolve_options(opt)
    assert opt.project == options.EVOLVE_PROJECT and opt.exist_ok is False and opt.resume is False
    opt = options.evolve_options(train.parse_opt(args=['--evolve', '5', '--resume', '--project', 'p']))
    assert (opt.evolve, opt.project, opt.exist_ok, opt.resume) == (5, 'p', True, False)


@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp('evolve_data'), n_train=4, n_val=2, nc=2, imgsz=64)


def evolve_run(data: Path, project: Path, generations: int, **kw) -> Path:
    return train.run(data=str(data), cfg='models/yolov5n.yaml', epochs=1, imgsz=64, batch_size=2, workers=0,
                     device='cpu', project=str(project), name='exp', evolve=generations, **kw)


def test_two_generations_end_to_end_then_continue(data, tmp_path):
    save_dir = evolve_run(data, tmp_path, 2)
    assert save_dir == tmp_path / 'exp'
    for f in ('evolve.csv', 'hyp_evolve.yaml', 'evolve.png', 'weights/last.pt', 'opt.yaml'):
        assert (save_dir / f).is_file(), f
    assert not (save_dir / 'labels.jpg').exists()  # plots are off while evolving, as in YOLOv5
    base = {**load_hyp(HYP), 'anchors': 3}
    keys = ev.evolvable_keys(base)
    rows = ev.read_evolve_csv(save_dir / 'evolve.csv', keys)
    assert rows.shape == (2, 7 + len(keys))
    first = dict(zip(keys, rows[0, 7:]))
    assert first == pytest.approx({k: base[k] for k in keys})  # generation 0 trains the starting hyp
    assert rows[1, 7:].tolist() != rows[0, 7:].tolist()
    assert (rows[:, 4:7] > 0).all()  # each generation was validated (val losses)
    opt = yaml.safe_load((save_dir / 'opt.yaml').read_text())
    assert opt['noval'] is True and opt['nosave'] is True and opt['evolve'] == 2
    assert load_hyp(save_dir / 'hyp_evolve.yaml')['anchors'] == pytest.approx(rows[np.argmax(fitness(rows)), -1])

    # the same command elsewhere draws the same generations; continuing in place draws a new one
    again = ev.read_evolve_csv(evolve_run(data, tmp_path / 'again', 2) / 'evolve.csv', keys)
    assert again[:, 7:].tolist() == rows[:, 7:].tolist()
    more = ev.read_evolve_csv(evolve_run(data, tmp_path, 1, exist_ok=True) / 'evolve.csv', keys)
    assert more.shape[0] == 3 and more[:2, 7:].tolist() == rows[:, 7:].tolist()
    assert more[2, 7:].tolist() not in rows[:, 7:].tolist()



def test_ctrl_c_names_the_generations_kept(data, tmp_path, monkeypatch):
    from utils.engine.options import TrainInterrupted
    from utils.engine.trainer import Trainer

    plain, calls = Trainer.fit, []

    def fit(self):
        calls.append(1)
        if len(calls) == 2:
            raise TrainInterrupted('interrupted in epoch 0; no epoch was saved yet')
        plain(self)

    monkeypatch.setattr(Trainer, 'fit', fit)
    with pytest.raises(TrainInterrupted, match=r'^interrupted in generation 2 of 3; .*exp/evolve\.csv keeps the 1 '
                                               r'finished generation\. Continue with the same command plus --exist-ok '
                                               r'--name exp$'):
        evolve_run(data, tmp_path, 3)

def test_noautoanchor_keeps_anchors_out_and_foreign_csv_is_one_line_error(data, tmp_path):
    save_dir = evolve_run(data, tmp_path, 1, noautoanchor=True)
    header = (save_dir / 'evolve.csv').read_text().splitlines()[0]
    assert 'anchors' not in header and 'anchor_t' in header
    with pytest.raises(TrainError, match=r'evolve.csv: columns do not match this evolution'):
        evolve_run(data, tmp_path, 1, exist_ok=True)  # now anchors would be evolved too


def test_noautoanchor_evolution_starts_without_a_hyp_anchor_count(tmp_path):
    """A hyp file's ``anchors: 3`` (the quick start's) is dropped by the options under --noautoanchor, so the
    evolution neither starts from nor evolves an anchor count; without the flag both keep it."""
    from utils.engine.launch import evolution_space
    hyp = tmp_path / 'hyp.yaml'
    hyp.write_text(yaml.safe_dump({**load_hyp(HYP), 'anchors': 3}))
    for flag in (True, False):
        args = ['--evolve', '1', '--hyp', str(hyp), '--project', str(tmp_path)] + ['--noautoanchor'] * flag
        opts = options.build_options(train.parse_opt(args=args))
        base, meta = evolution_space(opts.hyp, opts.noautoanchor)
        assert ('anchors' in base, 'anchors' in meta) == (not flag, not flag)


def test_bad_generation_count_is_one_line_error(data, tmp_path):
    with pytest.raises(TrainError, match='--evolve needs a positive number of generations, got -1'):
        train.main(argparse.Namespace(**{**vars(train.parse_opt(args=[])), 'evolve': -1, 'data': str(data),
                                         'project': str(tmp_path)}))


def test_next_hyp_starts_from_base_then_mutates_a_parent():
    base = {'lr0': 0.5, 'mosaic': 1.0, 'nbs': 16}  # lr0 above its bound: generation 0 is clipped, not mutated
    keys = ['lr0', 'mosaic']
    assert ev.next_hyp(np.zeros((0, 9)), base, keys, np.random.default_rng(0)) == {'lr0': 0.1, 'mosaic': 1.0, 'nbs': 16}
    rows = rows_with_fitness([0.5])
    rows[0, 7:] = [0.02, 0.5]  # the only parent
    child = ev.next_hyp(rows, base, keys, np.random.default_rng(0))
    assert child['nbs'] == 16 and child != {'lr0': 0.02, 'mosaic': 0.5, 'nbs': 16}
    assert 0.3 * 0.02 - 1e-9 <= child['lr0'] <= 3 * 0.02 + 1e-9 and 0 <= child['mosaic'] <= 1


def test_evolution_bounds_are_valid_hyperparameters():
    """Whatever evolution draws (clipped to META) must pass load_hyp's range checks."""
    base = {**load_hyp(HYP), 'anchors': 3}
    for side in (1, 2):
        assert load_hyp({**base, **{k: v[side] for k, v in ev.META.items()}})

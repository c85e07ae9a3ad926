"""Smoke tests of benchmarks/speed.py, backbone_speed.py, learning.py and coco_scan.py on tiny configs (no timing
asserts)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from benchmarks import (
    backbone_speed,
    coco_scan,
    learning,
    ort_profile,
    speed,
    speed_report,
    timing,
    train_profile,
    train_throughput,
)

# ----------------------------------------------------------------------------------------------------------------
# speed.py
# ----------------------------------------------------------------------------------------------------------------


def test_short_error_is_one_table_safe_line():
    e = ValueError('bad | thing\nsecond line')
    assert speed.short_error(e) == 'error: ValueError: bad / thing'
    long = speed.short_error(RuntimeError('x' * 200), n=30)
    assert long.startswith('error: RuntimeError: xx') and long.endswith('...') and len(long) == len('error: ') + 30


def test_interleaved_counts_runs_and_isolates_a_failure():
    calls = []

    def ok():
        calls.append('ok')

    def bad():
        calls.append('bad')
        raise RuntimeError('boom')

    res = timing.interleaved({'a': ok, 'b': bad}, runs=3, warmup=2, pause=0, on_error=speed.short_error)
    assert len(res['a']) == 3 and all(t >= 0 for t in res['a'])  # warm-up runs are not kept
    assert res['b'] == 'error: RuntimeError: boom'
    assert calls.count('ok') == 5 and calls.count('bad') == 1  # a failed task is not retried


def test_median_and_spread():
    assert speed_report.median([3.0, 1.0, 2.0]) == 2.0
    assert speed_report.spread([1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert speed_report.median('error: x') is None and speed_report.spread(None) is None
    assert speed_report.spread([5.0]) is None


def test_model_path_and_labels(root):
    assert speed.model_path('yolov5n') == root / 'models/yolov5n.yaml'
    assert speed_report.short_label('yolov5-efficientvit') == 'EffViT-M0'
    assert speed_report.short_label('models/yolov5-efficientvit-m5.yaml') == 'EffViT-M5'
    assert speed_report.short_label('yolov5x') == 'yolov5x'
    assert speed_report.short_label('models/yolov5-timm-resnet18.yaml') == 'timm-resnet18'
    assert all(speed.model_path(m).is_file() for m in speed_report.MODELS) and len(speed_report.MODELS) == 14


def fake_report(cells: dict, info: dict, cols: list[dict], command: str = 'x') -> dict:
    inv = {'command': command, 'runs': 3, 'warmup': 1, 'train_runs': 1,
           'system': {**speed.system_info(2), 'loadavg_end': [1.0, 2.0, 3.0]}}
    return speed_report.new_report(list(info), info, cells, cols, inv, 640)


def test_format_table_ratios_errors_and_throughput(tmp_path):
    cols = speed.plan_columns([1], [1], onnx=False, train=True, train_batch=8)
    assert [c['key'] for c in cols] == ['cpu_b1', 'gpu_b1', 'train_b8']
    info = {'yolov5n': {'params': 1_872_157, 'gflops': 4.468}, 'big': {'params': 7_000_000, 'gflops': 16.49},
            'broken': {}}
    cells = {'cpu_b1': {'yolov5n': [50.0, 60.0, 40.0], 'big': [100.0], 'broken': 'error: KeyError: x'},
             'gpu_b1': dict.fromkeys(info, 'no GPU'),
             'train_b8': {'yolov5n': [800.0], 'big': [1600.0], 'broken': 'error: KeyError: x'}}
    rep = fake_report(cells, info, cols)
    lines = speed_report.format_table(rep).splitlines()
    assert lines[0] == ('| Model | Params (M) | GFLOPs@640 | CPU eager b1 ms | GPU fp16 b1 ms | '
                        'Train step b8 img/s |')
    assert lines[2] == '| yolov5n | 1.87 | 4.47 | 50.0 (1.00×) | no GPU | 10.0 (1.00×) |'
    assert lines[3] == '| big | 7.00 | 16.5 | 100.0 (2.00×) | no GPU | 5.00 (2.00×) |'
    assert lines[4] == '| broken | - | - | error: KeyError: x | no GPU | (same) |'
    assert speed_report.noise_line(rep) == 'CPU eager b1 40 %'  # (60 - 40) / 50; single runs have no spread
    speed_report.write_results(tmp_path, rep)
    assert speed_report.load_previous(tmp_path) == rep
    assert (tmp_path / 'speed.png').stat().st_size > 1000


def test_merge_keeps_same_run_ratios(tmp_path):
    c1, c8 = speed.column('cpu_b1', 'CPU eager b1 ms', 1), speed.column('cpu_b8', 'CPU eager b8 ms', 8)
    info = {'yolov5x': {'params': 8e7, 'gflops': 200.0}, 'yolov5n': {'params': 1e6, 'gflops': 1.0}}
    first = fake_report({'cpu_b1': {'yolov5n': [10.0], 'yolov5x': [100.0]}}, info, [c1], 'first')
    # second run: machine twice as loaded; b8 column only, and a new b1 number for yolov5n only
    second = fake_report({'cpu_b8': {'yolov5n': [200.0], 'yolov5x': [1000.0]}}, info, [c8], 'second')
    rep = speed_report.merge_report(first, second)
    assert [c['key'] for c in rep['columns']] == ['cpu_b1', 'cpu_b8']
    assert [i['command'] for i in rep['invocations']] == ['first', 'second']
    table = speed_report.format_table(rep).splitlines()
    assert table[2].endswith('| 10.0 (1.00×) [1] | 200.0 (1.00×) [2] |')  # rows in MODELS order: yolov5n first
    assert table[3].endswith('| 100.0 (10.00×) [1] | 1000 (5.00×) [2] |')
    third = fake_report({'cpu_b8': {'yolov5n': [100.0], 'yolov5x': [300.0]}}, info, [c8], 'third')
    merged = speed_report.format_table(speed_report.merge_report(rep, third))
    assert merged.splitlines()[3].endswith('| 300.0 (3.00×) [3] |')
    with pytest.raises(ValueError, match='measured at 640 px, this run at 64 px'):
        speed_report.merge_report(first, {**second, 'imgsz': 64})
    (tmp_path / 'speed.json').write_text('{"a": 1}')
    with pytest.raises(ValueError, match='speed.json is not a speed.json written by this script'):
        speed_report.load_previous(tmp_path)


def test_format_cell_without_baseline():
    col = speed.column('cpu_b8', 'CPU eager b8 ms', 8)
    assert speed_report.format_cell([1234.4], None, col) == '1234'
    assert speed_report.format_cell(None, None, col) == 'not run'


def test_random_targets_are_valid():
    t = speed.random_targets(3, nc=5, per_image=4)
    assert t.shape == (12, 6)
    assert t[:, 0].tolist() == [0.0] * 4 + [1.0] * 4 + [2.0] * 4
    assert ((t[:, 1] >= 0) & (t[:, 1] < 5)).all()
    x0, x1 = t[:, 2] - t[:, 4] / 2, t[:, 2] + t[:, 4] / 2
    assert (x0 >= 0).all() and (x1 <= 1 + 1e-6).all()


@pytest.mark.slow
def test_speed_run_tiny(tmp_path):
    """yolov5n at 64 px, one run of every backend, plus a missing YAML reported in its row, not raised."""
    res = speed.run(models=['yolov5n', 'models/missing.yaml'], imgsz=64, runs=1, warmup=0, batch_sizes=[1],
                    gpu_batch_sizes=[1], onnx=True, train=True, train_batch=2, train_runs=1, out=tmp_path, pause_ms=1)
    assert res['info']['yolov5n']['params'] == 1_872_157
    assert 0.01 < res['info']['yolov5n']['gflops'] < 0.1  # 4.47 GFLOPs at 640 -> /100 at 64
    for key in ('cpu_b1', 'ort_b1', 'train_b2'):
        assert len(res['cells'][key]['yolov5n']) == 1, key
        assert res['cells'][key]['models/missing.yaml'].startswith('error: FileNotFoundError'), key
    md = (tmp_path / 'speed.md').read_text()
    assert 'instruction sets: ' in md and '1 ms pause before each run, ORT spinning off' in md
    assert '| yolov5n | 1.87 |' in md and '(1.00×)' in md and '| missing | - | - | error: FileNotFoundError' in md
    assert (tmp_path / 'speed.png').stat().st_size > 1000
    assert (tmp_path / 'speed.json').is_file()


# ----------------------------------------------------------------------------------------------------------------
# ort_profile.py
# ----------------------------------------------------------------------------------------------------------------
def test_op_and_region_tables():
    att = '/model.0/export_form/stages.0/stages.0.0/stages.0.0.2/'
    nodes = {f'{att}Softmax': ('Softmax', 300.0), f'{att}MatMul': ('FusedMatMul', 200.0),
             '/model.0/export_form/stages.0/stages.0.0/stages.0.0.1/pw2/Conv': ('Conv', 400.0),
             '/model.0/export_form/patch_embed/patch_embed.1/Relu': ('Conv', 100.0),
             'ReorderOutput_token_7': ('ReorderOutput', 50.0), '/model.17/conv/Conv': ('Conv', 150.0)}
    assert ort_profile.by_op(nodes) == {'Conv': (650.0, 3), 'Softmax': (300.0, 1), 'FusedMatMul': (200.0, 1),
                                        'ReorderOutput': (50.0, 1)}
    table = ort_profile.op_table({'a': nodes, 'b': {'x': ('Conv', 100.0)}}, top=2).splitlines()
    assert table[2] == '| Conv | 0.65 (54 %, 3) | 0.10 (100 %, 1) |' and table[3] == '| Softmax | 0.30 (25 %, 1) | - |'
    assert table[-1] == '| **all** | **1.2** (6 nodes) | **0.1** (1 nodes) |'
    parts = ort_profile.region_table('m0', nodes)
    assert '| backbone: window attention | 0.50 | 42 % |' in parts and '| neck + Detect | 0.15 | 12 % |' in parts
    assert '| NCHWc layout reorders | 0.05 | 4 % |' in parts and '| backbone: patch embedding | 0.10 | 8 % |' in parts


def test_conv_shapes_and_rates(tmp_path):
    """Multiply-adds of a 1x1 conv (fused with its ReLU, named after the ReLU's output as ORT names it) and of a
    depthwise 3x3 conv on a 5x5 map, and the GFLOP/s the table derives from made-up kernel times."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1 = numpy_helper.from_array(np.zeros((8, 4, 1, 1), np.float32), 'w1')
    w2 = numpy_helper.from_array(np.zeros((8, 1, 3, 3), np.float32), 'w2')
    graph = helper.make_graph(
        [helper.make_node('Conv', ['x', 'w1'], ['c1']), helper.make_node('Relu', ['c1'], ['r1']),
         helper.make_node('Conv', ['r1', 'w2'], ['c2'], group=8, pads=[1, 1, 1, 1])],
        'g', [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 4, 5, 5])],
        [helper.make_tensor_value_info('c2', TensorProto.FLOAT, [1, 8, 5, 5])], [w1, w2])
    f = tmp_path / 'g.onnx'
    onnx.save(helper.make_model(graph), str(f))
    shapes = ort_profile.conv_shapes(f)
    assert shapes == {'c1': ('1×1', 800), 'r1': ('1×1', 800), 'c2': ('depthwise 3×3', 1800)}
    table = ort_profile.conv_table('m', {'r1_nchwc': ('Conv', 0.8), 'c2': ('Conv', 3.6), 'x': ('Relu', 9.0)},
                                   shapes).splitlines()
    assert table[2] == '| depthwise 3×3 | 1 | 0.00 | 0.000 | 1 |'  # 3600 FLOP in 3.6 µs: 1 GFLOP/s
    assert table[3] == '| 1×1 | 1 | 0.00 | 0.000 | 2 |'
    assert table[4] == '| **all** | 2 | **0.00** | 0.000 | 1 (fastest node 2) |'


def test_ort_profile_errors(capsys):
    with pytest.raises(SystemExit, match=r"no model YAML for \['nonexistent'\]"):
        ort_profile.main(['--models', 'nonexistent'])
    with pytest.raises(SystemExit, match='--runs and --nc must be >= 1'):
        ort_profile.main(['--runs', '0'])
    with pytest.raises(SystemExit, match='leave nothing to do'):
        ort_profile.main(['--no-timing', '--no-profile'])
    with pytest.raises(SystemExit, match='no such ONNX file nope.onnx'):
        ort_profile.main(['--files', 'nope.onnx'])


def test_attention_ops_graphs_agree_and_are_timed():
    """The standard-op and the MultiHeadAttention graphs compute the same attention (checked inside run(), which
    raises otherwise); both are timed."""
    pytest.importorskip('onnxruntime')
    from benchmarks import attention_ops

    ms = attention_ops.run(windows=3, tokens=4, dim=2, heads=2, runs=1, threads=1)
    assert set(ms) == {'standard ops', 'MultiHeadAttention'} and all(v > 0 for v in ms.values())


def test_attention_ops_standard_graph_is_softmax_attention():
    """The standard graph against numpy: out = v @ softmax(q^T k + bias)^T per window."""
    ort = pytest.importorskip('onnxruntime')
    import numpy as np

    from benchmarks import attention_ops

    rng = np.random.default_rng(1)
    bias = rng.standard_normal((4, 4)).astype(np.float32)
    q, k, v = (rng.standard_normal((3, 2, 4)).astype(np.float32) for _ in range(3))
    sess = ort.InferenceSession(attention_ops.standard_graph(3, 4, 2, 1, bias).SerializeToString())
    logits = q.transpose(0, 2, 1) @ k + bias
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    np.testing.assert_allclose(sess.run(None, {'q0': q, 'k0': k, 'v0': v})[0], v @ attn.transpose(0, 2, 1),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_ort_profile_of_existing_files(tmp_path):
    """--files: op-type kernel times of ONNX files given as they are (e.g. FP32 next to INT8), one column each."""
    import export
    from tests.commands.test_export import make_checkpoint, make_model

    f = export.run(weights=make_checkpoint(make_model('yolov5n.yaml'), tmp_path / 'm.pt'), imgsz=[64],
                   include=['onnx'])[0]
    g = tmp_path / 'copy.onnx'
    g.write_bytes(f.read_bytes())
    assert ort_profile.main(['--files', str(f), str(g), '--imgsz', '64', '--runs', '1', '--out', str(tmp_path)]) == 0
    md = (tmp_path / 'ort_profile_files.md').read_text()
    assert '| op type | m.onnx: ms (share, nodes) | copy.onnx: ms (share, nodes) |' in md and '| Conv |' in md


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_ort_profile_tiny(tmp_path, monkeypatch):
    """yolov5n and M0 at 64 px, one profiled run each, the graph before the export form, and the wall-clock table
    built from the timing workers' samples. The workers themselves are stubbed here (six processes that each import
    torch and ORT cost ~25 s; real workers run in test_formats_smoke and tests/commands/test_timing.py): the stub
    checks each model gets ORT with spinning off and on and its eager checkpoint, and returns fixed times, so the
    medians and ratios in the table are known."""
    seen = {}
    times = {'yolov5n|ORT': [40.0], 'yolov5n|ORT spinning': [30.0], 'yolov5n|eager': [80.0],
             'yolov5-efficientvit|ORT': [60.0, 62.0, 58.0], 'yolov5-efficientvit|ORT spinning': [45.0],
             'yolov5-efficientvit|eager': 'error: RuntimeError: worker died'}

    def fake_workers(commands, runs, warmup=1, **kw):
        seen.update(commands)
        return {k: times[k] for k in commands}

    monkeypatch.setattr(timing, 'interleaved_processes', fake_workers)
    assert ort_profile.main(['--models', 'yolov5n', 'yolov5-efficientvit', '--imgsz', '64', '--runs', '1',
                             '--before', '--out', str(tmp_path)]) == 0
    md = (tmp_path / 'ort_profile.md').read_text()
    assert '| op type | yolov5n: ms (share, nodes) | yolov5-efficientvit (before): ms' in md
    assert '| Conv |' in md and 'Load average' in md and 'instruction sets: ' in md
    assert '| backbone: window attention |' in md
    assert sorted(seen) == sorted(times)
    for name, argv in seen.items():
        model, runtime = name.split('|')
        assert argv[2] == ('pytorch' if runtime == 'eager' else 'onnx')
        assert argv[3].endswith(f'{model}.pt' if runtime == 'eager' else f'{model}.onnx'), argv
        assert (argv[-1] == 'spinning') == (runtime == 'ORT spinning')
    assert '| model | ORT ms | ORT spinning ms | eager ms |' in md
    assert '| yolov5n | 40.0 (1.00×) | 30.0 (1.00×) | 80.0 (1.00×) |' in md
    assert '| yolov5-efficientvit | 60.0 (1.50×) | 45.0 (1.50×) | error |' in md


# ----------------------------------------------------------------------------------------------------------------
# backbone_speed.py
# ----------------------------------------------------------------------------------------------------------------
def test_conv_share_counts_only_convolution_kernels():
    x = torch.randn(1, 64, 32, 32)
    assert backbone_speed.conv_share(torch.nn.Sequential(torch.nn.ReLU()), x) == 0
    assert backbone_speed.conv_share(torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1)), x) > 0.5
    mixed = backbone_speed.conv_share(torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU()), x)
    assert 0 < mixed < 1


def test_conditioning_on_chaotic_weights():
    """The chaotic weights really are the ill-conditioned regime, and in float64 the fast path is the exact path's
    function: the net amplifies even float64 rounding (1e-16 by ~1e7), so the bound is 1e-7; a wrong path is off by
    far more than that."""
    c = backbone_speed.conditioning('m0', ((224, 224),), imgsz=64)
    assert c['peak'] > 1e4
    assert c['fast_err'] < 1e-7
    assert c['ref_err'][0] < 1e-5  # P3 (stride 8) is still well behaved in float32
    assert 0 < c['conv_share'] < 1


def test_backbone_speed_main_tiny(capsys):
    assert backbone_speed.main(['--variants', 'm0', '--imgsz', '64', '--runs', '1', '--conditioning',
                                '--compare-sizes', '64x96']) == 0
    out = capsys.readouterr().out
    assert '| M0 | 1 |' in out and 'batch 2 at 64x96' in out and 'bit-exact speed-up bound' in out
    row = [line for line in out.splitlines() if line.startswith('| M0 |') and '%' in line]
    assert len(row) == 1 and row[0].rstrip().endswith('x |')


# ----------------------------------------------------------------------------------------------------------------
# learning.py
# ----------------------------------------------------------------------------------------------------------------
KEYS = ['epoch', 'train/box_loss', 'train/obj_loss', 'train/cls_loss', 'metrics/precision', 'metrics/recall',
        'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95', 'val/box_loss', 'val/obj_loss', 'val/cls_loss', 'x/lr0', 'x/lr1',
        'x/lr2']


def fake_results(file: Path, map50: list[float], mapx: list[float]) -> Path:
    """A results.csv in YOLOv5's padded layout."""
    lines = [','.join(f'{k:>20s}' for k in KEYS)]
    for e, (a, b) in enumerate(zip(map50, mapx)):
        vals = [e, 0.1, 0.05, 0.02, 0.5, 0.5, a, b, 0.1, 0.05, 0.02, 0.01, 0.01, 0.01]
        lines.append(','.join(f'{v:20.5g}' for v in vals))
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text('\n'.join(lines) + '\n')
    return file


def test_read_results_and_summary(tmp_path):
    f = fake_results(tmp_path / 'results.csv', [0.1, 0.6, 0.5], [0.05, 0.3, 0.35])
    res = learning.read_results(f)
    assert res['epoch'] == [0.0, 1.0, 2.0] and res['metrics/mAP_0.5'] == [0.1, 0.6, 0.5]
    s = learning.summary(res)
    # fitness: epoch 1 = 0.06 + 0.27 = 0.33, epoch 2 = 0.05 + 0.315 = 0.365 -> best is epoch 2
    assert s == {'epochs': 3, 'final_map50': 0.5, 'final_map': 0.35, 'best_epoch': 2, 'best_map50': 0.5,
                 'best_map': 0.35}


def test_read_results_errors(tmp_path):
    with pytest.raises(learning.ResultsError, match='nope.csv: results.csv not found'):
        learning.read_results(tmp_path / 'nope.csv')
    bad = tmp_path / 'bad.csv'
    bad.write_text('epoch,train/box_loss\n0,1\n')
    with pytest.raises(learning.ResultsError, match=r"bad.csv: results.csv lacks column\(s\) \['metrics/mAP_0.5'"):
        learning.read_results(bad)
    short = fake_results(tmp_path / 'short.csv', [0.1], [0.1])
    short.write_text(short.read_text() + '1,2\n')
    with pytest.raises(learning.ResultsError, match='short.csv: line 3 has 2 values, header has 14'):
        learning.read_results(short)


def test_learning_tables_and_plot(tmp_path):
    a = learning.read_results(fake_results(tmp_path / 'a.csv', [0.2, 0.9], [0.1, 0.7]))
    b = learning.read_results(fake_results(tmp_path / 'b.csv', [0.1, 0.5, 0.8], [0.05, 0.3, 0.6]))
    runs = {'evit': {'results': a, 'wall_s': 125.0}, 'v5n': {'results': b, 'wall_s': 59.6},
            'dead': {'error': 'error: TrainError: boom'}}
    summ = learning.format_summary(runs).splitlines()
    assert summ[2] == '| evit | 2 | 2m 05s | 0.900 | 0.700 | 1 | 0.900 | 0.700 |'
    assert summ[3] == '| v5n | 3 | 1m 00s | 0.800 | 0.600 | 2 | 0.800 | 0.600 |'
    assert summ[4].startswith('| dead | - | - | error: TrainError: boom |')
    ep = learning.format_epochs(runs).splitlines()
    assert ep[0] == '| Epoch | evit mAP50 | evit mAP50-95 | v5n mAP50 | v5n mAP50-95 |'
    assert ep[2] == '| 0 | 0.200 | 0.100 | 0.100 | 0.050 |'
    assert ep[4] == '| 2 | - | - | 0.800 | 0.600 |'
    assert learning.plot_learning(runs, tmp_path / 'l.png').stat().st_size > 1000
    assert learning.plot_learning({'dead': runs['dead']}, tmp_path / 'none.png') is None


def test_learning_run_with_stub_trainer(tmp_path, monkeypatch):
    """run() trains every model through train.run, reads its results.csv and writes the report; a failure is a row."""
    import train

    seen = []

    def fake_run(**kw):
        seen.append(kw)
        if 'yolov5n' in kw['cfg']:
            raise RuntimeError('no data')
        d = Path(kw['project']) / kw['name']
        fake_results(d / 'results.csv', [0.3] * kw['epochs'], [0.2] * kw['epochs'])
        (d / 'opt.yaml').write_text(yaml.safe_dump({**kw, 'optimizer': 'AdamW', 'hyp': {'lr0': 0.002, 'nbs': 16}}))
        return d

    monkeypatch.setattr(train, 'run', fake_run)
    runs = learning.run(epochs=2, imgsz=64, batch_size=4, project=tmp_path / 'runs', out=tmp_path / 'out')
    assert [Path(k['cfg']).name for k in seen] == ['yolov5-efficientvit.yaml', 'yolov5n.yaml']
    assert {(k['epochs'], k['imgsz'], k['batch_size']) for k in seen} == {(2, 64, 4)}
    assert not any('hyp' in k or 'optimizer' in k for k in seen)  # unset: train.py fills them as on its CLI
    assert learning.summary(runs['yolov5-efficientvit']['results'])['final_map50'] == 0.3
    assert runs['yolov5n']['error'] == 'error: RuntimeError: no data'
    md = (tmp_path / 'out/learning.md').read_text()
    assert '| yolov5n | - | - | error: RuntimeError: no data |' in md and '| 1 | 0.300 | 0.200 |' in md
    assert '2 epochs, 64 px, batch 4, optimizer AdamW' in md and 'hyp: lr0 0.002, nbs 16' in md
    assert (tmp_path / 'out/learning.png').is_file()


def test_train_throughput_kwargs_and_profile_report():
    kw = train_throughput.train_kwargs(['--weights', 'a.pt', '--img', '320', '--batch-size', '16', '--rect'], '/tmp/p')
    assert kw == {'weights': 'a.pt', 'imgsz': 320, 'batch_size': 16, 'rect': True, 'epochs': 1, 'noval': True,
                  'nosave': True, 'noplots': True, 'project': '/tmp/p', 'name': 'run', 'exist_ok': True}
    # no size given: this checkout's quick-start size and batch, pinned for both checkouts
    assert {k: v for k, v in train_throughput.train_kwargs([], '/tmp/p').items() if k in ('imgsz', 'batch_size')} \
        == {'imgsz': 224, 'batch_size': 16}
    assert train_throughput.train_kwargs([], '/tmp/p', epoch=1)['epochs'] == 2  # time epoch 1, a steady one
    times = {k: [0.010, 0.030, 0.020] for k in train_profile.PHASES}  # 20 ms median per phase, 120 ms a step
    text = train_profile.report({'times': times, 'batch': 12}, 'demo', 'python x.py')
    assert '| data | 20.0 | 17% |' in text and '| **step** | **120.0** | |' in text
    assert 'Throughput: **100.0 images/s** (batch 12, median step).' in text


def test_train_throughput_table_gives_pair_median_and_its_interval(tmp_path, monkeypatch):
    """Runs alternate this checkout / baseline; the ratio is the median of the per-pair ratios with the sign-test
    interval of that median (5 pairs: min..max, 94 %)."""
    speeds = iter([12.0, 10.0, 11.0, 10.0, 30.0, 20.0, 13.0, 10.0, 9.0, 10.0])  # pairs 1.2, 1.1, 1.5, 1.3, 0.9
    monkeypatch.setattr(train_throughput, 'one_run', lambda repo, kw: next(speeds))
    out = tmp_path / 'tt.md'
    args, extra = train_throughput.parse_opt(['--baseline', str(tmp_path), '--runs', '5', '--out', str(out)])
    text = train_throughput.main(args, extra)
    assert 'the training loop of epoch 0 per run, A B interleaved; both at 224 px, batch 16)' in text
    assert '| this checkout | 12.00 | 12.00, 11.00, 30.00, 13.00, 9.00 |' in text
    assert '| baseline | 10.00 | 10.00, 10.00, 20.00, 10.00, 10.00 |' in text
    assert ('Ratio this/baseline (median of pairs): **1.20x**, 94% interval 0.90-1.50 '
            '(pairs: 1.20, 1.10, 1.50, 1.30, 0.90)') in text
    assert out.read_text() == text + '\n'


def test_train_throughput_child_times_one_tiny_epoch(tmp_path):
    """One run as the benchmark makes it: a fresh process in a checkout (this one), its Trainer found by the
    profile's helper loaded by path, one epoch of 4 images."""
    from tests.helpers import write_dataset

    data = write_dataset(tmp_path / 'd', n_train=4, n_val=2, nc=2, imgsz=64)
    kw = train_throughput.train_kwargs(['--data', str(data), '--cfg', 'models/yolov5n.yaml', '--img', '64',
                                        '--batch-size', '2', '--workers', '0'], str(tmp_path / 'p'))
    assert train_throughput.one_run(train_throughput.ROOT, kw) > 0


def test_train_profile_times_every_phase_of_a_tiny_run(tmp_path):
    """The profile's child mode on this checkout: one tiny epoch, every phase timed, positive numbers."""
    from tests.helpers import write_dataset

    data = write_dataset(tmp_path / 'd', n_train=4, n_val=2, nc=2, imgsz=64)
    result = train_profile.profile_in_this_process(['--data', str(data), '--cfg', 'models/yolov5n.yaml', '--img',
                                                    '64', '--batch-size', '2', '--workers', '0'], steps=2, warmup=1)
    assert result['batch'] == 2 and set(result['times']) == set(train_profile.PHASES)
    assert all(len(v) == 2 and min(v) > 0 for v in result['times'].values())


# ----------------------------------------------------------------------------------------------------------------
# coco_scan.py
# ----------------------------------------------------------------------------------------------------------------
def test_coco_scan_tiny(tmp_path, capsys):
    r = coco_scan.run(annotations=300, images=20, out=tmp_path)
    assert r['images'] == 20 and 0 < r['boxes'] <= 300 and r['first_scan_s'] > 0 and r['cache_hit_s'] > 0
    assert (tmp_path / 'annotations.cache').is_file()
    assert coco_scan.main(['--annotations', '50', '--images', '5']) == 0
    assert '| 50 | 5 |' in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------------
# formats.py and int8_variants.py
# ----------------------------------------------------------------------------------------------------------------
def test_formats_table_ratios_and_absent_rows():
    from benchmarks import formats

    rows = [{'key': 'pytorch', 'label': 'PyTorch', 'size': 7.2, 'map50': 0.5, 'map': 0.3, 'ms': 40.0},
            {'key': 'onnx-int8', 'label': 'ONNX INT8', 'size': 2.1, 'map50': 0.49, 'map': 0.295, 'ms': 20.0},
            {'key': 'openvino', 'label': 'OpenVINO', 'absent': 'not installed (openvino)'},
            {'key': 'onnx', 'label': 'ONNX', 'size': 7.1, 'map50': 0.5, 'map': 0.3, 'ms': 'error: RuntimeError'}]
    lines = formats.format_table(rows).splitlines()
    assert lines[0] == '| Format | Size (MB) | mAP50 | mAP50-95 | ms/img b1 | vs PyTorch |'
    assert lines[2] == '| PyTorch | 7.2 | 0.500 | 0.300 | 40.0 | 1.00× |'
    assert lines[3] == '| ONNX INT8 | 2.1 | 0.490 | 0.295 | 20.0 | 0.50× |'
    assert lines[4] == '| OpenVINO | - | - | - | not installed (openvino) | - |'
    assert lines[5] == '| ONNX | 7.1 | 0.500 | 0.300 | error: RuntimeError | - |'


def test_formats_failed_format_is_a_row_not_the_end(tmp_path, monkeypatch):
    """An export or a validation that fails becomes that format's row (one line); the other formats still run."""
    import export
    from benchmarks import formats

    def fake_export(weights, imgsz, include, int8=False, **kw):
        if int8:
            raise RuntimeError("Check 'any_of(scale.size(), OC, 1U)' failed at dnnl_postops_composer.cpp:526\nmore")
        f = Path(weights).with_suffix({'torchscript': '.torchscript', 'onnx': '.onnx'}[include[0]])
        f.write_bytes(b'x')
        return [f]

    def fake_validate(path, *args):
        if path.suffix == '.torchscript':
            raise RuntimeError('cannot load')
        return 0.5, 0.25

    monkeypatch.setattr(export, 'run', fake_export)
    monkeypatch.setattr(formats, 'validate', fake_validate)
    pt = tmp_path / 'model.pt'
    pt.write_bytes(b'x' * 1000)
    opt = formats.parse_opt(['--weights', str(pt), '--data', 'd.yaml', '--runs', '0', '--project', str(tmp_path),
                             '--formats', 'pytorch', 'torchscript', 'onnx', 'onnx-int8'])
    rows = [r for r in (formats.run(opt) / 'formats.md').read_text().splitlines() if r.startswith('| ')][1:]
    assert rows == ['| PyTorch | 0.0 | 0.500 | 0.250 | not timed | - |',
                    '| TorchScript | - | - | - | validation failed: RuntimeError: cannot load | - |',
                    '| ONNX | 0.0 | 0.500 | 0.250 | not timed | - |',
                    "| ONNX INT8 | - | - | - | failed: RuntimeError: Check 'any_of(scale.size(), OC, 1U)' failed at "
                    'dnnl_postops_composer.cpp:526 | - |']


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore::FutureWarning')
def test_formats_smoke(tmp_path):
    """Every format at 64 px on a tiny dataset: one row each, a Markdown copy in the run directory."""
    from benchmarks import formats
    from tests.commands.test_export import make_checkpoint, make_model
    from tests.helpers import write_dataset

    pt = make_checkpoint(make_model('yolov5n.yaml'), tmp_path / 'w' / 'model.pt')
    data = write_dataset(tmp_path / 'ds', n_train=4, n_val=2, nc=2, imgsz=64)
    fmts = [f for f in formats.FORMATS if not f.startswith('openvino')]  # OpenVINO in-process: tests/test_openvino.py
    opt = formats.parse_opt(['--weights', str(pt), '--data', str(data), '--img', '64', '--runs', '2', '--warmup',
                             '1', '--project', str(tmp_path / 'runs'), '--name', 'f', '--formats', *fmts])
    save_dir = formats.run(opt)
    text = (save_dir / 'formats.md').read_text()
    rows = [line for line in text.splitlines() if line.startswith('| ') and not line.startswith('| Format')]
    assert [r.split(' | ')[0][2:] for r in rows] == [formats.LABELS[f] for f in fmts]
    assert rows[0].endswith('| 1.00× |') and 'CPU:' in text and 'Command:' in text
    for r in rows:
        cells = r.split(' | ')
        assert cells[4] != 'not timed' and not cells[4].startswith('error'), r
        if 'not installed' not in r:
            assert 0.0 <= float(cells[3]) <= 1.0 and float(cells[1]) > 0
    assert (save_dir / 'model-int8.onnx').is_file() and (save_dir / 'model.torchscript').is_file()


@pytest.mark.slow
def test_int8_variants_accuracy_only(tmp_path):
    from benchmarks import int8_variants
    from tests.commands.test_export import make_checkpoint, make_model
    from tests.helpers import write_dataset

    pt = make_checkpoint(make_model('yolov5n.yaml'), tmp_path / 'w' / 'model.pt')
    data = write_dataset(tmp_path / 'ds', n_train=4, n_val=2, nc=2, imgsz=64)
    opt = int8_variants.parse_opt(['--weights', str(pt), '--data', str(data), '--img', '64', '--runs', '0',
                                   '--formats', 'qdq', '--keep', 'none', 'softmax', '--project',
                                   str(tmp_path / 'runs'), '--name', 'v'])
    text = (int8_variants.run(opt) / 'int8_variants.md').read_text()
    names = [line.split(' | ')[0][2:] for line in text.splitlines() if line.startswith('| ') and '---' not in line]
    assert names == ['Variant', 'ONNX FP32', 'qdq-pc', 'qdq-pt', 'qdq-pc+softmax', 'qdq-pt+softmax']
    assert 'not timed' in text


def test_recall_by_size_matches_class_iou_and_confidence():
    """A hand-made image, 400x200 seen at 200 px (scale 0.5): a 40x40 box (20 px seen) found by a right-class
    prediction at conf 0.9; a 20x20 box (10 px seen) only by a wrong-class one; a 100x100 box (50 px seen) only by a
    conf-0.01 prediction."""
    import numpy as np

    from benchmarks.recall_by_size import match_image, recall_table

    w, h = 400, 200
    labels = np.array([[0, 100 / w, 100 / h, 40 / w, 40 / h],
                       [1, 300 / w, 50 / h, 20 / w, 20 / h],
                       [2, 250 / w, 140 / h, 100 / w, 100 / h]])
    preds = np.array([[0, 102 / w, 100 / h, 40 / w, 40 / h, 0.9],  # IoU 0.905 with label 0
                      [0, 300 / w, 50 / h, 20 / w, 20 / h, 0.8],  # label 1's box, the wrong class
                      [2, 250 / w, 140 / h, 100 / w, 100 / h, 0.01]])
    sizes, found = match_image(labels, preds, (h, w), 200, (0.001, 0.25))
    np.testing.assert_allclose(sizes, [20, 10, 50])
    assert found.tolist() == [[True, True], [False, False], [True, False]]
    table = recall_table(sizes, found, (0.001, 0.25)).splitlines()
    assert table[2] == '| 8-12 | 1 | 0.00 | 0.00 |' and table[3] == '| 16-24 | 1 | 1.00 | 1.00 |'
    assert table[4] == '| 48-96 | 1 | 1.00 | 0.00 |' and table[-1] == '| all | 3 | 0.67 | 0.33 |'
    _, none = match_image(labels, np.zeros((0, 6)), (h, w), 200, (0.001,))
    assert not none.any()

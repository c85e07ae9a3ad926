"""benchmarks/timing.py, the method every benchmark times with: cores, instruction sets, interleaved warm turns,
worker processes (one runtime each) and ORT session options (no timing asserts)."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import timing


def test_physical_cores_counts_smt_siblings_once(tmp_path):
    for cpu, (pkg, core) in enumerate([(0, 0), (0, 0), (0, 1), (1, 0)]):  # cpu0/cpu1: siblings of one core
        topo = tmp_path / f'cpu{cpu}' / 'topology'
        topo.mkdir(parents=True)
        (topo / 'physical_package_id').write_text(f'{pkg}\n')
        (topo / 'core_id').write_text(f'{core}\n')
    assert timing.physical_cores([0, 1, 2, 3], tmp_path) == 3
    assert timing.physical_cores([0, 1], tmp_path) == 1
    assert timing.physical_cores([0, 7], tmp_path) == 2  # no topology for cpu7: counted as its own core
    assert 1 <= timing.physical_cores() <= len(timing.usable_cpus())


def test_cpu_isa_names_the_vector_sets():
    isa = timing.cpu_isa('fpu sse2 avx2 fma avx512f avx512_vnni amx_int8 amx_tile')
    assert isa.startswith('AVX2, FMA, AVX-512, AVX-512 VNNI, AMX-INT8; torch kernels: ')
    assert timing.cpu_isa('fpu sse2').startswith('no AVX2')
    assert timing.cpu_isa('').startswith('unknown')


def test_reason_is_the_type_and_the_first_line_shortened():
    assert timing.reason(ValueError('bad\nmore')) == 'ValueError: bad'
    r = timing.reason(ValueError('y' * 300))
    assert r.startswith('ValueError: yy') and r.endswith('...') and len(r) == len('ValueError: ') + 100
    assert timing.reason(ValueError('y' * 300), None) == 'ValueError: ' + 'y' * 300
    assert timing.reason(KeyError()) == 'KeyError' and timing.shorten('abcdef', 5) == 'ab...'


def test_interleaved_pauses_before_every_run(monkeypatch):
    sleeps = []
    monkeypatch.setattr(timing.time, 'sleep', sleeps.append)
    res = timing.interleaved({'a': lambda: None, 'b': lambda: None}, runs=2, warmup=1, pause=0.05)
    assert sleeps == [0.05] * 6 and len(res['a']) == len(res['b']) == 2
    sleeps.clear()
    timing.interleaved({'a': lambda: None}, runs=2, warmup=0, pause=0)
    assert sleeps == []


def test_interleaved_keeps_the_last_run_of_each_turn(monkeypatch):
    """per_turn=2: each turn runs the task twice back to back and keeps the second time (the warm one)."""
    clock = iter(range(0, 10_000, 1))  # perf_counter ticks 1 s per call
    monkeypatch.setattr(timing.time, 'perf_counter', lambda: next(clock))
    calls = []
    res = timing.interleaved({'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')}, runs=2, warmup=1,
                             pause=0, per_turn=2)
    assert calls == ['a', 'a', 'b', 'b', 'b', 'b', 'a', 'a', 'a', 'a', 'b', 'b']  # rounds alternate direction
    assert res == {'a': [1000.0, 1000.0], 'b': [1000.0, 1000.0]}


def test_serve_protocol():
    """The worker answers 'ready', one number per 'run' (or the task's error), stops at 'quit'; a task that cannot
    be built answers its error instead of 'ready'."""
    import io

    n = iter([None, ValueError('bad frame')])

    def task():
        e = next(n)
        if e:
            raise e

    out = io.StringIO()
    timing.serve(lambda: task, inp=io.StringIO('run\nrun\nquit\nrun\n'), out=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == 'ready' and float(lines[1]) >= 0 and lines[2] == 'error: ValueError: bad frame'
    assert len(lines) == 3  # nothing after quit

    def cannot_load():
        raise FileNotFoundError('model.onnx: no such file')

    out = io.StringIO()
    timing.serve(cannot_load, inp=io.StringIO('run\n'), out=out)
    assert out.getvalue() == 'error: FileNotFoundError: model.onnx: no such file\n'


def test_interleaved_processes_times_each_task_in_its_own_process(tmp_path):
    """Two workers are timed (their own milliseconds, >= the 10 ms they sleep); a worker that cannot load or that
    dies is that task's error text, the others are still timed."""
    import sys

    worker = tmp_path / 'w.py'
    worker.write_text(
        'import sys, time\n'
        f'sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n'
        'from benchmarks import timing\n'
        'kind = sys.argv[1]\n'
        'def make():\n'
        '    if kind == "noload":\n'
        '        raise RuntimeError("cannot load")\n'
        '    if kind == "die":\n'
        '        return lambda: sys.exit("worker died here")\n'
        '    print("noise on stdout")  # must not break the protocol\n'
        '    return lambda: time.sleep(0.01)\n'
        'timing.serve(make)\n')
    cmds = {k: [sys.executable, str(worker), k] for k in ('ok', 'noload', 'die', 'ok2')}
    cmds['ok2'][-1] = 'ok'
    res = timing.interleaved_processes(cmds, runs=3, warmup=1, pause=0)
    assert len(res['ok']) == len(res['ok2']) == 3 and all(t >= 10 for t in res['ok'] + res['ok2'])
    assert res['noload'] == 'error: RuntimeError: cannot load'
    assert res['die'].startswith('error: worker exited') and 'worker died here' in res['die']


def test_worker_killed_between_runs_is_one_error(tmp_path):
    """A worker that dies between two runs (killed, out of memory) makes the next run a RuntimeError naming it, not a
    broken pipe from deep inside."""
    import sys

    worker = tmp_path / 'w.py'
    worker.write_text(f'import sys\nsys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n'
                      'from benchmarks import timing\ntiming.serve(lambda: (lambda: None))\n')
    w = timing.Worker([sys.executable, str(worker)])
    try:
        assert w.error is None and w.run() >= 0
        w.proc.kill()
        w.proc.wait()
        with pytest.raises(RuntimeError, match='worker exited'):
            w.run()
    finally:
        w.close()


def test_ort_session_options(tmp_path):
    onnx = pytest.importorskip('onnx')
    pytest.importorskip('onnxruntime')
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g',
                          [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 4])])
    f = tmp_path / 'relu.onnx'
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid('', 12)]), str(f))
    for spinning, want in ((False, '0'), (True, '1')):
        so = timing.ort_session(f, 1, spinning).get_session_options()
        assert (so.intra_op_num_threads, so.inter_op_num_threads) == (1, 1)
        assert so.get_session_config_entry('session.intra_op.allow_spinning') == want
        assert so.get_session_config_entry('session.inter_op.allow_spinning') == want


def test_median_interval_is_the_sign_test_interval():
    # 17 values: P(Binomial(17, 1/2) <= 4) = 3214 / 2**17, so the 5th smallest and 5th largest cover 95.1 %
    lo, hi, cover = timing.median_interval([float(v) for v in range(17, 0, -1)])  # order does not matter
    assert (lo, hi) == (5.0, 13.0) and cover == pytest.approx(1 - 2 * 3214 / 2 ** 17)
    # asking less narrows it: 6th..12th cover 1 - 2 * 9402 / 2**17 = 85.7 %
    lo, hi, cover = timing.median_interval(list(range(1, 18)), confidence=0.8)
    assert (lo, hi) == (6, 12) and cover == pytest.approx(1 - 2 * 9402 / 2 ** 17)
    # too few values for 90 %: (min, max) with the coverage it has
    seven = [1.35, 1.17, 1.48, 1.20, 1.17, 1.44, 1.22]
    assert timing.median_interval(seven) == (1.17, 1.48, pytest.approx(1 - 2 / 128))
    assert timing.median_interval([1.0, 3.0, 2.0]) == (1.0, 3.0, pytest.approx(0.75))
    assert timing.median_interval([2.0]) == (2.0, 2.0, 0.0)
    with pytest.raises(ValueError, match='at least one'):
        timing.median_interval([])

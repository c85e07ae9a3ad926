"""How the benchmarks time things: the machine they ran on and ONNX Runtime sessions that do not fight PyTorch.

Method (benchmarks/README.md): the tasks interleaved run by run (a change of load hits them all alike), ``PAUSE_S``
of sleep before every run, every runtime on the same number of threads (the physical cores this process may use).
Tasks of one runtime share a process (``interleaved``); tasks of different runtimes each get a worker process
(``interleaved_processes``), because torch's and ORT's thread pools slow each other down in one process. ONNX
Runtime gets one intra-op pool of that size, one inter-op thread and, by default, no spinning: an idle ORT pool
otherwise busy-waits for the next parallel op and steals the cores of the next task. The pause lets torch's OpenMP
workers and any spinning ORT workers go to sleep before the next task starts.
"""
from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

PAUSE_S = 0.05  # sleep before every run (warm-up and timed)
# Runs per turn when timing inference: the first re-warms the caches the previous task evicted and is not kept (one run
# per turn timed yolov5n in ORT at 23.0 ms next to M0, 18.9 ms warm; back to back, as a video stream runs, is warm).
INFERENCE_PER_TURN = 2

# /proc/cpuinfo flags worth naming in a report, in this order: (label, any of these flags)
ISA_FLAGS = (('AVX2', ('avx2',)), ('FMA', ('fma',)), ('AVX-512', ('avx512f',)),
             ('AVX-512 VNNI', ('avx512_vnni',)), ('AVX-VNNI', ('avx_vnni',)), ('AVX-512 BF16', ('avx512_bf16',)),
             ('AVX-512 FP16', ('avx512_fp16',)), ('AMX-INT8', ('amx_int8',)), ('AMX-BF16', ('amx_bf16',)))


def _cpuinfo_value(key: str) -> str:
    """The first ``key : value`` of /proc/cpuinfo ('' when unreadable, e.g. not Linux)."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.lower().startswith(key):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return ''


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else platform.processor()."""
    return _cpuinfo_value('model name') or platform.processor() or platform.machine()


def cpu_isa(flags: str | None = None) -> str:
    """The vector instruction sets the CPU reports ('AVX2, FMA, AVX-512, AVX-512 VNNI, ...'), plus the kernel level
    torch dispatches to (``torch.backends.cpu.get_cpu_capability()``); 'unknown' off Linux."""
    have = set((_cpuinfo_value('flags') if flags is None else flags).split())
    found = [label for label, names in ISA_FLAGS if have & set(names)]
    try:
        import torch
        cap = f'; torch kernels: {torch.backends.cpu.get_cpu_capability()}'
    except (ImportError, AttributeError):
        cap = ''
    return (', '.join(found) if found else 'no AVX2' if have else 'unknown') + cap


def usable_cpus() -> list[int]:
    """The logical CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, 'sched_getaffinity'):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def physical_cores(cpus: list[int] | None = None, sysfs: Path = Path('/sys/devices/system/cpu')) -> int:
    """Distinct physical cores among ``cpus`` (default: the usable ones): SMT siblings count once. Without sysfs
    topology every logical CPU counts as a core."""
    cores = set()
    for c in usable_cpus() if cpus is None else cpus:
        topo = sysfs / f'cpu{c}' / 'topology'
        try:
            cores.add((topo / 'physical_package_id').read_text().strip() + ':' + (topo / 'core_id').read_text().strip())
        except OSError:
            cores.add(f'cpu{c}')
    return max(1, len(cores))


def median_interval(values: list[float], confidence: float = 0.9) -> tuple[float, float, float]:
    """A distribution-free confidence interval for the median of ``values``: ``(lo, hi, coverage)``.

    On this kind of host single runs swing by 1.3x, so a median of a few pairs needs its uncertainty next to it. The
    interval is the k-th smallest and k-th largest value, with the largest k whose coverage
    ``1 - 2 P(Binomial(n, 1/2) <= k - 1)`` is at least ``confidence`` (the sign-test interval; it assumes only
    independent runs). With too few values for that, it is (min, max) with the smaller coverage it has (7 values:
    98 %; 5: 94 %; 3: 75 %; 1: 0 %)."""
    if not values:
        raise ValueError('median_interval needs at least one value')
    x, n = sorted(values), len(values)

    def coverage(k: int) -> float:
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n

    k = 1
    while k < (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return x[k - 1], x[n - k], coverage(k)


def loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages (None where the OS has none)."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, 'getloadavg') else None


def ort_session(path: str | Path, threads: int, spinning: bool = False, profile: str | Path | None = None):
    """A CPU ONNX Runtime session for timing: ``threads`` intra-op threads, one inter-op thread, every graph
    optimisation (level ALL: constant folding, Conv+activation/Add fusion, the NCHWc blocked layout), and spinning
    only when asked (ORT's own default is on: the fastest for one runtime alone, contention for several).
    ``profile``: a file prefix; ORT then records every node's kernel time (``session.end_profiling()``)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if profile is not None:
        so.enable_profiling, so.profile_file_prefix = True, str(profile)
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    spin = '1' if spinning else '0'
    so.add_session_config_entry('session.intra_op.allow_spinning', spin)
    so.add_session_config_entry('session.inter_op.allow_spinning', spin)
    return ort.InferenceSession(str(path), so, providers=['CPUExecutionProvider'])


def interleaved(tasks: dict[str, Callable[[], object]], runs: int, warmup: int = 1,
                sync: Callable[[], None] | None = None, pause: float = PAUSE_S,
                on_error: Callable[[BaseException], str] = lambda e: f'error: {type(e).__name__}: {e}',
                self_timed: bool = False, per_turn: int = 1) -> dict[str, list[float] | str]:
    """Give every task one turn per round, rounds alternating direction, ``pause`` seconds of sleep before each turn;
    return ms samples per task (warm-up rounds dropped) or, for a task that raised, ``on_error(exception)``.
    A turn runs the task ``per_turn`` times back to back and keeps the last time: with 2, every timed run finds
    its weights in the caches, as a deployed model running frame after frame does, instead of the previous task's.
    ``self_timed``: each task returns its own milliseconds (a worker process's, without the pipe round trip)."""
    out: dict[str, list[float] | str] = {k: [] for k in tasks}
    live = list(tasks)
    for r in range(warmup + runs):
        for name in (live if r % 2 == 0 else live[::-1]):
            if pause:
                time.sleep(pause)
            try:
                for _ in range(per_turn):
                    t0 = time.perf_counter()
                    ms = tasks[name]()
                    if sync is not None:
                        sync()
                    dt = ms if self_timed else (time.perf_counter() - t0) * 1000
            except Exception as e:  # one failing task must not stop the others
                out[name] = on_error(e)
                continue
            if r >= warmup:
                out[name].append(dt)
        live = [k for k in live if isinstance(out[k], list)]
    return out


# One process per runtime. In one process, torch and ORT (or OpenVINO) slowed each other even with spinning off and
# the pause (2-core Xeon, yolov5n at 640: PyTorch 35.6 ms in a six-format table, 50.3 ms interleaved with ORT alone;
# with OMP_WAIT_POLICY=PASSIVE 68.0 ms); which shared resource (thread pools, allocator) was not isolated. A worker
# process owns one runtime; the parent tells it when to run, so the runs are still interleaved across workers but no
# two runtimes share a process. What remains between processes, the caches, is what INFERENCE_PER_TURN handles.


def shorten(text: str, n: int) -> str:
    """``text`` cut to ``n`` characters, the cut marked with '...'."""
    return text if len(text) <= n else text[:n - 3] + '...'


def reason(e: BaseException, n: int | None = 100) -> str:
    """'Type: first line of the message' (the message shortened to ``n`` characters; None: whole): one table cell
    or protocol line."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ''
    msg = msg if n is None else shorten(msg, n)
    return type(e).__name__ + (f': {msg}' if msg else '')


def serve(make_task: Callable[[], Callable[[], object]], inp=None, out=None) -> None:
    """The worker side of ``interleaved_processes``: build the task (``make_task()``: load the model), answer 'ready'
    (or 'error: ...' when it cannot load), then read 'run' lines, run the task once per line and answer with its
    milliseconds (or 'error: ...'); stop at 'quit' or end of input. The worker's stdout carries only the protocol:
    anything else printed goes to stderr."""
    if out is None:
        out = os.fdopen(os.dup(1), 'w')
        os.dup2(2, 1)  # prints of the model loader or the runtime (even from C++) go to stderr from here on
        sys.stdout = sys.stderr
    inp = sys.stdin if inp is None else inp

    try:
        task = make_task()
    except Exception as e:  # the parent shows this line as the task's cell
        print(f'error: {reason(e)}', file=out, flush=True)
        return
    print('ready', file=out, flush=True)
    for line in inp:
        if line.strip() != 'run':
            break
        try:
            t0 = time.perf_counter()
            task()
            print(f'{(time.perf_counter() - t0) * 1000:.6f}', file=out, flush=True)
        except Exception as e:
            print(f'error: {reason(e)}', file=out, flush=True)


class Worker:
    """A worker process started by ``argv`` (it calls ``serve``); its stderr goes to a temporary file, whose last
    line names the reason when the worker dies."""

    def __init__(self, argv: list[str]):
        self.log = tempfile.TemporaryFile(mode='w+')
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.error = self._answer('ready')

    def _answer(self, expect: str) -> str | None:
        """None when the worker answered ``expect``; else an error text."""
        line = self.proc.stdout.readline().strip()
        if not line:
            return f'error: {self._exit_reason()}'
        if line.startswith('error'):
            return line
        return None if line == expect else f'error: unexpected worker answer {line!r}'

    def _exit_reason(self) -> str:
        """'worker exited (last line of its stderr)', once the worker has ended."""
        self.proc.wait()
        self.log.seek(0)
        tail = [x for x in self.log.read().splitlines() if x.strip()]
        return f'worker exited ({tail[-1].strip() if tail else f"code {self.proc.returncode}"})'

    def run(self) -> float:
        """One timed run in the worker; its milliseconds. RuntimeError (the reason) when the run failed."""
        try:
            self.proc.stdin.write('run\n')
            self.proc.stdin.flush()
        except OSError:  # the worker has died since its last answer
            raise RuntimeError(self._exit_reason()) from None
        line = self.proc.stdout.readline().strip()
        try:
            return float(line)
        except ValueError:
            raise RuntimeError(line.removeprefix('error: ') if line else self._exit_reason()) from None

    def close(self) -> None:
        """Ask the worker to quit (killed after 30 s) and drop its log."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('quit\n')
                self.proc.stdin.flush()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def interleaved_processes(commands: dict[str, list[str]], runs: int, warmup: int = 1, pause: float = PAUSE_S,
                          per_turn: int = INFERENCE_PER_TURN) -> dict[str, list[float] | str]:
    """``interleaved`` with every task in its own worker process (``commands[name]``: the argv of a program that
    calls ``serve``). The workers start one after another (each loads its model alone), then take turns (``per_turn``
    runs, the last kept) with ``pause`` before each, rounds alternating direction; a worker that fails to start or
    run gives its error text instead of samples."""
    workers, errors = {}, {}
    try:
        for name, argv in commands.items():
            w = Worker(argv)
            workers[name] = w
            if w.error:
                errors[name] = w.error
        tasks = {k: w.run for k, w in workers.items() if k not in errors}
        res = interleaved(tasks, runs=runs, warmup=warmup, pause=pause, on_error=lambda e: f'error: {e}',
                          self_timed=True, per_turn=per_turn)
    finally:
        for w in workers.values():
            w.close()
    return {k: errors.get(k, res.get(k)) for k in commands}

"""How the benchmarks time things: the machine they ran on and ONNX Runtime sessions that do not fight PyTorch.

Method (benchmarks/README.md): every runtime in one process, the tasks interleaved run by run (a change of load hits
them all alike), ``PAUSE_S`` of sleep before every run, and both runtimes on the same number of threads, the
physical cores this process may use. ONNX Runtime gets one intra-op pool of that size, one inter-op thread and, by
default, no spinning: an idle ORT pool otherwise busy-waits for the next parallel op and steals the cores of the
next task (PyTorch, or another ORT session: every session owns its pool). The pause lets torch's OpenMP workers and
any spinning ORT workers go to sleep before the next task starts.
"""
from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

PAUSE_S = 0.05  # sleep before every run (warm-up and timed)

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


def interleaved(tasks: dict[str, Callable[[], None]], runs: int, warmup: int = 1,
                sync: Callable[[], None] | None = None, pause: float = PAUSE_S,
                on_error: Callable[[BaseException], str] = lambda e: f'error: {type(e).__name__}: {e}'
                ) -> dict[str, list[float] | str]:
    """Time every task once per round, rounds alternating direction, ``pause`` seconds of sleep before each run;
    return ms samples per task (warm-up rounds dropped) or, for a task that raised, ``on_error(exception)``."""
    out: dict[str, list[float] | str] = {k: [] for k in tasks}
    live = list(tasks)
    for r in range(warmup + runs):
        for name in (live if r % 2 == 0 else live[::-1]):
            if pause:
                time.sleep(pause)
            try:
                t0 = time.perf_counter()
                tasks[name]()
                if sync is not None:
                    sync()
                dt = (time.perf_counter() - t0) * 1000
            except Exception as e:  # one failing task must not stop the others
                out[name] = on_error(e)
                continue
            if r >= warmup:
                out[name].append(dt)
        live = [k for k in live if isinstance(out[k], list)]
    return out

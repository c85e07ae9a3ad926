"""A timing worker for benchmarks/formats.py: loads one exported file in its runtime and runs it on one image each
time the parent says so (benchmarks/timing.py's ``serve`` protocol), so that no two runtimes share a process.

Usage (started by formats.py, int8_variants.py and ort_profile.py, not by hand):
    python benchmarks/format_worker.py FORMAT FILE THREADS IMAGE.npy [spinning]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # entry point: make the repository importable when run as a script

from benchmarks import timing  # noqa: E402
from benchmarks.formats import FORMATS, runner  # noqa: E402


def main(argv: list[str]) -> None:
    if len(argv) not in (4, 5) or argv[0] not in FORMATS or argv[4:] not in ([], ['spinning']):
        sys.exit('format_worker.py: usage: FORMAT FILE THREADS IMAGE.npy [spinning], FORMAT one of '
                 + ', '.join(FORMATS))
    fmt, file, threads, image = argv[0], Path(argv[1]), int(argv[2]), np.load(argv[3])
    spinning = argv[4:] == ['spinning']  # ORT's default: idle threads busy-wait
    import torch

    torch.set_num_threads(threads)

    def make_task():
        f = runner(fmt, file, threads, spinning)
        return lambda: f(image)

    timing.serve(make_task)


if __name__ == '__main__':
    main(sys.argv[1:])

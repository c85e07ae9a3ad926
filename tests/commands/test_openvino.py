"""OpenVINO tests, run in a child process: once OpenVINO has compiled a model in a process, DataLoader workers that
process forks later segfault (seen with openvino 2026.4 and torch 2.14), which would kill the rest of the suite.
The cases live in tests/commands/openvino_cases.py (not collected directly); they skip, with the reason, without
openvino/nncf.
The missing-package line needs no OpenVINO runtime and is tested in this process."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.commands.openvino_cases import HAVE_OV, test_missing_openvino_is_one_line  # noqa: F401  (collected here)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_OV, reason='openvino not installed (pip install -r requirements-openvino.txt)')
def test_openvino_cases_in_child_process():
    r = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                        'tests/commands/openvino_cases.py', '-k', 'not missing_openvino'], cwd=ROOT,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]

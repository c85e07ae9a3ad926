"""Running an OpenVINO IR model (``<name>_openvino_model/`` from ``export.py --include openvino``) on the CPU.

The reading side of the format (DetectBackend's); the writing side is utils/export/openvino.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from utils.core.optional import require

MAX_METADATA_BYTES = 1 << 20  # the metadata YAML is a few hundred bytes; refuse to parse anything huge


def find_xml(path: str | Path) -> Path:
    """The IR file of an OpenVINO model given as its directory (exactly one .xml inside) or as the .xml itself."""
    path = Path(path)
    if path.is_dir():
        xmls = sorted(path.glob('*.xml'))
        if len(xmls) != 1:
            raise FileNotFoundError(f'{path}: expected one OpenVINO .xml file inside, found {len(xmls)}')
        return xmls[0]
    return path


class OpenVINORunner:
    """A compiled OpenVINO model on the CPU: ``runner(x) -> first output``, ``input_shape`` (None for dynamic dims)
    and ``metadata`` (the YAML written at export; {} when absent). FP32 layers run in FP32
    (``INFERENCE_PRECISION_HINT f32``: CPUs with AMX/AVX-512 BF16 would otherwise run them in bfloat16)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        require('an OpenVINO model', 'openvino')
        import openvino as ov

        self.xml = find_xml(path)
        meta = self.xml.with_suffix('.yaml')
        if meta.is_file() and meta.stat().st_size > MAX_METADATA_BYTES:
            raise ValueError(f'{meta}: metadata file of {meta.stat().st_size} bytes refused (over 1 MiB)')
        self.metadata = (yaml.safe_load(meta.read_text()) or {}) if meta.is_file() else {}
        if not isinstance(self.metadata, dict):
            raise ValueError(f'{meta}: metadata must be a mapping')
        core = ov.Core()
        config = {'INFERENCE_PRECISION_HINT': 'f32', 'PERFORMANCE_HINT': 'LATENCY'}
        if threads:
            config['INFERENCE_NUM_THREADS'] = int(threads)
        self.compiled = core.compile_model(core.read_model(str(self.xml)), 'CPU', config)
        self.request = self.compiled.create_infer_request()
        pshape = self.compiled.input(0).get_partial_shape()
        self.input_shape = [d.get_length() if d.is_static else None for d in pshape]
        oshape = self.compiled.output(0).get_partial_shape()
        self.output_shape = [d.get_length() if d.is_static else None for d in oshape]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.request.infer({0: x})[self.compiled.output(0)]

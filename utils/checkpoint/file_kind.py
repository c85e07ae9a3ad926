"""What kind of weights file a path names, from its name alone: below both train.py's checks and the inference
front, so that each can say "this is an ONNX export" instead of failing to read it as something else."""
from __future__ import annotations

from pathlib import Path

FORMATS = {'.pt': 'pt', '.torchscript': 'jit', '.onnx': 'onnx', '.xml': 'openvino', '_openvino_model': 'openvino'}
EXPORT_NAMES = {'jit': 'a TorchScript export', 'onnx': 'an ONNX export', 'openvino': 'an OpenVINO export'}


def weights_format(w: Path) -> str | None:
    """'pt', 'jit', 'onnx' or 'openvino' (a ``*_openvino_model`` directory or an ``.xml`` IR), from the name."""
    return FORMATS.get('_openvino_model' if w.name.endswith('_openvino_model') else w.suffix.lower())


def export_name(w: Path) -> str | None:
    """'an ONNX export' etc. for an existing exported file or folder (None for a .pt or anything else)."""
    return EXPORT_NAMES.get(weights_format(w)) if w.exists() else None

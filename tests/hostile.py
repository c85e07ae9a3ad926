"""Builders of hostile files for the safety tests: hand-assembled pickles in torch's zip layout, official-format
pickles with stand-in classes, TorchScript that writes a file while loading, images whose headers lie, YAML alias
bombs and tiny ONNX graphs. Every file is made here, in the test's temporary directory; nothing is downloaded."""
from __future__ import annotations

import struct
import sys
import types
import zipfile
import zlib
from pathlib import Path
from typing import List  # noqa: UP035  (TorchScript needs typing.List)

import cv2
import numpy as np
import torch
import torch.nn as nn

from models.yolo import DetectionModel
from utils.checkpoint.format import FORMAT, FORMAT_VERSION


# ------------------------------------------------------------------------------------------------ pickle opcodes
def s(text: str) -> bytes:
    """BINUNICODE."""
    b = text.encode()
    return b'X' + struct.pack('<I', len(b)) + b


def i(n: int) -> bytes:
    """BININT (signed 32-bit)."""
    return b'J' + struct.pack('<i', n)


def glob(module: str, name: str) -> bytes:
    """GLOBAL."""
    return b'c' + f'{module}\n{name}\n'.encode()


MARK, TUPLE, TUPLE1, TUPLE3, REDUCE, EMPTY_DICT, SETITEM, STOP = b'(', b't', b'\x85', b'\x87', b'R', b'}', b's', b'.'
PROTO2 = b'\x80\x02'


def ckpt_dict(value: bytes, key: str = 'model') -> bytes:
    """A pickle of {'format': ours, 'format_version': 1, key: <value>}."""
    return (PROTO2 + EMPTY_DICT + s('format') + s(FORMAT) + SETITEM + s('format_version') + i(FORMAT_VERSION)
            + SETITEM + s(key) + value + SETITEM + STOP)


def torch_archive(path: Path, pkl: bytes, storages: dict[str, bytes] | None = None) -> Path:
    """Write ``pkl`` (and storage records) in torch.save's zip layout: stored members under ``archive/``."""
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as z:
        z.writestr('archive/data.pkl', pkl)
        z.writestr('archive/byteorder', 'little')
        for key, data in (storages or {}).items():
            z.writestr(f'archive/data/{key}', data)
        z.writestr('archive/version', '3\n')
    return path


def bytearray_bomb(path: Path, n: int = 2**31 - 1) -> Path:
    """REDUCE of builtins.bytearray(n): torch's weights-only defaults allow it; n bytes are allocated at load."""
    return torch_archive(path, ckpt_dict(glob('__builtin__', 'bytearray') + i(n) + TUPLE1 + REDUCE))


def conv_bomb(path: Path) -> Path:
    """REDUCE of nn.Conv2d(4096, 4096, 5): a class on the official-YOLOv5 allow-list, called with huge sizes."""
    return torch_archive(path, ckpt_dict(glob('torch.nn.modules.conv', 'Conv2d') + i(4096) + i(4096) + i(5)
                                         + TUPLE3 + REDUCE))


def stand_in_official(path: Path, module: nn.Module, monkeypatch) -> Path:
    """torch.save({'model': module}) with module's class pickled as models.yolo.DetectionModel (official layout)."""
    fake = types.ModuleType('models.yolo')
    cls = type('DetectionModel', (nn.Module,), {'__module__': 'models.yolo', '__qualname__': 'DetectionModel'})
    fake.DetectionModel = cls
    module.__class__ = cls
    with monkeypatch.context() as m:
        m.setitem(sys.modules, 'models.yolo', fake)
        torch.save({'epoch': -1, 'model': module, 'ema': None, 'optimizer': None}, path)
    return path


def zero_stride_view(path: Path, monkeypatch, side: int = 40000) -> Path:
    """An official-format file whose one buffer is a (side, side) fp16 view of ONE stored value (stride 0): a few
    hundred bytes that become side*side*4 bytes when the state dict is converted to float."""
    m = nn.Module()
    m.yaml = {'nc': 1}
    m.register_buffer('grid', torch.zeros(1, dtype=torch.half).expand(side, side))
    return stand_in_official(path, m, monkeypatch)


def shared_names(depth: int = 40) -> list:
    """A list whose expansion has 2**depth leaves, pickled in a few hundred bytes through the memo."""
    x: list = ['x']
    for _ in range(depth):
        x = [x, x]
    return x


def shared_names_checkpoint(path: Path) -> Path:
    """Our format with names = shared_names() (torch.save directly: save_checkpoint would expand the sharing)."""
    torch.save({'format': FORMAT, 'format_version': FORMAT_VERSION, 'model': {}, 'model_yaml': {'nc': 1},
                'names': shared_names()}, path)
    return path


def our_checkpoint(net: DetectionModel, **fields) -> dict:
    """A valid checkpoint dict of ``net`` in our format, with ``fields`` replaced."""
    ckpt = {'format': FORMAT, 'format_version': FORMAT_VERSION, 'model': net.state_dict(), 'ema': None,
            'updates': 0, 'optimizer': None, 'model_yaml': dict(net.yaml), 'names': dict(net.names),
            'nc': net.nc, 'epoch': -1, 'best_fitness': 0.0, 'opt': {}, 'hyp': {}, 'date': '', 'train_state': None}
    ckpt.update(fields)
    return ckpt


# ------------------------------------------------------------------------------------------------ TorchScript
class _WritesOnLoad(nn.Module):
    """Identity detector whose scripted __setstate__ creates the file at ``path`` (via torch.from_file) when the
    archive is loaded: what any .torchscript can do to any writable file."""

    def __init__(self, path: str):
        super().__init__()
        self.path, self.n = path, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> List[str]:  # noqa: UP006
        return [self.path]

    @torch.jit.export
    def __setstate__(self, state: List[str]) -> None:  # noqa: UP006
        self.path = state[0]
        self.training = False
        self.n = torch.from_file(state[0], True, 1).numel()


def evil_torchscript(path: Path, marker: Path) -> Path:
    """A .torchscript whose loading creates ``marker``."""
    torch.jit.script(_WritesOnLoad(str(marker))).save(str(path))
    return path


# ------------------------------------------------------------------------------------------------ images
def lying_jpeg(path: Path, w: int = 25000, h: int = 25000) -> Path:
    """A ~600-byte JPEG whose SOF0 header claims w x h pixels (OpenCV would allocate w*h*3 bytes to decode it)."""
    ok, buf = cv2.imencode('.jpg', np.full((16, 16, 3), 128, np.uint8))
    data = bytearray(buf.tobytes())
    k = data.index(b'\xff\xc0')  # SOF0: marker, length(2), precision(1), height(2), width(2)
    data[k + 5:k + 9] = struct.pack('>HH', h, w)
    path.write_bytes(bytes(data))
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))


def lying_png(path: Path, w: int = 65535, h: int = 65535) -> Path:
    """A PNG whose IHDR claims w x h (4.3 billion pixels: beyond OpenCV's own limit) with a valid CRC."""
    ihdr = struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b'\x00' * 64)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + _png_chunk(b'IHDR', ihdr) + _png_chunk(b'IDAT', idat)
                     + _png_chunk(b'IEND', b''))
    return path


def npy_header_only(shape: tuple = (10**10,)) -> bytes:
    """An .npy member holding only a header that claims ``shape`` float64 values (80 GB by default)."""
    import io
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {'descr': '<f8', 'fortran_order': False, 'shape': shape})
    return f.getvalue()


# ------------------------------------------------------------------------------------------------ YAML
def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """Billion-laughs YAML (under 1 kB): each level lists the previous one ``width`` times by alias."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for k in range(1, levels):
        lines.append(f'l{k}: &l{k} [' + ', '.join([f'*l{k - 1}'] * width) + ']')
    return '\n'.join(lines) + '\n'


# ------------------------------------------------------------------------------------------------ ONNX
def tiny_onnx(path: Path, metadata: dict[str, str], nc: int = 2, external: str = '', sparse: bool = False) -> Path:
    """A valid ONNX detector stand-in: input images (1, 3, 32, 32) -> a constant (1, 1, 5 + nc) output, with the
    given metadata; ``external`` adds an initializer stored in that (outside) file, ``sparse`` a sparse one."""
    import onnx
    from onnx import TensorProto, helper

    out = helper.make_tensor('value', TensorProto.FLOAT, [1, 1, 5 + nc], [0.0] * (5 + nc))
    nodes = [helper.make_node('Constant', [], ['output0'], value=out)]
    inits, sparse_inits = [], []
    if external:
        t = helper.make_tensor('w', TensorProto.FLOAT, [4], [0.0] * 4)
        t.ClearField('float_data')
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key='location', value=external)
        inits.append(t)
    if sparse:
        values = helper.make_tensor('sv', TensorProto.FLOAT, [1], [1.0])
        idx = helper.make_tensor('si', TensorProto.INT64, [1], [0])
        sparse_inits.append(helper.make_sparse_tensor(values, idx, [1 << 20]))
    graph = helper.make_graph(nodes, 'g', [helper.make_tensor_value_info('images', TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info('output0', TensorProto.FLOAT, [1, 1, 5 + nc])],
                              initializer=inits, sparse_initializer=sparse_inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 12)])
    model.ir_version = 8
    for k, v in metadata.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path

"""One inference interface over every weight format detect.py and val.py accept.

``.pt`` (this project's checkpoints and official YOLOv5 v6.x/v7.0 files, through
utils.checkpoint.model.load_model, fused),
``.torchscript``, ``.onnx`` (onnxruntime; FP32 or INT8) and ``<name>_openvino_model/`` (or its ``.xml``; OpenVINO
FP32 or INT8, optional package) all give ``forward(im) -> pred (B, N, 5+nc)`` plus ``stride``, ``names``
and ``fp16``. Exported files carry ``stride`` and ``names`` as metadata (see export.py); both are checked (stride in
1..MAX_STRIDE, exactly nc bounded string names) before use.

``.pt`` and ``.onnx`` are data. A ``.torchscript`` file is a program: its code runs while it loads (a scripted
``__setstate__`` can write any file), so it is refused unless the caller passes ``trust_weights=True``
(``--trust-weights``).
"""
from __future__ import annotations

import ast
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from utils.checkpoint.file_kind import FORMATS, weights_format
from utils.checkpoint.format import CheckpointError
from utils.core.logging import LOGGER
from utils.core.safety import MAX_NAMES_TEXT, UnsafeFileError, check_names, check_onnx_file, check_stride


def _one_line(e: BaseException) -> str:
    return ' '.join(str(e).split())[:300]


class BackendError(Exception):
    """A weights file that is missing, of an unsupported format, that cannot be loaded, or that fails on an input."""


def parse_names(value, source: str = 'metadata', nc: int | None = None) -> dict[int, str]:
    """Class names from metadata: a dict, a list, or their text (JSON or a Python literal, never evaluated), checked
    by utils.core.safety.check_names (bounded, strings, exactly ``nc`` when given)."""
    if isinstance(value, str):
        if len(value) > MAX_NAMES_TEXT:
            raise UnsafeFileError(f'{source}: names metadata has {len(value)} characters, over {MAX_NAMES_TEXT}')
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = ast.literal_eval(value)
    if isinstance(value, dict):  # JSON keys are strings
        value = {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in value.items()}
    return check_names(value, source, nc)


def default_names(n: int = 999) -> dict[int, str]:
    """YOLOv5's fallback names ``class0`` … when a model carries none."""
    return {i: f'class{i}' for i in range(n)}


class DetectBackend(nn.Module):
    """Load ``weights`` (.pt, .torchscript or .onnx) for inference on ``device``.

    ``fp16`` applies on CUDA only (silently off on CPU, as YOLOv5); ``fuse`` folds BatchNorms of .pt models.
    """

    is_backend = True  # the validator does not wrap backends in autocast: fp16 is handled here

    def __init__(self, weights: str | Path | list, device: torch.device | str = 'cpu', fp16: bool = False,
                 fuse: bool = True, data: dict | None = None, trust_weights: bool = False):
        super().__init__()
        paths = [Path(str(x)) for x in (weights if isinstance(weights, (list, tuple)) else [weights])]
        w = paths[0]
        if len(paths) > 1 and any(p.suffix.lower() != '.pt' for p in paths):
            raise BackendError(f'several --weights form an ensemble only as .pt files, got {[p.name for p in paths]}')
        missing = [str(p) for p in paths[1:] if not p.is_file()]
        if missing:
            raise BackendError(f'{missing[0]} does not exist')
        self.ensemble = paths if len(paths) > 1 else []
        self.format = weights_format(w)
        if self.format is None:
            raise BackendError(f'{w}: unsupported model format {w.suffix!r}; supported: {", ".join(FORMATS)}')
        if not (w.is_file() or (self.format == 'openvino' and w.is_dir())):
            raise BackendError(f'{w} does not exist')
        if self.format == 'jit' and not trust_weights:
            raise BackendError(f'{w}: refused: a .torchscript file is a program whose code runs while it loads, not '
                               'weights; load it only from a source you trust, with --trust-weights')
        self.device = torch.device(device)
        self.fp16 = bool(fp16) and self.device.type == 'cuda'
        self.pt, self.jit, self.onnx, self.openvino = (self.format == f for f in ('pt', 'jit', 'onnx', 'openvino'))
        self.weights, self.stride, self.names = w, 32, None
        self.min_size = self.max_size = 0  # --dynamic window-attention exports: the input sides they are exact for
        self.input_shape: list = []  # ONNX/OpenVINO: the file's input shape (ints where static)
        self._warned_batch = False
        self.nc: int | None = None  # classes the model predicts, when its files say so
        try:
            getattr(self, f'_load_{self.format}')(w, fuse)
            self.names = self._checked_names(w, data)
        except BackendError:
            raise
        except (UnsafeFileError, CheckpointError) as e:  # already one line naming the file
            raise BackendError(str(e)) from None
        except Exception as e:  # corrupt or foreign files: one clear line naming the file
            raise BackendError(f'{w}: cannot load {self.format} model ({type(e).__name__}: {_one_line(e)})') from None

    def _checked_names(self, w: Path, data: dict | None) -> dict[int, str]:
        """The model's names, else --data's, else class0..: exactly nc of them when nc is known (names shorter than
        nc used to end detect.py with a KeyError at the first such detection)."""
        if self.names is not None:
            return check_names(self.names, f'{w} names', self.nc)
        if data and 'names' in data:
            return check_names(data['names'], f'{data.get("yaml_file", "--data")} names for {w.name}', self.nc)
        return default_names(self.nc or 999)

    def _load_pt(self, w: Path, fuse: bool) -> None:
        from utils.checkpoint.model import load_model

        if self.ensemble:
            from utils.inference.ensemble import Ensemble

            try:
                model = Ensemble([load_model(p, device=self.device, fuse=fuse) for p in self.ensemble])
            except ValueError as e:
                raise BackendError(f'{", ".join(str(p) for p in self.ensemble)}: {e}') from None
            LOGGER.info(f'Ensemble created with {[str(p) for p in self.ensemble]}')
        else:
            model = load_model(w, device=self.device, fuse=fuse)
        self.model = model.half() if self.fp16 else model.float()
        self.model.eval()
        self.stride = max(int(model.stride.max()), 32)
        self.names, self.nc = dict(model.names), int(model.nc)

    def _load_jit(self, w: Path, fuse: bool) -> None:
        extra = {'config.txt': ''}
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', FutureWarning)  # torch.jit deprecation notice
            model = torch.jit.load(str(w), _extra_files=extra, map_location=self.device)
        self.model = model.half() if self.fp16 else model.float()
        self.model.eval()
        if extra['config.txt']:
            meta = json.loads(extra['config.txt'][:MAX_NAMES_TEXT * 2])
            self.stride, self.names = check_stride(meta['stride'], str(w)), parse_names(meta['names'], str(w))
            self.nc = len(self.names)  # export.py (ours and YOLOv5's) writes exactly the model's names

    def _load_onnx(self, w: Path, fuse: bool) -> None:
        import onnxruntime

        check_onnx_file(w)  # no external data, no sparse tensors (our exports have neither)
        providers = ['CPUExecutionProvider']
        if self.device.type == 'cuda' and 'CUDAExecutionProvider' in onnxruntime.get_available_providers():
            providers.insert(0, ('CUDAExecutionProvider', {'device_id': self.device.index or 0}))
        self.session = onnxruntime.InferenceSession(str(w), providers=providers)
        inp = self.session.get_inputs()[0]
        self.input_name, self.input_shape = inp.name, inp.shape
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.fp16 = inp.type == 'tensor(float16)'
        meta = self.session.get_modelmeta().custom_metadata_map
        out = self.session.get_outputs()[0].shape
        self.nc = out[-1] - 5 if out and isinstance(out[-1], int) and out[-1] > 5 else None
        if 'stride' in meta:
            self.stride = check_stride(meta['stride'], f'{w} metadata')
        if 'names' in meta:
            self.names = parse_names(meta['names'], f'{w} metadata', self.nc)
        self._size_range(meta, f'{w} metadata')

    def _load_openvino(self, w: Path, fuse: bool) -> None:
        from utils.core.optional import MissingPackageError
        from utils.inference.openvino_runner import OpenVINORunner

        try:
            self.ov = OpenVINORunner(w)
        except MissingPackageError as e:
            raise BackendError(f'{w}: {e}') from None
        self.input_shape, out, meta = self.ov.input_shape, self.ov.output_shape, self.ov.metadata
        self.nc = out[-1] - 5 if out and isinstance(out[-1], int) and out[-1] > 5 else None
        if 'stride' in meta:
            self.stride = check_stride(meta['stride'], f'{self.ov.xml} metadata')
        if 'names' in meta:
            self.names = parse_names(meta['names'], f'{self.ov.xml} metadata', self.nc)
        self._size_range(meta, f'{self.ov.xml.with_suffix(".yaml")}')

    def _size_range(self, meta: dict, source: str) -> None:
        """``min_size``/``max_size`` of a --dynamic EfficientViT export (see export.py): non-negative integers."""
        for key in ('min_size', 'max_size'):
            try:
                value = int(str(meta.get(key, 0)))
            except ValueError:
                raise BackendError(f'{source}: {key} {str(meta.get(key))[:40]!r} is not an integer') from None
            if not 0 <= value <= 1 << 20:
                raise BackendError(f'{source}: {key} {value} out of range')
            setattr(self, key, value)

    def _check_size(self, im: torch.Tensor) -> None:
        """Refuse inputs a --dynamic window-attention export is not exact for (ONNX Runtime would otherwise compute
        a different branch's result, or stop with a Gather error from inside the graph)."""
        side = max(im.shape[2:])
        if self.min_size and side < self.min_size:
            raise BackendError(f'{self.weights} is exact for inputs with a side of at least {self.min_size} px '
                               f'(window attention); got {tuple(im.shape[2:])}. Use --imgsz {self.min_size}+')
        if self.max_size and side > self.max_size:
            raise BackendError(f'{self.weights} is exact for inputs with sides of at most {self.max_size} px (window '
                               f'attention traced on maps smaller than one window); got {tuple(im.shape[2:])}. Use '
                               f'--imgsz {self.max_size // self.stride * self.stride} or less, or export again with a '
                               f'larger --imgsz')

    @property
    def dynamic(self) -> bool:
        """True when the model takes any input size (.pt, ONNX exported with --dynamic): rectangular inference."""
        return self.pt or ((self.onnx or self.openvino) and self.static_shape is None)

    @property
    def static_shape(self) -> tuple[int, int] | None:
        """(h, w) an exported model was fixed to, or None when it takes any size (.pt, dynamic ONNX)."""
        if (self.onnx or self.openvino) and all(isinstance(d, int) for d in self.input_shape[2:]):
            return tuple(self.input_shape[2:])
        return None

    def forward(self, im: torch.Tensor, augment: bool = False) -> torch.Tensor:
        """Decoded predictions (B, N, 5+nc) in input-image pixels, before NMS."""
        if self.fp16 and im.dtype != torch.float16:
            im = im.half()
        elif not self.fp16 and im.dtype != torch.float32:
            im = im.float()
        if self.pt:
            y = self.model(im, augment=augment) if augment else self.model(im)
        elif self.jit:
            y = self.model(im)
        else:
            self._check_size(im)
            y = self._run_exported(im)
        if isinstance(y, (list, tuple)):
            y = y[0]
        return y

    @property
    def static_batch(self) -> int | None:
        """The batch size an ONNX/OpenVINO file was exported with (``export.py --batch-size B``), or None when its
        batch is dynamic."""
        b = self.input_shape[0] if self.input_shape else None  # only the ONNX/OpenVINO loaders set it
        return b if isinstance(b, int) and b > 0 else None

    def _run_exported(self, im: torch.Tensor) -> torch.Tensor:
        """The ONNX or OpenVINO file on ``im``. A file of static batch B runs any batch: B images at a time, the
        last group filled with blank images whose outputs are dropped (detect.py and val.py feed batch 1)."""
        b, n = self.static_batch, im.shape[0]
        if b is None or b == n:
            return self._run_exported_once(im)
        if not self._warned_batch:
            LOGGER.warning(f'WARNING ⚠️ {self.weights} was exported for batch {b}: each call runs {b} images, '
                           f'the missing ones blank (export with --batch-size {n} or --dynamic to avoid the cost)')
            self._warned_batch = True
        groups = []
        for chunk in im.split(b):
            pad = chunk.new_zeros((b - chunk.shape[0], *chunk.shape[1:]))
            groups.append(self._run_exported_once(torch.cat([chunk, pad]))[:chunk.shape[0]])
        return torch.cat(groups)

    def _run_exported_once(self, im: torch.Tensor) -> torch.Tensor:
        if self.openvino:
            return torch.from_numpy(np.asarray(self.ov(im.cpu().numpy()))).to(self.device)
        try:
            y = self.session.run(self.output_names, {self.input_name: im.cpu().numpy()})[0]
        except Exception as e:  # a graph that fails at run time (shapes it was not made for): bad input
            if not type(e).__module__.startswith('onnxruntime'):
                raise
            raise BackendError(f'{self.weights}: ONNX Runtime failed on a {tuple(im.shape)} input: '
                               f'{_one_line(e)}') from None
        return torch.from_numpy(np.asarray(y)).to(self.device)

    def warmup(self, imgsz: tuple[int, int, int, int] = (1, 3, 640, 640)) -> None:
        """One forward on zeros so the first real image is not timed with lazy initialisation (GPU only)."""
        if self.device.type != 'cpu':
            im = torch.zeros(*imgsz, dtype=torch.half if self.fp16 else torch.float, device=self.device)
            self.forward(im)
            LOGGER.debug(f'warmed up {self.weights.name} at {tuple(imgsz)}')

"""Guards for files we did not write: the limits, the YAML loader, class names as paths, image and ONNX checks.

Weights, dataset YAMLs, label caches and images may come from anyone. Everything that reads them goes through the
checks here, so a hostile file ends with one line naming the file and the problem instead of running code, writing
outside the run directory or allocating gigabytes. The limits are named constants (listed in the README's safety
section); the pickle scanner for ``.pt`` files lives in ``utils/core/pickle_scan.py``.
"""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml

# ---------------------------------------------------------------------------------------------------- limits
MAX_YAML_BYTES = 8 * 2**20  # data, hyp, model and opt YAMLs (ours are a few kB)
MAX_CLASSES = 4096  # class names per model or dataset (LVIS has 1203); bounds Detect and the confusion matrix
MAX_NAME_CHARS = 256  # characters per class name
MAX_NAMES_TEXT = 2 * 2**20  # characters of a names string in ONNX/TorchScript metadata before it is parsed
MAX_STRIDE = 256  # largest model stride accepted from metadata (YOLOv5 P6 models: 64)
MAX_IMAGE_PIXELS = 100_000_000  # width x height read from an image header before decoding (300 MB as BGR)
MAX_MODEL_PARAMS = 500_000_000  # parameters + buffers, counted on the meta device before a model is allocated
MAX_LAYER_REPEATS = 100  # a YAML row's repeats after depth_multiple (YOLOv5x: 12)
MAX_MODEL_ROWS = 1000  # backbone + head rows of a model YAML (YOLOv5: 25)
MAX_UPSAMPLE = 8  # nn.Upsample scale_factor in a model YAML (YOLOv5: 2)
MAX_PICKLE_BYTES = 64 * 2**20  # data.pkl inside a .pt (ours: ~40 kB)
MAX_PICKLE_ITEMS = 5_000_000  # values in a checkpoint's pickle, counting every use of a shared (memoised) one
MAX_PICKLE_DEPTH = 100  # nesting of containers and objects in a checkpoint's pickle
MAX_ZIP_ENTRIES = 100_000  # members of a .pt or .cache archive
MAX_ANNOTATION_JSON_BYTES = 2 * 2**30  # one COCO annotation file (COCO train2017's is 448 MB; parsing costs ~8x in RAM)
MAX_XML_BYTES = 4 * 2**20  # one Pascal VOC annotation file (VOC's are ~1 kB); DOCTYPE and ENTITY are refused
VIEW_EXPANSION = 4  # tensor views may address at most 4x the elements stored in the file (+ VIEW_SLACK)
VIEW_SLACK = 2**20


class UnsafeFileError(ValueError):
    """A file that breaks one of the limits above or is code where data was expected; the message is one line."""


# ---------------------------------------------------------------------------------------------------- YAML
class YamlAliasError(yaml.YAMLError):
    """A YAML alias (``*name``): refused, since a few aliases can expand to gigabytes."""


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases (and with them ``<<: *base`` merges) before composing them."""

    def compose_node(self, parent, index):  # noqa: D102  (PyYAML hook)
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise YamlAliasError(f'YAML aliases (*{event.anchor}, line {event.start_mark.line + 1}) are not '
                                 'accepted: they can expand a small file to gigabytes')
        return super().compose_node(parent, index)


def yaml_load(text: str | bytes) -> Any:
    """``yaml.safe_load`` without aliases and with a size limit; every failure is a ``yaml.YAMLError``."""
    if len(text) > MAX_YAML_BYTES:
        raise yaml.YAMLError(f'{len(text)} bytes, over the {MAX_YAML_BYTES}-byte limit for YAML files')
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506  (a SafeLoader subclass)


def read_yaml(file: str | Path) -> Any:
    """Parse a YAML file through ``yaml_load``; the size is checked before the file is read."""
    file = Path(file)
    size = file.stat().st_size
    if size > MAX_YAML_BYTES:
        raise yaml.YAMLError(f'{size} bytes, over the {MAX_YAML_BYTES}-byte limit for YAML files')
    return yaml_load(file.read_text(encoding='utf-8'))


# ---------------------------------------------------------------------------------------------------- names
def check_names(names: Any, source: str, nc: int | None = None) -> dict[int, str]:
    """Class names as ``{0: str, ..., n-1: str}``: a dict of int -> str (or a list of str) of bounded size and,
    when ``nc`` is given, exactly ``nc`` entries. Anything else is an UnsafeFileError naming ``source``."""
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if not isinstance(names, dict):
        raise UnsafeFileError(f'{source}: class names must be a mapping {{0: name, ...}} or a list, '
                              f'got {type(names).__name__}')
    if len(names) > MAX_CLASSES:
        raise UnsafeFileError(f'{source}: {len(names)} class names, over the limit of {MAX_CLASSES}')
    ints = all(isinstance(k, int) and not isinstance(k, bool) for k in names)
    if not ints or sorted(names) != list(range(len(names))):
        keys = [repr(k)[:20] for k in list(names)[:5]]
        raise UnsafeFileError(f'{source}: class name keys must be 0..{len(names) - 1}, got {", ".join(keys)}...')
    bad = next((v for v in names.values() if not isinstance(v, str)), None)
    if bad is not None:
        raise UnsafeFileError(f'{source}: class names must be strings, got {type(bad).__name__}')
    long = next((v for v in names.values() if len(v) > MAX_NAME_CHARS), None)
    if long is not None:
        raise UnsafeFileError(f'{source}: a class name has {len(long)} characters, over the limit of {MAX_NAME_CHARS}')
    if nc is not None and len(names) != nc:
        raise UnsafeFileError(f'{source}: {len(names)} class names for a model with nc={nc}; need exactly {nc}')
    return {k: names[k] for k in sorted(names)}


def names_dict(names: Any) -> dict[int, str]:
    """Class names as ``{index: name}`` in index order, from a mapping or a sequence: THE normaliser for names that
    were checked when they were read (``check_names``), e.g. a model's or a dataset's; ``None`` gives ``{}``."""
    if names is None:
        return {}
    pairs = names.items() if isinstance(names, dict) else enumerate(names)
    return {int(k): str(v) for k, v in sorted(pairs, key=lambda kv: int(kv[0]))}


def check_stride(value: Any, source: str) -> int:
    """A stride from metadata: an integer in 1..MAX_STRIDE (0 or junk would divide by zero later)."""
    text = str(value).strip()[:40]
    ok = not isinstance(value, bool) and (isinstance(value, int) or text.isdigit())
    if not ok or not 1 <= int(text) <= MAX_STRIDE:
        raise UnsafeFileError(f'{source}: stride {text!r} must be an integer in 1..{MAX_STRIDE}')
    return int(text)


# ---------------------------------------------------------------------------------------------------- paths
_PATH_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\]')


def path_component(text: Any, default: str = '_') -> str:
    """``text`` as ONE file-name component: separators and control characters become ``_``, ``.``/``..``/empty
    become ``default``, long names are cut (200 bytes). Class names from weights or YAMLs go through this."""
    s = _PATH_UNSAFE.sub('_', str(text)).strip()
    s = s.encode('utf-8')[:200].decode('utf-8', 'ignore')
    return default if s.strip('.') == '' else s


def inside(root: str | Path, path: str | Path) -> Path:
    """``path`` if it resolves inside ``root`` (symlinks followed), else UnsafeFileError: nothing is written
    outside the run directory, whatever a name contained."""
    root_r, path_r = Path(root).resolve(), Path(path).resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise UnsafeFileError(f'{path}: refused to write outside the run directory {root}')
    return Path(path)


# ---------------------------------------------------------------------------------------------------- images
def image_header_size(data: bytes | np.ndarray | str | Path) -> tuple[int, int]:
    """(width, height) an image's header claims, read without decoding the pixels (PIL reads headers lazily).

    Raises UnsafeFileError for a claim over MAX_IMAGE_PIXELS (PIL's own bomb check included) and ValueError when no
    header can be read."""
    from PIL import Image

    src = io.BytesIO(data.tobytes() if isinstance(data, np.ndarray) else data) if isinstance(
        data, (bytes, np.ndarray)) else data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            with Image.open(src) as im:
                w, h = im.size
    except Image.DecompressionBombError as e:  # PIL's own check (2 x 89 MP) fired first; its text has the size
        m = re.search(r'\((\d+) pixels\)', str(e))
        claim = f'{int(m.group(1)):,}' if m else 'more than 178,956,970'
        raise UnsafeFileError(f'image header claims {claim} pixels, over the limit of {MAX_IMAGE_PIXELS:,}') from None
    except Exception as e:  # PIL raises many types on foreign bytes; its text may end with the file or a buffer
        why = ' '.join(str(e).split(" '")[0].split(' <')[0].split())[:120] or type(e).__name__
        raise ValueError(f'unreadable or corrupt image ({why})') from None
    check_pixels(w, h)
    return w, h


def check_pixels(w: int, h: int) -> None:
    """Refuse a width x height over MAX_IMAGE_PIXELS (decoding it would allocate 3 bytes per pixel)."""
    if w * h > MAX_IMAGE_PIXELS:
        raise UnsafeFileError(f'image header claims {w}x{h} = {w * h:,} pixels, over the limit of '
                              f'{MAX_IMAGE_PIXELS:,}')


# ---------------------------------------------------------------------------------------------------- ONNX
def check_onnx_file(path: str | Path) -> None:
    """Our exports keep every tensor inside the .onnx file and use no sparse tensors; refuse models that reference
    external data (files elsewhere on disk) or hold sparse initializers (tiny files that expand to gigabytes)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # foreign bytes
        raise ValueError(f'not a readable ONNX model ({type(e).__name__})') from None
    problem = _onnx_graph_problem(model.graph)
    if problem:
        raise UnsafeFileError(f'{path}: refused: {problem}; our exports keep all weights inside the .onnx file')


def _onnx_graph_problem(graph) -> str:
    """The first external-data or sparse tensor in ``graph`` and its subgraphs, as text ('' when none)."""
    import onnx

    todo = [graph]
    while todo:
        g = todo.pop()
        if len(g.sparse_initializer):
            return f'graph {g.name!r} holds sparse initializers'
        tensors = list(g.initializer)
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.SPARSE_TENSOR or a.sparse_tensors:
                    return f'node {node.name!r} holds a sparse tensor'
                tensors += [a.t] if a.HasField('t') else []
                tensors += list(a.tensors)
                todo += ([a.g] if a.HasField('g') else []) + list(a.graphs)
        ext = next((t for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data), None)
        if ext is not None:
            return f'tensor {ext.name!r} references external data'
    return ''

"""Static check of a ``.pt`` file's archive and pickle opcodes before ``torch.load`` runs any of them.

``weights_only=True`` decides which names a pickle may use; it still calls them. Its defaults allow
``bytearray(10**10)`` or a tensor class called with a size, and the YOLOv5 allow-list adds module classes such as
``nn.Conv2d(4096, 4096, 5)``: each a few bytes of pickle that allocate gigabytes. Memo-shared lists make a 500-byte
pickle describe billions of items, and a zero-stride view turns one stored value into a huge tensor once it is
copied. So the pickle is executed here symbolically, without calling anything, and refused unless:

- the archive is a zip of stored (uncompressed) members, not TorchScript, with a bounded number of entries;
- the only calls (REDUCE) are tensor/parameter rebuilds and plain-data constructors with small arguments; module
  classes of official YOLOv5 files are only created empty (NEWOBJ) and filled with data (BUILD);
- each storage's size fits its record in the archive and each tensor view fits its storage, with all views
  together addressing at most VIEW_EXPANSION times the stored elements;
- the data, counting every use of a shared value, has at most MAX_PICKLE_ITEMS values, MAX_PICKLE_DEPTH levels and
  no cycles.
"""
from __future__ import annotations

import math
import pickletools
import struct
import zipfile
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from pathlib import Path
from typing import Any

from utils.core.safety import (
    MAX_PICKLE_BYTES,
    MAX_PICKLE_DEPTH,
    MAX_PICKLE_ITEMS,
    MAX_ZIP_ENTRIES,
    VIEW_EXPANSION,
    VIEW_SLACK,
    UnsafeFileError,
)

_ITEMSIZE = {'Double': 8, 'Float': 4, 'Half': 2, 'BFloat16': 2, 'Long': 8, 'Int': 4, 'Short': 2, 'Char': 1,
             'Byte': 1, 'Bool': 1, 'ComplexFloat': 8, 'ComplexDouble': 16, 'Untyped': 1}
STORAGE_TYPES = {f'torch.{k}Storage': v for k, v in _ITEMSIZE.items()} | {'torch.storage.UntypedStorage': 1}
REBUILD_TENSOR, REBUILD_PARAMETER = 'torch._utils._rebuild_tensor_v2', 'torch._utils._rebuild_parameter'
# calls whose arguments come from the pickle itself (so their result is bounded by its size)
PLAIN_CALLS = {'collections.OrderedDict', 'builtins.set', 'builtins.frozenset', '_codecs.encode', 'torch.device',
               'torch.Size', 'numpy.dtype', 'numpy.core.multiarray._reconstruct', 'numpy._core.multiarray._reconstruct',
               'numpy.core.multiarray.scalar', 'numpy._core.multiarray.scalar'}
_SCALAR_OPS = {'NONE', 'NEWTRUE', 'NEWFALSE', 'INT', 'BININT', 'BININT1', 'BININT2', 'LONG', 'LONG1', 'LONG4',
               'FLOAT', 'BINFLOAT', 'STRING', 'BINSTRING', 'SHORT_BINSTRING', 'BINBYTES', 'SHORT_BINBYTES',
               'BINBYTES8', 'BYTEARRAY8', 'UNICODE', 'BINUNICODE', 'SHORT_BINUNICODE', 'BINUNICODE8'}


def state_dict_globals() -> set[str]:
    """Names a file of plain state dicts may use: tensor rebuilds, dtypes and plain-data constructors (torch's
    weights-only defaults ``torch.Tensor``, ``Parameter``, ``bytearray`` may be named, never called)."""
    import torch

    dtypes = {str(v) for v in vars(torch).values() if isinstance(v, torch.dtype)}
    torch_defaults = {'builtins.bytearray', 'builtins.complex', 'collections.Counter', 'torch.Tensor',
                      'torch.nn.parameter.Parameter'}
    return dtypes | torch_defaults | PLAIN_CALLS | {REBUILD_TENSOR, REBUILD_PARAMETER}


class _Node:
    """A symbolic pickle value with children: containers, globals, calls, objects and storages."""

    __slots__ = ('kind', 'name', 'items', 'numel')

    def __init__(self, kind: str, items: list | None = None, name: str = '', numel: int = 0):
        self.kind, self.items, self.name, self.numel = kind, items if items is not None else [], name, numel


class _Refused(Exception):
    """Raised inside the scan; becomes UnsafeFileError with the file name."""


def scan_checkpoint(path: str | Path, allowed_globals: set[str], newobj_classes: set[str]) -> None:
    """Refuse ``path`` (UnsafeFileError, one line) unless its archive and pickle pass the checks above.

    ``allowed_globals``: every ``module.name`` the loader's allow-list accepts; ``newobj_classes``: the module
    classes an official YOLOv5 file may instantiate empty."""
    path = Path(path)
    try:
        members, pkl = _archive(path)
        _Machine(members, allowed_globals, newobj_classes).run(pkl)
    except _Refused as e:
        raise UnsafeFileError(f'{path}: {e}') from None


# ---------------------------------------------------------------------------------------------------- archive
def _zip_entries(path: Path) -> int:
    """Entry count from the end-of-central-directory record (zip64 too), read before zipfile parses the directory."""
    size = path.stat().st_size
    with open(path, 'rb') as f:
        f.seek(max(0, size - 65557))
        tail = f.read()
        i = tail.rfind(b'PK\x05\x06')
        if i < 0 or len(tail) < i + 22:
            raise _Refused('not a readable PyTorch checkpoint (not a zip archive)')
        n = struct.unpack('<H', tail[i + 10:i + 12])[0]
        loc = tail.rfind(b'PK\x06\x07', 0, i)
        if n == 0xFFFF and loc >= 0:  # zip64: the count lives in the zip64 end record
            f.seek(struct.unpack('<Q', tail[loc + 8:loc + 16])[0])
            rec = f.read(56)
            n = struct.unpack('<Q', rec[32:40])[0] if rec[:4] == b'PK\x06\x06' else n
    return n


def _archive(path: Path) -> tuple[dict[str, int], bytes]:
    """({storage key: stored bytes}, data.pkl bytes) of a torch zip archive, after the structural checks."""
    if _zip_entries(path) > MAX_ZIP_ENTRIES:
        raise _Refused(f'the archive lists more than {MAX_ZIP_ENTRIES} entries')
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise _Refused(f'not a readable PyTorch checkpoint ({type(e).__name__})') from None
    with z:
        infos = z.infolist()
        names = [i.filename for i in infos]
        if any(n.endswith(('/constants.pkl', '/code/')) or '/code/' in n for n in names):
            raise _Refused('refused: this is a TorchScript archive, i.e. a program, not weights; '
                           'TorchScript is loaded only by detect.py/val.py with --trust-weights')
        if any(i.compress_type != zipfile.ZIP_STORED for i in infos):
            raise _Refused('refused: compressed archive members (torch.save never compresses; a compressed member '
                           'can expand without bound)')
        pkls = [i for i in infos if i.filename.endswith('/data.pkl') and i.filename.count('/') == 1]
        if len(pkls) != 1:
            raise _Refused('not a readable PyTorch checkpoint (no data.pkl in the archive)')
        prefix = pkls[0].filename[:-len('data.pkl')]
        if pkls[0].file_size > MAX_PICKLE_BYTES:
            raise _Refused(f'refused: data.pkl has {pkls[0].file_size} bytes, over the {MAX_PICKLE_BYTES}-byte limit')
        data = z.read(pkls[0])
        members = {i.filename[len(prefix) + 5:]: i.file_size for i in infos if i.filename.startswith(prefix + 'data/')}
    return members, data


# ---------------------------------------------------------------------------------------------------- machine
class _Machine:
    """Runs pickle opcodes on symbolic values: nothing is imported or called."""

    def __init__(self, members: dict[str, int], allowed: set[str], newobj: set[str]):
        self.members, self.allowed, self.newobj = members, allowed, newobj
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.stored = self.viewed = 0  # elements stored in the archive / addressed by tensor views
        self.storages: dict[str, _Node] = {}

    def run(self, data: bytes) -> None:
        """Execute every opcode up to STOP, then check the totals and the shape of the result."""
        try:
            for op, arg, _ in pickletools.genops(data):
                if op.name == 'STOP':
                    result = self._pop()
                    break
                self._step(op.name, arg)
            else:
                raise ValueError('no STOP')
        except _Refused:
            raise
        except Exception as e:  # truncated or malformed opcodes (genops, stack underflow, missing memo keys)
            raise _Refused(f'not a readable PyTorch checkpoint (malformed pickle: {type(e).__name__})') from None
        if self.viewed > VIEW_EXPANSION * self.stored + VIEW_SLACK:
            raise _Refused(f'refused: tensor views address {self.viewed:,} elements but the file stores only '
                           f'{self.stored:,} (a few bytes would be copied into gigabytes)')
        _check_tree(result)

    def _pop(self) -> Any:
        if not self.stack or (self.marks and len(self.stack) <= self.marks[-1]):
            raise IndexError('stack underflow')
        return self.stack.pop()

    def _pop_mark(self) -> list:
        i = self.marks.pop()
        items = self.stack[i:]
        del self.stack[i:]
        return items

    def _step(self, name: str, arg: Any) -> None:
        """One opcode. Unknown opcodes (INST, OBJ, EXT*, buffers...) are refused."""
        s = self.stack
        if name in _SCALAR_OPS:
            s.append(arg if isinstance(arg, (int, float, str, bool, type(None))) else b'')
        elif name in ('PROTO', 'FRAME'):
            pass
        elif name == 'MARK':
            self.marks.append(len(s))
        elif name in ('EMPTY_LIST', 'EMPTY_DICT', 'EMPTY_SET', 'EMPTY_TUPLE'):
            s.append(_Node(name[6:].lower()))
        elif name in ('TUPLE', 'LIST', 'DICT', 'FROZENSET'):
            s.append(_Node(name.lower(), self._pop_mark()))
        elif name in ('TUPLE1', 'TUPLE2', 'TUPLE3'):
            n = int(name[-1])
            items = [self._pop() for _ in range(n)][::-1]
            s.append(_Node('tuple', items))
        elif name in ('APPEND', 'APPENDS', 'SETITEM', 'SETITEMS', 'ADDITEMS'):
            self._add(name)
        else:
            self._step_other(name, arg)

    def _step_other(self, name: str, arg: Any) -> None:
        s = self.stack
        if name in ('PUT', 'BINPUT', 'LONG_BINPUT'):
            self.memo[arg] = s[-1]
        elif name == 'MEMOIZE':
            self.memo[len(self.memo)] = s[-1]
        elif name in ('GET', 'BINGET', 'LONG_BINGET'):
            s.append(self.memo[arg])
        elif name == 'POP':
            self._pop_mark() if not s or (self.marks and len(s) == self.marks[-1]) else s.pop()
        elif name == 'POP_MARK':
            self._pop_mark()
        elif name == 'DUP':
            s.append(s[-1])
        elif name in ('GLOBAL', 'STACK_GLOBAL'):
            s.append(self._global(*(arg.split(' ', 1) if name == 'GLOBAL' else self._stack_global())))
        elif name == 'REDUCE':
            args = self._pop()
            s.append(self._reduce(self._pop(), args))
        elif name in ('NEWOBJ', 'NEWOBJ_EX'):
            extra = [self._pop()] if name == 'NEWOBJ_EX' else []
            args = self._pop()
            s.append(self._newobj(self._pop(), [args, *extra]))
        elif name == 'BUILD':
            state = self._pop()
            self._build(s[-1], state)
        elif name == 'BINPERSID':
            s.append(self._storage(self._pop()))
        else:
            raise _Refused(f'refused: pickle opcode {name} is not used by torch.save')

    def _add(self, name: str) -> None:
        """APPEND(S), SETITEM(S), ADDITEMS: add to the container below (a list, dict, set or OrderedDict)."""
        if name in ('APPEND', 'SETITEM'):
            items = [self._pop() for _ in range(1 if name == 'APPEND' else 2)][::-1]
        else:
            items = self._pop_mark()
        target = self.stack[-1]
        kinds = {'APPEND': ('list',), 'APPENDS': ('list',), 'ADDITEMS': ('set',)}.get(name, ('dict', 'ordereddict'))
        if not isinstance(target, _Node) or target.kind not in kinds:
            raise _Refused(f'refused: {name} applied to {getattr(target, "kind", type(target).__name__)}, '
                           'which is not a container of that kind')
        target.items += items

    def _stack_global(self) -> tuple[str, str]:
        name, module = self._pop(), self._pop()
        if not (isinstance(module, str) and isinstance(name, str)):
            raise _Refused('refused: STACK_GLOBAL without two strings')
        return module, name

    def _global(self, module: str, name: str) -> _Node:
        """A named global, with Python 2 names mapped as the unpickler maps them (protocol 2 writes __builtin__)."""
        if (module, name) in NAME_MAPPING:
            module, name = NAME_MAPPING[(module, name)]
        elif module in IMPORT_MAPPING:
            module = IMPORT_MAPPING[module]
        name = f'{module}.{name}'
        if name not in self.allowed and name not in STORAGE_TYPES:
            raise _Refused(f'refused: the pickle names {name}, which is not on the allow-list of names a weights '
                           'file may use (tensors, plain data and, in official YOLOv5 files, their module classes)')
        return _Node('global', name=name)

    def _callable(self, func: Any, op: str) -> str:
        if not isinstance(func, _Node) or func.kind != 'global':
            raise _Refused(f'refused: {op} of a value that is not a named global')
        return func.name

    def _reduce(self, func: Any, args: Any) -> _Node:
        """Calls: only tensor rebuilds (checked against their storage) and plain-data constructors."""
        name = self._callable(func, 'REDUCE')
        if not isinstance(args, _Node) or args.kind != 'tuple':
            raise _Refused(f'refused: REDUCE of {name} without an argument tuple')
        if name == REBUILD_TENSOR:
            return self._tensor(args.items)
        if name == REBUILD_PARAMETER:
            if not args.items or getattr(args.items[0], 'kind', '') != 'tensor':
                raise _Refused('refused: a parameter rebuilt from something other than a tensor')
            return _Node('tensor', args.items)
        if name == 'collections.OrderedDict' and not args.items:
            return _Node('ordereddict')
        if name in PLAIN_CALLS and name != 'collections.OrderedDict':
            return _Node('call', args.items, name)
        raise _Refused(f'refused: the pickle calls {name}(...) while loading; a checkpoint holds tensors and plain '
                       'data, and such a call can allocate memory without bound')

    def _newobj(self, cls: Any, args: list) -> _Node:
        name = self._callable(cls, 'NEWOBJ')
        if name not in self.newobj:
            raise _Refused(f'refused: the pickle instantiates {name}; only YOLOv5 module classes may be created')
        if any(not isinstance(a, _Node) or a.kind not in ('tuple', 'dict') or a.items for a in args):
            raise _Refused(f'refused: the pickle creates {name} with constructor arguments (only empty objects '
                           'filled with stored data are accepted)')
        return _Node('object', name=name)

    def _build(self, target: Any, state: Any) -> None:
        if not isinstance(target, _Node) or target.kind not in ('object', 'ordereddict', 'call'):
            raise _Refused(f'refused: BUILD on {getattr(target, "kind", type(target).__name__)}')
        target.items.append(state)

    def _storage(self, pid: Any) -> _Node:
        """('storage', type, key, location, numel): numel x itemsize must fit the key's record in the archive."""
        items = pid.items if isinstance(pid, _Node) and pid.kind == 'tuple' else []
        if len(items) != 5 or items[0] != 'storage' or not isinstance(items[2], str):
            raise _Refused('refused: a persistent id that is not a storage')
        stype, key, numel = items[1], items[2], items[4]
        if key in self.storages:
            return self.storages[key]
        itemsize = STORAGE_TYPES.get(getattr(stype, 'name', ''))
        if itemsize is None or not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise _Refused(f'refused: storage {key!r} has an unknown type or size')
        if key not in self.members or numel * itemsize > self.members[key]:
            raise _Refused(f'refused: storage {key!r} claims {numel * itemsize:,} bytes but the archive holds '
                           f'{self.members.get(key, 0):,}')
        self.stored += numel
        self.storages[key] = _Node('storage', name=key, numel=numel)
        return self.storages[key]

    def _tensor(self, a: list) -> _Node:
        """_rebuild_tensor_v2(storage, offset, size, stride, ...): the view must lie inside its storage."""
        if len(a) < 4 or getattr(a[0], 'kind', '') != 'storage':
            raise _Refused('refused: a tensor rebuilt without a storage')
        offset, size, stride = a[1], _ints(a[2]), _ints(a[3])
        if not isinstance(offset, int) or offset < 0 or size is None or stride is None or len(size) != len(stride) \
                or len(size) > 8:
            raise _Refused('refused: a tensor with a malformed offset, size or stride')
        numel = math.prod(size)
        if numel and offset + sum((n - 1) * st for n, st in zip(size, stride)) >= a[0].numel:
            raise _Refused(f'refused: a tensor view of size {tuple(size)} reaches past its storage of '
                           f'{a[0].numel} elements')
        self.viewed += numel
        return _Node('tensor', [a[0]])


def _ints(v: Any) -> list[int] | None:
    """A tuple node of non-negative ints as a list (None otherwise)."""
    if not isinstance(v, _Node) or v.kind != 'tuple':
        return None
    ok = all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v.items)
    return list(v.items) if ok else None


def _check_tree(root: Any) -> None:
    """Count values as a tree (a shared value once per use) and its depth; refuse cycles and the limits."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    active: set[int] = set()
    todo: list[tuple[Any, bool]] = [(root, False)]
    while todo:
        node, done = todo.pop()
        if not isinstance(node, _Node) or (id(node) in size and not done):
            continue
        if done:
            kids = [k for k in node.items if isinstance(k, _Node)]
            size[id(node)] = 1 + len(node.items) - len(kids) + sum(size[id(k)] for k in kids)
            depth[id(node)] = 1 + max((depth[id(k)] for k in kids), default=0)
            active.discard(id(node))
            if size[id(node)] > MAX_PICKLE_ITEMS:
                raise _Refused(f'refused: the pickle holds over {MAX_PICKLE_ITEMS:,} values once shared (memoised) '
                               'values are counted at every use')
            if depth[id(node)] > MAX_PICKLE_DEPTH:
                raise _Refused(f'refused: the pickle nests containers deeper than {MAX_PICKLE_DEPTH} levels')
            continue
        if id(node) in active:
            raise _Refused('refused: the pickle holds a cyclic structure')
        active.add(id(node))
        todo.append((node, True))
        todo += [(k, False) for k in node.items if isinstance(k, _Node)]

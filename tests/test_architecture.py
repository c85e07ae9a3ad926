"""The house rules of docs/ARCHITECTURE.md, checked on the source: every package imports only floors below it (or
its own), no module imports itself back through others, no file over 600 lines and no function over 80 lines.

Imports are read with ``ast`` (module level and inside functions alike), so a lazy import cannot hide an upward edge.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# floor of each package: a package may import its own floor's modules only from itself, and any lower floor
FLOORS = {
    'utils.core': 0,
    'models': 1,
    'utils.ops': 1,
    'utils.checkpoint': 2,
    'utils.data': 2,
    'utils.viz': 2,
    'utils.engine': 3,
    'utils.export': 3,
    'utils.inference': 3,
    'utils.cli': 4,
}
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80


def _source_files() -> list[Path]:
    skip = {'.git', '.venv', 'runs', 'datasets', '__pycache__'}
    return sorted(f for f in ROOT.rglob('*.py') if not skip & set(f.relative_to(ROOT).parts))


def _module_name(file: Path) -> str:
    return '.'.join(file.relative_to(ROOT).with_suffix('').parts).removesuffix('.__init__')


def _package(module: str) -> str | None:
    """The floor-owning package of a module name (``utils.ops.nms`` -> ``utils.ops``), None outside the house."""
    for package in sorted(FLOORS, key=len, reverse=True):
        if module == package or module.startswith(package + '.'):
            return package
    return None


def _imports(file: Path) -> set[str]:
    """Every absolute module a file imports, with ``from a import b`` giving both ``a`` and ``a.b``."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} | {f'{node.module}.{a.name}' for a in node.names}
    return found


def _house_modules() -> dict[str, Path]:
    return {_module_name(f): f for f in _source_files() if _package(_module_name(f))}


def test_every_house_module_has_a_floor():
    """A new package under utils/ must be given its floor here and in docs/ARCHITECTURE.md."""
    orphans = [str(f.relative_to(ROOT)) for f in (ROOT / 'utils').rglob('*.py')
               if '__pycache__' not in f.parts and _package(_module_name(f)) is None and f.name != '__init__.py']
    assert orphans == []


def test_no_upward_or_sideways_imports():
    bad = []
    for module, file in _house_modules().items():
        own = _package(module)
        for target in _imports(file):
            other = _package(target)
            if other is None or other == own:
                continue
            if FLOORS[other] >= FLOORS[own]:
                bad.append(f'{file.relative_to(ROOT)} ({own}, floor {FLOORS[own]}) imports {target} '
                           f'({other}, floor {FLOORS[other]})')
    assert bad == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(root: str) -> None:
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def test_cycle_finder_finds_a_cycle():
    assert _cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
    assert _cycles({'a': {'b'}, 'b': set()}) == []


def test_no_import_circles_between_modules():
    modules = _house_modules()
    graph = {m: {t for t in _imports(f) if t in modules and t != m} for m, f in modules.items()}
    assert _cycles(graph) == []


@pytest.mark.parametrize('file', _source_files(), ids=lambda f: str(f.relative_to(ROOT)))
def test_file_and_function_sizes(file):
    text = file.read_text()
    assert text.count('\n') <= MAX_FILE_LINES, f'{file.name}: {text.count(chr(10))} lines'
    long = [f'{node.name} ({node.end_lineno - node.lineno + 1} lines)' for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_architecture_doc_names_every_package_and_its_floor():
    """docs/ARCHITECTURE.md's floor table matches FLOORS, and every file path it names exists."""
    doc = (ROOT / 'docs' / 'ARCHITECTURE.md').read_text()
    floors = {}
    for floor, package in re.findall(r'^\| *(\d) *\| *`([\w./]+?)/?` ', doc, flags=re.M):
        floors[package.replace('/', '.')] = int(floor)
    assert floors == FLOORS
    named = set(re.findall(r'`((?:models|utils|benchmarks|tests)/[\w/]+\.py)`', doc))
    assert named and [p for p in sorted(named) if not (ROOT / p).exists()] == []

"""The embedded "shapes" dataset: a deterministic scene generator, so the project trains with no download.

Each image is drawn from its own random stream (seeded by ``(seed, split, index)``), so any image can be regenerated
alone and the whole dataset is byte-identical on every regeneration (fixed JPEG quality, no timestamps) with the
same numpy and OpenCV versions (their random streams and JPEG encoder are what the bytes depend on).

Scenes: a textured, noisy background (two-colour gradient, low-frequency texture, thin lines and soft blobs as
distractors), then up to ``max_objects`` shapes of six classes (below) with random colour, outline, aspect ratio,
small rotation and sizes from ``min_size`` px to half the short side. Colour never identifies a class.

Labels are the **visible** extent of each object: the tight box of its pixels that no later object covers. A placement
that would leave an earlier object less than 40 % visible (occluded by more than 60 %) is re-drawn elsewhere or
skipped, so every object in an image is labelled and every label has a visible object. A fraction of images
(``background``) contains no objects.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from utils.core.logging import LOGGER

SHAPE_NAMES = ('circle', 'square', 'triangle', 'star', 'cross', 'ring')
MARKER = '.generated.json'  # written last: a dataset without it (or with another spec) is regenerated
GENERATOR_VERSION = 1
MIN_VISIBLE = 0.4  # an earlier object must keep >= 40 % of its pixels visible
JPEG_QUALITY = 90
SPLIT_IDS = {'train': 1, 'val': 2, 'test': 3, 'sample': 4}
SHAPES_DEFAULTS = {'seed': 0, 'train': 600, 'val': 150, 'test': 0, 'imgsz': [256, 384], 'min_size': 10,
                   'max_objects': 8, 'background': 0.05}


class SyntheticError(ValueError):
    """A dataset YAML's ``generate:`` mapping is invalid (unknown generator, unknown key, bad value)."""


# ---------------------------------------------------------------------------------------------- shape outlines
def _star(n: int = 5, inner: float = 0.45) -> np.ndarray:
    a = -np.pi / 2 + np.arange(2 * n) * np.pi / n
    r = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _cross(t: float = 0.34) -> np.ndarray:
    return np.array([[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1], [-t, t], [-1, t],
                     [-1, -t], [-t, -t]], dtype=float)


_POLYGONS = {  # unit outlines in [-1, 1]^2, later stretched to the object's w, h and rotated a little
    'square': np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float),
    'triangle': np.array([[0, -1], [1, 1], [-1, 1]], dtype=float),
    'star': _star(),
    'cross': _cross(),
}


def _shape_mask(rng: np.random.Generator, name: str, w: int, h: int) -> np.ndarray:
    """Return a uint8 mask (h', w') of one shape filling roughly a w x h box (rotation may enlarge it a little)."""
    angle = float(rng.uniform(-15, 15))
    pad = 2
    size = int(np.ceil(np.hypot(w, h))) + 2 * pad
    m = np.zeros((size, size), np.uint8)
    c = size / 2
    if name in ('circle', 'ring'):
        cv2.ellipse(m, (round(c), round(c)), (max(w // 2, 1), max(h // 2, 1)), angle, 0, 360, 255, -1)
        if name == 'ring':
            k = float(rng.uniform(0.5, 0.68))
            axes = (max(round(w / 2 * k), 1), max(round(h / 2 * k), 1))
            cv2.ellipse(m, (round(c), round(c)), axes, angle, 0, 360, 0, -1)
    else:
        p = _POLYGONS[name] * np.array([w / 2, h / 2])
        if name == 'triangle' and rng.random() < 0.5:
            p = p * np.array([1, -1])  # pointing down
        t = np.deg2rad(angle)
        rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        p = p @ rot.T + c
        cv2.fillPoly(m, [np.round(p * 16).astype(np.int32)], 255, lineType=cv2.LINE_8, shift=4)
    ys, xs = np.nonzero(m)
    return m[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


# ---------------------------------------------------------------------------------------------- background
def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Gradient + low-frequency texture + distractor lines and soft blobs, float32 (h, w, 3) in 0..255."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = np.deg2rad(rng.uniform(0, 360))
    g = (np.arange(w, dtype=np.float32)[None] * np.float32(np.cos(t))
         + np.arange(h, dtype=np.float32)[:, None] * np.float32(np.sin(t)))
    g = (g - g.min()) / max(float(g.max() - g.min()), 1.0)
    im = c0[None, None].astype(np.float32) + g[..., None] * (c1 - c0)[None, None].astype(np.float32)
    tex = rng.normal(0, rng.uniform(5, 30), (int(rng.integers(4, 12)), int(rng.integers(4, 12)), 3))
    im += cv2.resize(tex.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(0, 6))):  # thin distractor lines
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(im, p1, p2, rng.uniform(0, 255, 3).tolist(), int(rng.integers(1, 3)), cv2.LINE_AA)
    blobs = np.zeros((h, w, 3), np.float32)
    for _ in range(int(rng.integers(0, 4))):  # soft blobs: blurred, so never a crisp circle
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(6, w // 4)), int(rng.integers(6, h // 4)))
        cv2.ellipse(blobs, centre, axes, float(rng.uniform(0, 180)), 0, 360, rng.uniform(-60, 60, 3).tolist(), -1)
    if blobs.any():
        im += cv2.GaussianBlur(blobs, (0, 0), sigmaX=float(rng.uniform(6, 12)))
    return im


def _pick_colour(rng: np.random.Generator, local: np.ndarray) -> np.ndarray:
    """A random colour that differs clearly from the local background mean (so objects stay visible)."""
    for _ in range(20):
        col = rng.uniform(0, 255, 3)
        if np.abs(col - local).sum() > 120:
            break
    return col


# ---------------------------------------------------------------------------------------------- scenes
def _place(rng, owner, areas, mask, max_tries=10):
    """Find a top-left corner where the mask leaves every earlier object >= MIN_VISIBLE visible, or None."""
    h, w = owner.shape
    mh, mw = mask.shape
    if mh >= h or mw >= w:
        return None
    on = mask > 0
    for _ in range(max_tries):
        y, x = int(rng.integers(0, h - mh)), int(rng.integers(0, w - mw))
        covered = owner[y:y + mh, x:x + mw][on]
        covered = covered[covered >= 0]
        if covered.size:
            ids, counts = np.unique(covered, return_counts=True)
            visible = np.array([(owner == i).sum() for i in ids]) - counts
            if (visible < MIN_VISIBLE * np.array([areas[i] for i in ids])).any():
                continue
        return y, x
    return None


def render_scene(rng: np.random.Generator, spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image; return (BGR uint8 image, labels (n, 5) float [cls, cx, cy, w, h] normalised)."""
    lo, hi = spec['imgsz']
    h, w = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
    im = _background(rng, h, w)
    owner = np.full((h, w), -1, np.int32)
    classes, areas = [], []
    n = 0 if rng.random() < spec['background'] else int(rng.integers(1, spec['max_objects'] + 1))
    for _ in range(n):
        cls = int(rng.integers(len(SHAPE_NAMES)))
        s = float(np.exp(rng.uniform(np.log(spec['min_size']), np.log(min(h, w) / 2))))
        ar = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        bw, bh = max(round(s * min(1.0, ar)), 4), max(round(s * min(1.0, 1 / ar)), 4)
        mask = _shape_mask(rng, SHAPE_NAMES[cls], bw, bh)
        yx = _place(rng, owner, areas, mask)
        if yx is None:
            continue
        y, x = yx
        on = mask > 0
        k = len(classes)
        owner[y:y + mask.shape[0], x:x + mask.shape[1]][on] = k
        roi = im[y:y + mask.shape[0], x:x + mask.shape[1]]
        col = _pick_colour(rng, roi.reshape(-1, 3).mean(0))
        shade = 1 + rng.uniform(-0.25, 0.25) * np.linspace(-1, 1, mask.shape[0], dtype=np.float32)[:, None, None]
        fill = np.broadcast_to(col.astype(np.float32), roi.shape) * shade
        if rng.random() < 0.4 and min(mask.shape) > 12:  # outline of another colour
            inner = cv2.erode(mask, np.ones((3, 3), np.uint8), iterations=int(rng.integers(1, 3))) > 0
            fill = np.where(on[..., None] & ~inner[..., None], rng.uniform(0, 255, 3).astype(np.float32), fill)
        roi[on] = fill[on]
        classes.append(cls)
        areas.append(int(on.sum()))
    if rng.random() < 0.5:
        im = cv2.GaussianBlur(im, (0, 0), sigmaX=float(rng.uniform(0.5, 1.0)))
    im += rng.standard_normal(im.shape, dtype=np.float32) * np.float32(rng.uniform(2, 10))
    boxes = visible_boxes(owner, len(classes))
    labels = np.concatenate([np.array(classes, dtype=np.float64).reshape(-1, 1), boxes], 1)
    return np.clip(im, 0, 255).astype(np.uint8), labels


def visible_boxes(owner: np.ndarray, n: int) -> np.ndarray:
    """Tight boxes (n, 4) [cx, cy, w, h] normalised of the pixels labelled 0..n-1 in an owner map (-1 = none)."""
    h, w = owner.shape
    out = np.zeros((n, 4))
    for k in range(n):
        ys, xs = np.nonzero(owner == k)
        x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1  # pixel edges: a 1-px object is 1 px wide
        out[k] = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h
    return out


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), SPLIT_IDS[split], int(index)])))


def _write_image(path: Path, im: np.ndarray) -> None:
    ok, buf = cv2.imencode('.jpg', im, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY, cv2.IMWRITE_JPEG_OPTIMIZE, 0])
    if not ok:
        raise OSError(f'could not encode {path}')
    path.write_bytes(buf.tobytes())


def _format_labels(labels: np.ndarray) -> str:
    return ''.join(f'{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n' for c, x, y, w, h in labels)


# ---------------------------------------------------------------------------------------------- spec + registry
def _check_shapes_spec(spec: dict) -> dict:
    """Merge the defaults into a ``generator: shapes`` spec and check every value (one-line SyntheticError)."""
    unknown = sorted(set(spec) - set(SHAPES_DEFAULTS) - {'generator'})
    if unknown:
        raise SyntheticError(f"unknown key(s) {unknown} in generate: (valid: {sorted(SHAPES_DEFAULTS)})")
    s = {**SHAPES_DEFAULTS, **{k: v for k, v in spec.items() if k != 'generator'}}
    for k in ('seed', 'train', 'val', 'test', 'min_size', 'max_objects'):
        if not isinstance(s[k], int) or isinstance(s[k], bool) or s[k] < 0:
            raise SyntheticError(f'generate: {k} must be a non-negative integer, got {s[k]!r}')
    sz = s['imgsz']
    sz = [sz, sz] if isinstance(sz, int) else sz
    if (not isinstance(sz, list | tuple) or len(sz) != 2 or not all(isinstance(v, int) for v in sz)
            or not 32 <= sz[0] <= sz[1]):
        raise SyntheticError(f'generate: imgsz must be an integer or [min, max] with 32 <= min <= max, got {sz!r}')
    if not 4 <= s['min_size'] < sz[0] // 2:
        raise SyntheticError(f"generate: min_size must be in [4, {sz[0] // 2}), got {s['min_size']}")
    if not isinstance(s['background'], int | float) or not 0 <= s['background'] <= 1:
        raise SyntheticError(f"generate: background must be a fraction in [0, 1], got {s['background']!r}")
    return {**s, 'imgsz': list(sz), 'background': float(s['background'])}


def _generate_shapes(spec: dict, out: Path) -> None:
    """Write images/{split}/*.jpg and labels/{split}/*.txt for every split with a positive count."""
    from tqdm import tqdm

    jobs = [(split, i) for split in ('train', 'val', 'test') for i in range(spec[split])]
    for split in ('train', 'val', 'test'):
        if spec[split]:
            (out / 'images' / split).mkdir(parents=True, exist_ok=True)
            (out / 'labels' / split).mkdir(parents=True, exist_ok=True)
    for split, i in tqdm(jobs, desc='Generating shapes', unit='img', mininterval=1.0):
        im, labels = render_scene(_rng(spec['seed'], split, i), spec)
        name = f'{split}_{i:05d}'
        _write_image(out / 'images' / split / f'{name}.jpg', im)
        (out / 'labels' / split / f'{name}.txt').write_text(_format_labels(labels))


GENERATORS: dict[str, tuple[Callable[[dict], dict], Callable[[dict, Path], None]]] = {
    'shapes': (_check_shapes_spec, _generate_shapes),
}


def _resolve(spec: dict) -> tuple[dict, Callable[[dict, Path], None]]:
    if not isinstance(spec, dict):
        raise SyntheticError(f'generate: must be a mapping, got {type(spec).__name__}')
    name = spec.get('generator', 'shapes')
    if name not in GENERATORS:
        raise SyntheticError(f'unknown generator {name!r} in generate: (valid: {sorted(GENERATORS)})')
    check, run = GENERATORS[name]
    return {'generator': name, **check(spec), 'version': GENERATOR_VERSION}, run


def is_generated(spec: dict, root: Path) -> bool:
    """True when ``root`` holds a complete dataset generated from exactly this spec (its completion marker matches)."""
    full, _ = _resolve(spec)
    marker = Path(root) / MARKER
    try:
        return marker.stat().st_size < 2**16 and json.loads(marker.read_text()) == full
    except (OSError, ValueError):
        return False


def generate(spec: dict, root: Path) -> None:
    """Generate the dataset described by ``spec`` (a dataset YAML's ``generate:`` mapping) into ``root``.

    Does nothing when ``root`` already holds a complete dataset from the same spec. Otherwise it builds the files in
    a temporary sibling folder, writes the completion marker last and renames the folder into place, so a killed run
    never leaves a half-written dataset that looks complete. Only a directory carrying our marker file is ever
    replaced: an existing non-empty ``root`` without it (a user's own dataset with ``images/`` and ``labels/``, say,
    set up from a copy of data/shapes.yaml) is refused with one line and left untouched.
    """
    root = Path(root)
    full, run = _resolve(spec)
    if is_generated(spec, root):
        return
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise SyntheticError(f'{root} is not a directory we generated; refusing to replace it')
    if root.exists() and any(root.iterdir()) and not (root / MARKER).is_file():
        raise SyntheticError(f'{root} is not empty and has no {MARKER} (it was not generated by utils.data.synthetic); '
                             'refusing to overwrite it: point path: at a new directory')
    LOGGER.info(f"Generating {full['generator']} dataset (seed {full['seed']}, {full['train']} train, "
                f"{full['val']} val images) in {root} ...")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f'.{root.name}.partial-{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        run(full, tmp)
        (tmp / MARKER).write_text(json.dumps(full, sort_keys=True))
        if root.exists():  # empty, or ours (checked above): nothing of the user's is deleted
            shutil.rmtree(root) if (root / MARKER).is_file() else root.rmdir()
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first: keep its copy if it is the same dataset
            if not is_generated(spec, root):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_sample_images(directory: Path, n: int = 4, seed: int = 0) -> list[Path]:
    """Make sure ``directory`` holds ``n`` generated sample scenes (detect.py's default source); return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = _check_shapes_spec({'seed': seed, 'imgsz': [320, 480]})
    paths = []
    for i in range(n):
        path = directory / f'shapes_{i}.jpg'
        if not path.exists():
            im, _ = render_scene(_rng(seed, 'sample', i), spec)
            tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
            _write_image(tmp, im)
            os.replace(tmp, path)
        paths.append(path)
    return paths

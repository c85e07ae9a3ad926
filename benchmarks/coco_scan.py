"""COCO JSON scan benchmark: how long the first label scan of one big annotation file takes, and its cache hit.

Writes a synthetic COCO dataset (``--images`` tiny JPEGs, one encoded image copied to every file, and one JSON with
``--annotations`` boxes spread over them, width/height given as COCO does), then times, through the dataset class the
trainer uses (utils.data.dataset.LoadImagesAndLabels):

- first scan: parse the JSON, verify every image (header, decode) and box, write the ``.cache``;
- cache hit: the same split again (the JSON is not opened: the cache is keyed by its path, size and mtime; every
  image is stat-ed, as for YOLO labels).

Usage:
    python benchmarks/coco_scan.py                                   # 100,000 annotations on 10,000 images
    python benchmarks/coco_scan.py --annotations 1000 --images 100 --out /tmp/coco_scan   # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # entry point: make the repository importable when run as a script

import cv2  # noqa: E402
import numpy as np  # noqa: E402


def write_coco_dataset(root: Path, n_images: int, n_annotations: int, imgsz: int = 32, seed: int = 0) -> Path:
    """``root/images/*.jpg`` and ``root/annotations.json``; returns the JSON path."""
    rng = np.random.default_rng(seed)
    (root / 'images').mkdir(parents=True, exist_ok=True)
    ok, enc = cv2.imencode('.jpg', rng.integers(0, 255, (imgsz, imgsz, 3), dtype=np.uint8))
    data = enc.tobytes()
    images = []
    for i in range(n_images):
        name = f'{i:07d}.jpg'
        (root / 'images' / name).write_bytes(data)
        images.append({'id': i + 1, 'file_name': name, 'width': imgsz, 'height': imgsz})
    img = rng.integers(1, n_images + 1, n_annotations)
    xy = rng.uniform(0, imgsz * 0.6, (n_annotations, 2))
    wh = rng.uniform(2, imgsz * 0.4, (n_annotations, 2))
    cat = rng.integers(1, 81, n_annotations)
    anns = [{'id': k + 1, 'image_id': int(img[k]), 'category_id': int(cat[k]), 'iscrowd': 0,
             'bbox': [round(float(xy[k, 0]), 2), round(float(xy[k, 1]), 2), round(float(wh[k, 0]), 2),
                      round(float(wh[k, 1]), 2)], 'area': float(wh[k, 0] * wh[k, 1])} for k in range(n_annotations)]
    cats = [{'id': c, 'name': f'class{c}'} for c in range(1, 81)]
    f = root / 'annotations.json'
    f.write_text(json.dumps({'images': images, 'annotations': anns, 'categories': cats}))
    return f


def run(annotations: int = 100_000, images: int = 10_000, imgsz: int = 32, out: str | Path | None = None) -> dict:
    """Build the dataset, time the first scan and the cache hit; returns the figures."""
    from utils.data.dataset import LoadImagesAndLabels

    root = Path(out) if out else Path(tempfile.mkdtemp(prefix='coco_scan_'))
    try:
        t = time.perf_counter()
        ann = write_coco_dataset(root, images, annotations, imgsz)
        write_s = time.perf_counter() - t
        spec = {'format': 'coco', 'annotations': str(ann), 'images': str(root / 'images')}
        t = time.perf_counter()
        ds = LoadImagesAndLabels(spec, imgsz, 16, root=root, verbose=False)
        first_s = time.perf_counter() - t
        t = time.perf_counter()
        again = LoadImagesAndLabels(spec, imgsz, 16, root=root, verbose=False)
        hit_s = time.perf_counter() - t
        boxes = sum(len(x) for x in again.labels)
        assert again.im_files == ds.im_files and boxes == sum(len(x) for x in ds.labels)
        return {'annotations': annotations, 'images': images, 'json_mb': ann.stat().st_size / 2**20,
                'boxes': boxes, 'write_s': write_s, 'first_scan_s': first_s, 'cache_hit_s': hit_s,
                'cpus': os.cpu_count(), 'loadavg': os.getloadavg()}
    finally:
        if not out:
            shutil.rmtree(root, ignore_errors=True)


def format_result(r: dict) -> str:
    return (f"| {r['annotations']:,} | {r['images']:,} | {r['json_mb']:.1f} MB | {r['first_scan_s']:.1f} s | "
            f"{r['cache_hit_s']:.2f} s | {r['cpus']} CPUs, load average {r['loadavg'][0]:.1f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--annotations', type=int, default=100_000, help='boxes in the JSON')
    p.add_argument('--images', type=int, default=10_000, help='images they are spread over')
    p.add_argument('--imgsz', type=int, default=32, help='side of the square JPEGs (pixels)')
    p.add_argument('--out', default=None, help='keep the dataset here (default: a temporary folder, removed)')
    opt = p.parse_args(argv)
    r = run(opt.annotations, opt.images, opt.imgsz, opt.out)
    print('| annotations | images | JSON | first scan | cache hit | machine |\n|---|---|---|---|---|---|')
    print(format_result(r))
    return 0


if __name__ == '__main__':
    sys.exit(main())

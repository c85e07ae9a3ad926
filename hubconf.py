"""PyTorch Hub entry points, as YOLOv5's hubconf.py (nothing is downloaded: weights must be local files).

    import torch
    model = torch.hub.load('path/to/this/repo', 'custom', path='runs/train/exp/weights/best.pt', source='local')
    model = torch.hub.load('path/to/this/repo', 'yolov5_efficientvit', pretrained=False, classes=6, source='local')
    results = model('image.jpg'); results.print(); results.save()

``pretrained=True`` (YOLOv5's default) loads ``<name>.pt`` from the working directory or the repository root and
says so clearly when there is none; ``pretrained=False`` builds the model from its YAML with random weights.
``python hubconf.py --model yolov5n`` runs the model on the default images and prints the detections.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

dependencies = ['torch', 'torchvision', 'yaml', 'cv2', 'numpy', 'PIL', 'timm']  # checked by torch.hub.load

# entry point -> model YAML
MODELS = {'yolov5n': 'yolov5n.yaml', 'yolov5s': 'yolov5s.yaml', 'yolov5m': 'yolov5m.yaml',
          'yolov5l': 'yolov5l.yaml', 'yolov5x': 'yolov5x.yaml', 'yolov5_efficientvit': 'yolov5-efficientvit.yaml',
          **{f'yolov5_efficientvit_m{i}': f'yolov5-efficientvit-m{i}.yaml' for i in range(1, 6)}}


def _local_weights(name: str) -> Path | None:
    """``<name>.pt`` in the working directory, else in the repository root; None when neither has it."""
    return next((p for p in (Path(f'{name}.pt'), ROOT / f'{name}.pt') if p.is_file()), None)


def _create(name: str, pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
            verbose: bool = True, device=None):
    """Model ``name`` (a key of MODELS); local weights when ``pretrained``, moved to ``device``, AutoShape-wrapped."""
    from models.yolo import Model
    from utils.checkpoint.model import load_model, transfer_weights
    from utils.core.torch_utils import select_device
    from utils.inference.autoshape import AutoShape

    device = select_device('' if device is None else str(device))
    cfg = ROOT / 'models' / MODELS[name]
    if pretrained:
        weights = _local_weights(name)
        if weights is None:
            raise FileNotFoundError(f'{name}.pt not found in {Path.cwd()} or {ROOT}; nothing is downloaded: put the '
                                    f"file there, use custom(path='...'), or pretrained=False for random weights")
        model = load_model(weights, device='cpu', fuse=False)
        if classes != model.nc or channels != 3:  # a new head (or stem): keep every tensor that still fits
            src = model
            model = Model(cfg, ch=channels, nc=classes, verbose=verbose)
            transfer_weights(model, src.float().state_dict(), exclude=['anchor'], source=str(weights))
    else:
        model = Model(cfg, ch=channels, nc=classes, verbose=verbose)
    model = model.to(device)
    if autoshape and channels == 3:  # inference only: fused (BN folded, EfficientViT's fast path), as YOLOv5 fuses
        return AutoShape(model.fuse().eval(), verbose=verbose)
    return model


def custom(path: str | Path = 'path/to/model.pt', autoshape: bool = True, _verbose: bool = True, device=None):
    """A trained checkpoint (ours or an official YOLOv5 .pt): fused and AutoShape-wrapped for inference, or the
    plain (unfused, trainable) DetectionModel with ``autoshape=False``."""
    from utils.checkpoint.model import load_model
    from utils.core.torch_utils import select_device
    from utils.inference.autoshape import AutoShape

    model = load_model(path, device=select_device('' if device is None else str(device)), fuse=autoshape)
    return AutoShape(model, verbose=_verbose) if autoshape else model


def _entry(name: str):
    def entry(pretrained: bool = True, channels: int = 3, classes: int = 80, autoshape: bool = True,
              _verbose: bool = True, device=None):
        return _create(name, pretrained, channels, classes, autoshape, _verbose, device)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f'{MODELS[name]} (pretrained: local {name}.pt; else random weights from the YAML).'
    return entry


for _name in MODELS:
    globals()[_name] = _entry(_name)


def main(argv: list[str] | None = None) -> Path:
    """Run a model on the generated sample images, print the detections and save the annotated images."""
    import argparse

    from utils.core.logging import LOGGER
    from utils.data.config import IMG_FORMATS
    from utils.data.synthetic import ensure_sample_images

    p = argparse.ArgumentParser(description='PyTorch Hub demo: detect on the default images')
    p.add_argument('--model', default='yolov5n', choices=sorted(MODELS), help='entry point')
    p.add_argument('--source', default=str(ROOT / 'data/images'), help='directory of images (generated if empty)')
    opt = p.parse_args(argv)
    name = opt.model
    pretrained = _local_weights(name) is not None
    if not pretrained:
        LOGGER.warning(f'WARNING ⚠️ no local {name}.pt: random weights (expect no or random detections)')
    model = _create(name, pretrained=pretrained)
    src = Path(opt.source)
    images = sorted(f for f in src.glob('*.*') if f.suffix[1:].lower() in IMG_FORMATS)  # as detect.py lists a dir
    images = images or ensure_sample_images(src)  # detect.py's default source is generated the same way
    results = model(images, size=320)
    results.print()
    return results.save()


if __name__ == '__main__':
    from utils.cli import one_line_errors

    with one_line_errors('hubconf.py'):
        main()

"""Validate a trained detector on a dataset split (YOLOv5 v7.0 val.py flags, metrics and outputs).

Usage:
    python val.py --weights runs/train/exp/weights/best.pt --data data/shapes.yaml --img 640
    python val.py --weights best.onnx --data data/shapes.yaml --save-json   # also .torchscript, official YOLOv5 .pt
    python val.py --task study --weights a.pt b.pt --data data/shapes.yaml  # mAP and speed at 256..1536 px
"""
from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.cli import one_line_errors  # noqa: E402
from utils.core.argtypes import non_negative_int, positive_int, unit_interval  # noqa: E402
from utils.core.logging import LOGGER, colorstr, increment_path  # noqa: E402
from utils.core.sizes import check_img_size  # noqa: E402
from utils.core.torch_utils import select_device  # noqa: E402
from utils.data.coco import coco80_to_coco91_class, find_coco_annotations, is_coco  # noqa: E402
from utils.data.config import ConfigError, check_dataset  # noqa: E402
from utils.data.loader import create_dataloader  # noqa: E402
from utils.engine.evaluator import EvalOptions, Evaluator, validate  # noqa: E402
from utils.inference.backend import BackendError, DetectBackend  # noqa: E402
from utils.viz.charts import plot_val_study  # noqa: E402


def _check_classes(model: DetectBackend, data: dict, single_cls: bool) -> None:
    """The model's nc must equal the data nc unless --single-cls (YOLOv5's check for .pt models, as a one-line error;
    also for ONNX and OpenVINO files, whose output width says their nc: YOLOv5 skips them and val then ends in an
    IndexError from inside the metrics)."""
    ncm = model.nc
    if ncm is not None and not single_cls:
        if ncm != data['nc']:
            raise ConfigError(f'{model.weights} ({ncm} classes) trained on different --data than what you passed '
                              f'({data["nc"]} classes). Pass correct combination of --weights and --data that '
                              f'are trained together.')


def run(data: str | Path | dict = ROOT / 'data/shapes.yaml', weights: str | Path | list = 'yolov5s.pt',
        batch_size: int = 32, imgsz: int = 640, conf_thres: float = 0.001, iou_thres: float = 0.6,
        max_det: int = 300, task: str = 'val', device: str = '', workers: int = 8, single_cls: bool = False,
        augment: bool = False, verbose: bool = False, save_txt: bool = False, save_hybrid: bool = False,
        save_conf: bool = False, save_json: bool = False, project: str | Path = ROOT / 'runs/val',
        name: str = 'exp', exist_ok: bool = False, half: bool = True, dnn: bool = False, plots: bool = True,
        rect: bool | None = None, trust_weights: bool = False, anno_json: str | Path | None = None):
    """Validate ``weights`` on ``data[task]`` -> ((mp, mr, map50, map, 0, 0, 0), maps, times).

    ``rect`` (Python only; default: when the model takes any input size, i.e. .pt or a --dynamic ONNX) selects
    rectangular batches with pad 0.5, as YOLOv5 uses for .pt models; fixed-size exports run square images.
    ``trust_weights`` allows ``.torchscript`` files, which are programs (refused otherwise). ``anno_json``: the COCO
    annotation file pycocotools scores ``--save-json`` against (default: the split's own file when the dataset YAML
    gives it as ``{coco: ...}``, COCO's for COCO, else one built from the labels).
    """
    if save_hybrid:
        LOGGER.warning('WARNING ⚠️ --save-hybrid returns high mAP from hybrid labels, not from predictions alone')
    if conf_thres > 0.001:
        LOGGER.warning(f'WARNING ⚠️ confidence threshold {conf_thres} > 0.001 produces invalid results')
    if task == 'speed':  # speed benchmark: detect.py-like thresholds, square images, no json
        conf_thres, iou_thres, save_json = 0.25, 0.45, False
    device = select_device(device, batch_size=batch_size)
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
    (save_dir / 'labels' if save_txt or save_hybrid else save_dir).mkdir(parents=True, exist_ok=True)

    model = DetectBackend(weights, device=device, fp16=half, trust_weights=trust_weights)
    stride, pt = model.stride, model.pt
    imgsz = check_img_size(imgsz, s=stride)
    if model.static_shape and model.static_shape != (imgsz, imgsz):
        raise BackendError(f'{model.weights} was exported for {model.static_shape[0]}x{model.static_shape[1]} '
                           f'inputs; pass --imgsz {model.static_shape[0]} or export with --dynamic')
    if not pt:
        batch_size = 1
        LOGGER.info(f'Forcing --batch-size 1 square inference (1,3,{imgsz},{imgsz}) for non-PyTorch models')
    data = check_dataset(data)
    coco = is_coco(data)
    _check_classes(model, data, single_cls)
    model.warmup(imgsz=(1 if pt else batch_size, 3, imgsz, imgsz))
    pad, rect = (0.0, False) if task == 'speed' else (0.5, model.dynamic if rect is None else rect)
    split = task if task in ('train', 'val', 'test') else 'val'
    if not data.get(split):
        raise ConfigError(f'{data.get("yaml_file", "dataset")}: no {split!r} split defined')
    dataloader = create_dataloader(data[split], imgsz, batch_size, stride, single_cls, pad=pad, rect=rect,
                                   workers=workers, prefix=colorstr(f'{split}: '), nc=data['nc'], root=data['path'])[0]
    stem = Path(str(weights[0] if isinstance(weights, (list, tuple)) else weights)).stem
    options = EvalOptions(conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det, single_cls=single_cls,
                          half=half and device.type == 'cuda', augment=augment, save_dir=save_dir, plots=plots,
                          verbose=verbose, save_txt=save_txt, save_hybrid=save_hybrid, save_conf=save_conf,
                          save_json=save_json or coco, anno_json=_anno_json(anno_json, data, coco),
                          class_map=tuple(coco80_to_coco91_class()) if coco else None, json_name=stem)
    evaluator = Evaluator(model.names, options, dataset=dataloader.dataset, device=device)
    results = validate(model, dataloader, evaluator)
    return results.as_tuple(), results.maps, results.times


def _anno_json(anno_json: str | Path | None, data: dict, coco: bool) -> Path | None:
    if anno_json:
        if not Path(anno_json).is_file():
            raise ConfigError(f'--anno-json {anno_json}: file not found')
        return Path(anno_json)
    return find_coco_annotations(data) if coco else None


STUDY_SIZES = tuple(range(256, 1536 + 128, 128))  # YOLOv5's --task study image sizes


def study(weights: str | Path | list, data: str | Path | dict = ROOT / 'data/shapes.yaml',
          sizes: tuple[int, ...] | list[int] = STUDY_SIZES, project: str | Path = ROOT / 'runs/val', name: str = 'exp',
          exist_ok: bool = False, **kwargs) -> Path:
    """``--task study``: validate each weights file at every image size; returns the run directory.

    Writes, as YOLOv5 (but into the run directory, not the working directory): ``study_{data}_{weights}.txt`` per
    file (one row per size: P, R, mAP50, mAP50-95, three zero val losses, pre-process / inference / NMS ms per image),
    ``study.zip`` of them (Python's zipfile, no shell) and ``study.png``. A weights file that fails at some size is
    reported in one line and left out; the others still run. ``kwargs`` go to ``run`` (batch_size, conf_thres, ...).
    """
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
    save_dir.mkdir(parents=True, exist_ok=True)
    data_stem = Path(str(data.get('yaml_file', 'data'))).stem if isinstance(data, dict) else Path(str(data)).stem
    files = []
    for w in weights if isinstance(weights, (list, tuple)) else [weights]:
        file = save_dir / f'study_{data_stem}_{Path(str(w)).stem}.txt'
        rows = []
        try:
            for size in sizes:
                LOGGER.info(f'\nRunning {file.name} --imgsz {size}...')
                results, _, times = run(data=data, weights=w, imgsz=size, task='val', project=save_dir.parent,
                                        name=save_dir.name, exist_ok=True, plots=False, **kwargs)
                rows.append([*results, *times])
        except (BackendError, ConfigError, FileNotFoundError) as e:
            LOGGER.warning(f'WARNING ⚠️ study: {w} left out: {" ".join(str(e).split())}')
            continue
        np.savetxt(file, np.array(rows, dtype=np.float64), fmt='%10.4g')
        files.append(file)
    if not files:
        raise ConfigError('study: no weights file could be validated at every size')
    with zipfile.ZipFile(save_dir / 'study.zip', 'w') as z:
        for f in files:
            z.write(f, f.name)
    plot_val_study(files, list(sizes), save_dir / 'study.png')
    LOGGER.info(f"Study results saved to {colorstr('bold', str(save_dir))}")
    return save_dir


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """YOLOv5 v7.0 val.py flags."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', type=str, default=str(ROOT / 'data/shapes.yaml'), help='dataset.yaml path')
    p.add_argument('--weights', nargs='+', type=str, default='yolov5s.pt', help='model path(s)')
    p.add_argument('--batch-size', type=positive_int, default=32, help='batch size')
    p.add_argument('--imgsz', '--img', '--img-size', type=positive_int, default=640, help='inference size (pixels)')
    p.add_argument('--conf-thres', type=unit_interval, default=0.001, help='confidence threshold')
    p.add_argument('--iou-thres', type=unit_interval, default=0.6, help='NMS IoU threshold')
    p.add_argument('--max-det', type=positive_int, default=300, help='maximum detections per image')
    p.add_argument('--task', default='val', choices=('train', 'val', 'test', 'speed', 'study'),
                   help='split, speed, or study (mAP and speed at image sizes 256..1536)')
    p.add_argument('--device', default='', help='cuda device, i.e. 0 or 0,1,2,3 or cpu')
    p.add_argument('--workers', type=non_negative_int, default=8, help='max dataloader workers')
    p.add_argument('--single-cls', action='store_true', help='treat as single-class dataset')
    p.add_argument('--augment', action='store_true', help='augmented inference')
    p.add_argument('--verbose', action='store_true', help='report mAP by class')
    p.add_argument('--save-txt', action='store_true', help='save results to *.txt')
    p.add_argument('--save-hybrid', action='store_true', help='save label+prediction hybrid results to *.txt')
    p.add_argument('--save-conf', action='store_true', help='save confidences in --save-txt labels')
    p.add_argument('--save-json', action='store_true', help='save a COCO-JSON results file')
    p.add_argument('--anno-json', default=None,
                   help='COCO annotation file for --save-json (default: the dataset\'s own COCO JSON when it has one)')
    p.add_argument('--project', default=str(ROOT / 'runs/val'), help='save to project/name')
    p.add_argument('--name', default='exp', help='save to project/name')
    p.add_argument('--exist-ok', action='store_true', help='existing project/name ok, do not increment')
    p.add_argument('--half', action='store_true', help='use FP16 half-precision inference')
    p.add_argument('--dnn', action='store_true', help='accepted for compatibility; ONNX runs on onnxruntime')
    p.add_argument('--trust-weights', action='store_true',
                   help='allow .torchscript weights: TorchScript is code that runs on load; only files you trust')
    opt = p.parse_args(argv)
    opt.save_txt |= opt.save_hybrid
    return opt


def main(opt: argparse.Namespace) -> None:
    with one_line_errors('val.py'):
        if opt.task == 'study':
            study(**{k: v for k, v in vars(opt).items() if k not in ('task', 'imgsz')})
        else:
            run(**vars(opt))


if __name__ == '__main__':
    main(parse_opt())

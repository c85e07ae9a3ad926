"""Run a detector on images, videos, directories, globs, .txt lists, webcams and streams (YOLOv5 v7.0 detect.py).

Usage:
    python detect.py --weights best.pt --source data/images        # default source, generated when missing
    python detect.py --weights best.onnx --source video.mp4 --save-txt --save-crop
    python detect.py --weights best.pt --source 0                   # webcam
"""
from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from utils.cli import one_line_errors  # noqa: E402
from utils.core.argtypes import positive_int, unit_interval  # noqa: E402
from utils.core.logging import LOGGER, colorstr, increment_path  # noqa: E402
from utils.core.safety import inside, path_component  # noqa: E402
from utils.core.sizes import check_img_size  # noqa: E402
from utils.core.torch_utils import Timer, select_device  # noqa: E402
from utils.data.augmentations import letterbox  # noqa: E402
from utils.data.sources import Frame, SourceError, load_source  # noqa: E402
from utils.inference.backend import DetectBackend  # noqa: E402
from utils.ops.postprocess import postprocess, write_label_lines  # noqa: E402
from utils.viz.drawing import Annotator, colors, detection_summary, save_one_box  # noqa: E402
from utils.viz.features import features_saved  # noqa: E402
from utils.viz.imagefile import writable_name, write_image  # noqa: E402

DEFAULT_SOURCE = ROOT / 'data/images'


def _resolve_source(source: str | Path) -> str | Path:
    """The default ``data/images`` is generated on demand (a few synthetic scenes) when it is missing."""
    if Path(source).resolve() == DEFAULT_SOURCE.resolve() and not any(DEFAULT_SOURCE.glob('*.*')):
        from utils.data.synthetic import ensure_sample_images

        ensure_sample_images(DEFAULT_SOURCE)
    return source


def preprocess(im0: np.ndarray, imgsz: tuple[int, int], stride: int, auto: bool, device: torch.device,
               fp16: bool) -> torch.Tensor:
    """BGR HWC uint8 -> letterboxed RGB (1, 3, h, w) in [0, 1] (minimum rectangle when ``auto``)."""
    im = letterbox(im0, imgsz, stride=stride, auto=auto)[0]
    im = np.ascontiguousarray(im.transpose((2, 0, 1))[::-1])
    im = torch.from_numpy(im).to(device)
    return (im.half() if fp16 else im.float())[None] / 255


class _VideoSink:
    """One cv2.VideoWriter per output path (mp4v ``.mp4``), opened on the first frame of each video or stream. A
    writer OpenCV cannot open (no encoder, directory not writable) is one warning; that video's frames are dropped."""

    def __init__(self):
        self.writers: dict[str, cv2.VideoWriter | None] = {}

    def write(self, save_path: Path, im: np.ndarray, fps: float) -> bool:
        """False once, on the first frame of a video whose file could not be opened."""
        key = str(save_path.with_suffix('.mp4'))
        if key not in self.writers:
            h, w = im.shape[:2]
            writer = cv2.VideoWriter(key, cv2.VideoWriter_fourcc(*'mp4v'), fps or 30.0, (w, h))
            self.writers[key] = writer if writer.isOpened() else None
            if self.writers[key] is None:
                LOGGER.warning(f'WARNING ⚠️ could not open {key} for writing (OpenCV VideoWriter); frames not saved')
                return False
        if self.writers[key] is not None:
            self.writers[key].write(im)
        return True

    def close(self) -> None:
        for w in self.writers.values():
            if w is not None:
                w.release()
        self.writers = {}


def _save_frame(frame: Frame, im0: np.ndarray, save_dir: Path, sink: _VideoSink) -> bool:
    """The annotated image (under the source's name; ``.jpg`` for formats OpenCV reads but cannot write, such as
    ``.dng`` and ``.mpo``) or the next frame of the annotated video. False, with a warning, when nothing was written."""
    save_path = inside(save_dir, save_dir / path_component(Path(frame.path).name))
    if frame.kind != 'image':
        return sink.write(save_path, im0, frame.meta.get('fps', 30.0))
    try:
        write_image(writable_name(save_path), im0)
        return True
    except OSError as e:
        LOGGER.warning(f'WARNING ⚠️ {e}')
        return False


def _handle_detections(frame: Frame, det: torch.Tensor, names: dict, save_dir: Path,
                       opt: dict) -> tuple[np.ndarray, int]:
    """Write labels and crops, draw boxes; returns the annotated image and the number of crops that could not be
    written (each one a warning; the others are still written).

    Class and file names become one path component each (``path_component``) and every file is checked to lie
    inside ``save_dir``: a class named ``../../x`` from weights or a YAML writes ``crops/.._.._x/``, not ``../../x``."""
    im0, p = frame.im0, Path(frame.path)
    imc = im0.copy() if opt['save_crop'] else im0
    stem = path_component(p.stem if frame.kind == 'image' else f'{p.stem}_{frame.frame}')
    if opt['save_txt']:  # YOLOv5 writes them from the last detection to the first
        write_label_lines(save_dir / 'labels' / f'{stem}.txt', det.flip(0), im0.shape[:2], opt['save_conf'])
    annotator = Annotator(im0, line_width=opt['line_thickness'], example=str(names))
    unwritten = 0
    for *xyxy, conf, cls in reversed(det.tolist()):
        c = int(cls)
        if opt['save_img'] or opt['save_crop'] or opt['view_img']:
            label = None if opt['hide_labels'] else (names[c] if opt['hide_conf'] else f'{names[c]} {conf:.2f}')
            annotator.box_label(xyxy, label, color=colors(c, True))
        if opt['save_crop']:
            crop = inside(save_dir, save_dir / 'crops' / path_component(names[c]) / f'{path_component(p.stem)}.jpg')
            try:
                save_one_box(torch.tensor(xyxy), imc, file=crop, BGR=True)
            except OSError as e:
                LOGGER.warning(f'WARNING ⚠️ {e}')
                unwritten += 1
    return annotator.result(), unwritten


def _show(window: str, im: np.ndarray, state: dict) -> None:
    """cv2.imshow when a display exists; headless OpenCV builds get one warning and no window."""
    if state.get('no_display'):
        return
    try:
        cv2.imshow(window, im)
        cv2.waitKey(1)
    except cv2.error:
        state['no_display'] = True
        LOGGER.warning('WARNING ⚠️ --view-img needs an OpenCV build with a display; images are not shown')


def _load_model(weights, data: str | Path | None, device: torch.device, half: bool, trust_weights: bool,
                imgsz: int | tuple | list) -> tuple[DetectBackend, tuple[int, int]]:
    """The backend (class names from ``data`` when the weights carry none) and the inference size it runs at (the
    export's fixed shape, else ``imgsz`` rounded up to the stride), warmed up."""
    data_dict = None
    if data:
        from utils.data.config import check_dataset

        data_dict = check_dataset(data, autogenerate=False)
    model = DetectBackend(weights, device=device, fp16=half, data=data_dict, trust_weights=trust_weights)
    imgsz = [imgsz] * 2 if isinstance(imgsz, int) else list(imgsz) * (2 if len(imgsz) == 1 else 1)
    imgsz = model.static_shape or tuple(check_img_size(imgsz, s=model.stride))
    model.warmup(imgsz=(1, 3, *imgsz))
    return model, imgsz


def run(weights: str | Path | list = 'yolov5s.pt', source: str | Path = DEFAULT_SOURCE, data: str | Path | None = None,
        imgsz: int | tuple | list = (640, 640), conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 1000,
        device: str = '', view_img: bool = False, save_txt: bool = False, save_conf: bool = False,
        save_crop: bool = False, nosave: bool = False, classes: list[int] | None = None, agnostic_nms: bool = False,
        augment: bool = False, visualize: bool = False, update: bool = False,
        project: str | Path = ROOT / 'runs/detect', name: str = 'exp', exist_ok: bool = False,
        line_thickness: int = 3, hide_labels: bool = False, hide_conf: bool = False, half: bool = False,
        dnn: bool = False, vid_stride: int = 1, trust_weights: bool = False) -> Path:
    """Detect objects in ``source`` with ``weights``; returns the run directory (runs/detect/exp{N}).

    ``trust_weights`` allows ``.torchscript`` files, which are programs (refused otherwise)."""
    source = _resolve_source(source)
    save_img = not nosave and not str(source).endswith('.txt')
    dataset = load_source(source, vid_stride=vid_stride)
    save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
    (save_dir / 'labels' if save_txt else save_dir).mkdir(parents=True, exist_ok=True)

    device = select_device(device)
    model, imgsz = _load_model(weights, data, device, half, trust_weights, imgsz)
    stride, names = model.stride, model.names
    if visualize and (not model.pt or model.ensemble):
        LOGGER.warning(f'WARNING ⚠️ --visualize needs one PyTorch .pt model; {model.weights.name} runs without it')
        visualize = False
    opt = dict(save_txt=save_txt, save_conf=save_conf, save_crop=save_crop, save_img=save_img, view_img=view_img,
               line_thickness=line_thickness, hide_labels=hide_labels, hide_conf=hide_conf)
    dt, seen, sink, display = (Timer(device), Timer(device), Timer(device)), 0, _VideoSink(), {}
    unwritten = 0  # images, videos and crops that could not be written (each one warned about)
    frames, interrupted = iter(dataset), False
    try:
        for frame in frames:
            with dt[0]:
                im = preprocess(frame.im0, imgsz, stride, model.dynamic, device, model.fp16)
            with dt[1]:
                t = dt[1].t
                maps = nullcontext()
                if visualize:
                    vis = inside(save_dir, save_dir / path_component(Path(frame.path).stem))
                    maps = features_saved(model.model, increment_path(vis, mkdir=True))
                with maps:
                    pred = model(im, augment=augment)
            with dt[2]:
                det = postprocess(pred, im.shape[2:], [frame.im0.shape], conf_thres=conf_thres, iou_thres=iou_thres,
                                  classes=classes, agnostic=agnostic_nms, max_det=max_det).detections[0]
            seen += 1
            det[:, :4] = det[:, :4].round()
            s = f'{frame.describe()} %gx%g ' % im.shape[2:] + detection_summary(det, names)
            im0, n = _handle_detections(frame, det.cpu(), names, save_dir, opt)
            unwritten += n
            if view_img:
                _show(str(frame.path), im0, display)
            if save_img:
                unwritten += not _save_frame(frame, im0, save_dir, sink)
            LOGGER.info(f"{s}{'' if len(det) else '(no detections), '}{(dt[1].t - t) * 1e3:.1f}ms")
    except KeyboardInterrupt:  # Ctrl-C is how a webcam or stream run ends: close the files, print the summary
        interrupted = True
        LOGGER.info(f'\nInterrupted (Ctrl-C) after {seen} images/frames; the files written so far are kept')
    finally:
        close = getattr(frames, 'close', None)  # a generator: a stream's reader threads stop here
        if close:
            close()
        sink.close()  # an open video is finalised, playable up to its last frame
    if seen == 0:
        if interrupted:
            raise KeyboardInterrupt
        raise SourceError(f'no readable images or videos in {source}')
    times = tuple(x.t / seen * 1e3 for x in dt)
    LOGGER.info(f'Speed: %.1fms pre-process, %.1fms inference, %.1fms NMS per image at shape {(1, 3, *imgsz)}'
                % times)
    if save_txt or save_img:
        n = len(list(save_dir.glob('labels/*.txt')))
        s = f"\n{n} label{'s' * (n != 1)} saved to {save_dir / 'labels'}" if save_txt else ''
        LOGGER.info(f"Results saved to {colorstr('bold', str(save_dir))}{s}")
    if unwritten:
        LOGGER.warning(f"WARNING ⚠️ {unwritten} file{'s' * (unwritten != 1)} could not be written, see the warnings")
    if update:
        from utils.checkpoint.model import strip_optimizer

        strip_optimizer(weights[0] if isinstance(weights, (list, tuple)) else weights)
    return save_dir


def parse_opt(argv: list[str] | None = None) -> argparse.Namespace:
    """YOLOv5 v7.0 detect.py flags."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--weights', nargs='+', type=str, default='yolov5s.pt', help='model path(s)')
    p.add_argument('--source', type=str, default=str(DEFAULT_SOURCE),
                   help='file/dir/URL/glob/.txt/.streams, 0 for webcam')
    p.add_argument('--data', type=str, default=None, help='(optional) dataset.yaml for class names')
    p.add_argument('--imgsz', '--img', '--img-size', nargs='+', type=positive_int, default=[640],
                   help='inference size h,w')
    p.add_argument('--conf-thres', type=unit_interval, default=0.25, help='confidence threshold')
    p.add_argument('--iou-thres', type=unit_interval, default=0.45, help='NMS IoU threshold')
    p.add_argument('--max-det', type=positive_int, default=1000, help='maximum detections per image')
    p.add_argument('--device', default='', help='cuda device, i.e. 0 or 0,1,2,3 or cpu')
    p.add_argument('--view-img', action='store_true', help='show results')
    p.add_argument('--save-txt', action='store_true', help='save results to *.txt')
    p.add_argument('--save-conf', action='store_true', help='save confidences in --save-txt labels')
    p.add_argument('--save-crop', action='store_true', help='save cropped prediction boxes')
    p.add_argument('--nosave', action='store_true', help='do not save images/videos')
    p.add_argument('--classes', nargs='+', type=int, help='filter by class: --classes 0, or --classes 0 2 3')
    p.add_argument('--agnostic-nms', action='store_true', help='class-agnostic NMS')
    p.add_argument('--augment', action='store_true', help='augmented inference')
    p.add_argument('--visualize', action='store_true', help='save every layer\'s feature maps (.pt models)')
    p.add_argument('--update', action='store_true', help='strip the optimizer from the weights file')
    p.add_argument('--project', default=str(ROOT / 'runs/detect'), help='save results to project/name')
    p.add_argument('--name', default='exp', help='save results to project/name')
    p.add_argument('--exist-ok', action='store_true', help='existing project/name ok, do not increment')
    p.add_argument('--line-thickness', default=3, type=positive_int, help='bounding box thickness (pixels)')
    p.add_argument('--hide-labels', default=False, action='store_true', help='hide labels')
    p.add_argument('--hide-conf', default=False, action='store_true', help='hide confidences')
    p.add_argument('--half', action='store_true', help='use FP16 half-precision inference')
    p.add_argument('--dnn', action='store_true', help='accepted for compatibility; ONNX runs on onnxruntime')
    p.add_argument('--vid-stride', type=positive_int, default=1, help='video frame-rate stride')
    p.add_argument('--trust-weights', action='store_true',
                   help='allow .torchscript weights: TorchScript is code that runs on load; only files you trust')
    opt = p.parse_args(argv)
    opt.imgsz *= 2 if len(opt.imgsz) == 1 else 1
    return opt


def main(opt: argparse.Namespace) -> None:
    with one_line_errors('detect.py'):
        run(**vars(opt))


if __name__ == '__main__':
    main(parse_opt())

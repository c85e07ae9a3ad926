"""Train a YOLOv5 detector (EfficientViT or CSP-Darknet backbone) on a YOLO-format dataset.

Same flags, defaults and outputs as YOLOv5 v7.0's train.py, except: nothing is ever downloaded (``--weights`` must be a
local file), ``--data`` defaults to the embedded shapes dataset and ``--cfg`` to the EfficientViT-M0 model, and
``--time`` (YOLOv8's) trains for a wall-clock budget with an epoch count ``--epochs`` reproduces.

Usage:
    python train.py --data data/shapes.yaml --cfg models/yolov5-efficientvit.yaml --epochs 100 --img 640
    python train.py --weights path/to/yolov5s.pt --cfg models/yolov5s.yaml       # fine-tune official weights
    python train.py --resume runs/train/exp/weights/last.pt                      # continue a killed run
    python train.py --time 0.5       # as many epochs as fit half an hour (decided after epoch 0; printed)
    python train.py --epochs 10 --evolve 30        # 30 generations of hyperparameter evolution -> runs/evolve/exp
    python -m torch.distributed.run --nproc_per_node 2 train.py --batch 16 --device 0,1   # DDP (gloo with cpu)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # entry point: make the repository importable when run from elsewhere

from utils.core.argtypes import (  # noqa: E402
    non_negative_int,
    positive_float,
    positive_int,
    train_batch_size,
    unit_interval,
)
from utils.engine.options import (  # noqa: E402  (no torch: --help stays fast)
    DEFAULT_CFG,
    DEFAULT_DATA,
    DEFAULT_HYP,
    DEFAULT_PROJECT,
    EVOLVE_PROJECT,
    OPTIMIZERS,
    YOLOV5_DEFAULTS,
)

__all__ = ['parse_opt', 'main', 'run', 'cli', 'DEFAULT_CFG', 'DEFAULT_DATA', 'DEFAULT_HYP', 'DEFAULT_PROJECT',
           'EVOLVE_PROJECT', 'OPTIMIZERS', 'YOLOV5_DEFAULTS']


def parse_opt(known: bool = False, args: list[str] | None = None) -> argparse.Namespace:
    """YOLOv5 v7.0's train.py flags (logger flags accepted and ignored). ``known`` ignores unknown arguments."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--weights', type=str, default='', help="initial weights path ('' = from scratch; no downloads)")
    p.add_argument('--cfg', type=str, default=DEFAULT_CFG, help="model.yaml path (with --weights only: their own YAML)")
    p.add_argument('--data', type=str, default=DEFAULT_DATA, help='dataset.yaml path')
    p.add_argument('--hyp', type=str, default=None, help=f'hyperparameters path (default {DEFAULT_HYP})')
    p.add_argument('--epochs', type=positive_int, default=None, help='total training epochs (default 100)')
    p.add_argument('--time', type=positive_float, default=None,
                   help='hours to train for: the epoch count that fits, decided after epoch 0 and revised if the '
                        'pace changes (instead of --epochs)')
    p.add_argument('--batch-size', type=train_batch_size, default=None,
                   help='total batch size for all GPUs (default 16; -1 for AutoBatch)')
    p.add_argument('--imgsz', '--img', '--img-size', type=positive_int, default=None,
                   help='train, val image size (pixels) (default 640)')
    p.add_argument('--rect', action='store_true', help='rectangular training')
    p.add_argument('--resume', nargs='?', const=True, default=False, help='resume most recent training')
    p.add_argument('--nosave', action='store_true', help='only save final checkpoint')
    p.add_argument('--noval', action='store_true', help='only validate final epoch')
    p.add_argument('--noautoanchor', action='store_true', help='disable AutoAnchor')
    p.add_argument('--noplots', action='store_true', help='save no plot files')
    p.add_argument('--evolve', type=int, nargs='?', const=300, help='evolve hyperparameters for x generations')
    p.add_argument('--bucket', type=str, default='', help='gsutil bucket (unused: no uploads)')
    p.add_argument('--cache', type=str, nargs='?', const='ram',
                   help="image --cache ram/disk (off: no cache, overriding the dataset's train_defaults)")
    p.add_argument('--image-weights', action='store_true', help='use weighted image selection for training')
    p.add_argument('--device', default='', help='cuda device, i.e. 0 or 0,1,2,3 or cpu')
    p.add_argument('--multi-scale', action='store_true', help='vary img-size +/- 50%%')
    p.add_argument('--single-cls', action='store_true', help='train multi-class data as single-class')
    p.add_argument('--optimizer', type=str, choices=OPTIMIZERS, default=None, help='optimizer (default SGD)')
    p.add_argument('--sync-bn', action='store_true', help='use SyncBatchNorm, only available in DDP mode')
    p.add_argument('--workers', type=non_negative_int, default=8, help='max dataloader workers (per RANK in DDP mode)')
    p.add_argument('--project', default=DEFAULT_PROJECT, help='save to project/name (runs/evolve with --evolve)')
    p.add_argument('--name', default='exp', help='save to project/name')
    p.add_argument('--exist-ok', action='store_true', help='existing project/name ok, do not increment')
    p.add_argument('--quad', action='store_true', help='quad dataloader')
    p.add_argument('--cos-lr', action='store_true', help='cosine LR scheduler')
    p.add_argument('--label-smoothing', type=unit_interval, default=0.0, help='Label smoothing epsilon')
    p.add_argument('--patience', type=int, default=None,
                   help='EarlyStopping patience (epochs without improvement) (default 100)')
    p.add_argument('--freeze', nargs='+', type=int, default=[0], help='Freeze layers: backbone=10, first3=0 1 2')
    p.add_argument('--save-period', type=int, default=-1, help='Save checkpoint every x epochs (disabled if < 1)')
    p.add_argument('--seed', type=int, default=0, help='Global training seed')
    p.add_argument('--no-amp', action='store_true',
                   help='train in float32 (default: fp16 AMP on CUDA, bf16 autocast on CPUs with AMX or AVX-512 BF16)')
    p.add_argument('--local_rank', type=int, default=-1, help='Automatic DDP Multi-GPU argument, do not modify')
    # Logger arguments of v7.0 (W&B / ClearML): accepted for compatibility, not used.
    p.add_argument('--entity', default=None, help='Entity (unused)')
    p.add_argument('--upload_dataset', nargs='?', const=True, default=False, help='Upload data (unused)')
    p.add_argument('--bbox_interval', type=int, default=-1, help='Set bounding-box image logging interval (unused)')
    p.add_argument('--artifact_alias', type=str, default='latest', help='Version of dataset artifact (unused)')
    return p.parse_known_args(args)[0] if known else p.parse_args(args)


def main(opt: argparse.Namespace) -> Path:
    """Build the options once (utils.engine.options.build_options: --evolve conventions, --resume's opt.yaml or the
    dataset's train_defaults, --cfg from --weights, files and the hyp checked), then train; returns the run dir.

    --weights with --cfg left at its default trains the architecture stored in the weights (so fine-tuning
    yolov5s.pt stays a yolov5s); pass --cfg explicitly to build another model and transfer what matches.
    """
    from utils.engine.launch import train
    from utils.engine.options import build_options

    return train(build_options(opt))


def run(**kwargs) -> Path:
    """Python API: ``train.run(data='data.yaml', cfg='yolov5n.yaml', epochs=1, imgsz=64)``; returns the run dir."""
    opt = parse_opt(True, args=[])
    for k, v in kwargs.items():
        if not hasattr(opt, k):
            raise TypeError(f'train.run() got an unknown option {k!r}')
        setattr(opt, k, v)
    return main(opt)


def cli(args: list[str] | None = None) -> None:
    """Command line: expected problems (bad files, finished checkpoints) end with one line, not a traceback."""
    from utils.cli import one_line_errors
    from utils.engine.options import TrainError, TrainInterrupted

    with one_line_errors('train.py', own=(TrainError,), show_type=True):
        try:
            main(parse_opt(args=args))
        except TrainInterrupted as e:  # Ctrl-C: what was kept, and the shell's exit status for SIGINT
            from utils.engine.distributed import dist_info

            if dist_info().is_main:  # DDP: every rank is interrupted; one line is enough
                print(f'\ntrain.py: {e}', file=sys.stderr)
            sys.exit(130)


if __name__ == '__main__':
    cli()

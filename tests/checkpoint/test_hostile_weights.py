"""Hostile weights (issue 11, items 1, 3, 4, 5): each test builds the file itself and shows that no code runs, nothing
is written outside the run directory, memory stays bounded (RLIMIT_AS in a subprocess) and the user gets one line
naming the file and the problem."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import detect
import hubconf
import train
import val
from models.yolo import DetectionModel, ModelConfigError
from tests import hostile as H
from tests.commands.test_export import make_checkpoint, make_model
from tests.helpers import write_dataset
from utils.checkpoint.format import CheckpointError, load_checkpoint, save_checkpoint
from utils.inference.backend import BackendError, DetectBackend

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def model():
    return make_model('yolov5n.yaml')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp('data'), n_train=2, n_val=2, nc=2, imgsz=64)


def one_line(msg: str, path: Path, text: str) -> None:
    """The message is one line, names the file and says what is wrong."""
    assert '\n' not in msg and str(path.name) in msg and text in msg, msg


# ------------------------------------------------------------------------------------------------ 1: TorchScript
def test_torchscript_is_refused_unless_trusted(tmp_path, data):
    marker = tmp_path / 'marker'
    ts = H.evil_torchscript(tmp_path / 'evil.torchscript', marker)
    with pytest.raises(BackendError, match=r'evil\.torchscript: refused: a \.torchscript file is a program'):
        DetectBackend(ts)
    for cli, argv in ((detect, ['--source', str(data.parent / 'images' / 'val')]), (val, ['--data', str(data)])):
        with pytest.raises(SystemExit) as e:
            cli.main(cli.parse_opt(['--weights', str(ts), '--project', str(tmp_path / 'runs'), *argv]))
        one_line(str(e.value.code), ts, '--trust-weights')
    renamed = tmp_path / 'evil.pt'  # the same archive under our extension: torch.load never dispatches to jit
    renamed.write_bytes(ts.read_bytes())
    for load in (load_checkpoint, lambda p: hubconf.custom(path=p, _verbose=False)):
        with pytest.raises(CheckpointError, match=r'evil\.pt: refused: this is a TorchScript archive'):
            load(renamed)
    assert not marker.exists()  # no code ran
    DetectBackend(ts, trust_weights=True)  # the opt-in does load it, and the file really does write on load
    assert marker.exists()


# ------------------------------------------------------------------------------------------------ 4: pickle bombs
@pytest.mark.parametrize('build, text', [
    (lambda d, mp: H.bytearray_bomb(d / 'bytearray.pt'), 'calls builtins.bytearray(...)'),
    (lambda d, mp: H.conv_bomb(d / 'conv.pt'), 'calls torch.nn.modules.conv.Conv2d(...)'),
    (lambda d, mp: H.zero_stride_view(d / 'view.pt', mp), 'tensor views address 1,600,000,000 elements'),
    (lambda d, mp: H.shared_names_checkpoint(d / 'names.pt'), 'over 5,000,000 values once shared'),
])
def test_pickle_bombs_are_refused_before_loading(tmp_path, monkeypatch, build, text):
    path = build(tmp_path, monkeypatch)
    assert path.stat().st_size < 3000  # a few hundred bytes that ask for gigabytes
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    one_line(str(e.value), path, text)


def test_code_naming_pickle_is_refused_before_any_call(tmp_path):
    marker = tmp_path / 'pwned'
    pkl = H.ckpt_dict(H.glob('posix', 'system') + H.s(f'touch {marker}') + H.TUPLE1 + H.REDUCE)
    path = H.torch_archive(tmp_path / 'system.pt', pkl)
    with pytest.raises(CheckpointError, match=r'system\.pt: refused: the pickle names posix\.system'):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize('change, text', [
    ({'width_multiple': 16.0}, 'parameters'),  # 26.7 GiB asked for
    ({'depth_multiple': 1e6}, 'repeats after depth_multiple, over the limit of 100'),
    ({'nc': 10**6}, 'nc 1000000 is over the limit of 4096'),
    ({'head_upsample': [None, 1e6, 'nearest']}, 'scale_factor must be a number in (0, 8]'),
    ({'head_upsample': ['x', 'y', 'z']}, 'expected [None, scale_factor, mode]'),
    ({'head_upsample': [None, 2, 'cubic-spline']}, 'mode must be one of'),
])
def test_model_yaml_bounds(model, change, text):
    cfg = dict(model.yaml, **{k: v for k, v in change.items() if k != 'head_upsample'})
    if 'head_upsample' in change:
        cfg['head'] = [list(r) for r in cfg['head']]
        cfg['head'][1] = [-1, 1, 'nn.Upsample', change['head_upsample']]
    with pytest.raises(ModelConfigError) as e:
        DetectionModel(cfg, verbose=False)
    assert text in str(e.value) and '\n' not in str(e.value)


# ------------------------------------------------------------------------------------------ 5: one place, one line
def _fields(model):
    upsample = dict(model.yaml, head=[list(r) for r in model.yaml['head']])
    upsample['head'][1] = [-1, 1, 'nn.Upsample', [None, 'x', 'nearest']]
    return [
        ({'names': 5}, "field 'names' must be names, got int"),
        ({'names': {0: 'a', 1: ['b', ['c']]}}, 'class names must be strings, got list'),
        ({'names': {0: 'a'}}, '1 class names for a model with nc=2'),
        ({'hyp': ['lr0', 0.01]}, "field 'hyp' must be a mapping, got list"),
        ({'hyp': {'lr0': 'fast'}}, "hyperparameter 'lr0' must be a number"),
        ({'opt': 'x'}, "field 'opt' must be a mapping, got str"),
        ({'epoch': '3'}, "field 'epoch' must be an integer, got str"),
        ({'format_version': '1'}, "field 'format_version' must be an integer, got str"),
        ({'model': {'w': [1.0]}}, "field 'model' must map names to tensors"),
        ({'model_yaml': upsample}, 'scale_factor must be a number'),
    ]


@pytest.mark.parametrize('k', range(10))
def test_train_weights_with_malformed_fields_is_one_line(model, data, tmp_path, k):
    change, text = _fields(model)[k]
    path = save_checkpoint(H.our_checkpoint(model, **change), tmp_path / 'bad.pt')
    with pytest.raises(SystemExit) as e:
        train.cli(['--weights', str(path), '--data', str(data), '--epochs', '1', '--imgsz', '64', '--workers', '0',
                   '--device', 'cpu', '--project', str(tmp_path / 'runs'), '--noplots'])
    msg = str(e.value.code)
    assert msg.startswith('train.py: CheckpointError: ') and text in msg and '\n' not in msg, msg


def test_names_shorter_than_nc_and_a_million_names(model, data, tmp_path):
    short = save_checkpoint(H.our_checkpoint(model, names={0: 'a'}), tmp_path / 'short.pt')
    with pytest.raises(SystemExit) as e:
        detect.main(detect.parse_opt(['--weights', str(short), '--source', str(data.parent / 'images' / 'val'),
                                      '--project', str(tmp_path / 'runs')]))
    one_line(str(e.value.code), short, '1 class names for a model with nc=2; need exactly 2')
    many = save_checkpoint(H.our_checkpoint(model, names=['c'] * 10**6), tmp_path / 'many.pt')
    with pytest.raises(SystemExit) as e:  # was a 7 TiB confusion matrix
        val.main(val.parse_opt(['--weights', str(many), '--data', str(data), '--project', str(tmp_path / 'runs')]))
    one_line(str(e.value.code), many, '1000000 class names, over the limit of 4096')


def test_onnx_metadata_and_external_data(tmp_path):
    good = H.tiny_onnx(tmp_path / 'good.onnx', {'stride': '32', 'names': json.dumps({'0': 'a', '1': 'b'})})
    b = DetectBackend(good)
    assert (b.stride, b.names, b.nc) == (32, {0: 'a', 1: 'b'}, 2)
    (tmp_path / 'secret.bin').write_bytes(b'\x00' * 16)
    cases = [
        (H.tiny_onnx(tmp_path / 'stride0.onnx', {'stride': '0'}), "stride '0' must be an integer in 1..256"),
        (H.tiny_onnx(tmp_path / 'short.onnx', {'names': "{0: 'a'}"}), '1 class names for a model with nc=2'),
        (H.tiny_onnx(tmp_path / 'm' / 'ext.onnx' if (tmp_path / 'm').mkdir() is None else None, {},
                     external='../secret.bin'), "tensor 'w' references external data"),
        (H.tiny_onnx(tmp_path / 'sparse.onnx', {}, sparse=True), 'holds sparse initializers'),
    ]
    for path, text in cases:
        with pytest.raises(BackendError) as e:
            DetectBackend(path)
        one_line(str(e.value), path, text)
    # a graph that fails at run time (here: an input size it was not made for) is one line, not ORT's traceback
    with pytest.raises(BackendError) as e:
        b(torch.zeros(1, 3, 64, 64))
    one_line(str(e.value), good, 'ONNX Runtime failed on a (1, 3, 64, 64) input: [ONNXRuntimeError]')


# ------------------------------------------------------------------------------------------------ 3: names as paths
def test_class_names_never_become_paths(model, tmp_path):
    escape_rel, escape_abs = tmp_path / 'escaped', tmp_path / 'abs_escape'
    names = {0: '../../../escaped', 1: str(escape_abs)}
    weights = make_checkpoint(model, tmp_path / 'w' / 'names.pt', names=names)
    src = tmp_path / 'src'
    src.mkdir()
    from tests.commands.test_export import write_images
    write_images(src, n=2)
    run = detect.run(weights=weights, source=src, imgsz=[64], conf_thres=0.3, save_crop=True, save_txt=True,
                     project=tmp_path / 'p' / 'q', name='exp')
    crops = sorted(p.name for p in (run / 'crops').iterdir())
    assert crops and set(crops) <= {'.._.._.._escaped', str(escape_abs).replace('/', '_')}, crops
    written = [p for p in tmp_path.rglob('*') if p.is_file() and 'src' not in p.parts and 'w' not in p.parts]
    assert written and all(run in p.parents for p in written), written
    assert not escape_rel.exists() and not escape_abs.exists()


# ------------------------------------------------------------------------------------------------ memory bounds
CHILD = textwrap.dedent('''
    import json, resource, sys
    sys.path.insert(0, sys.argv[2])
    import torch
    import detect
    from utils.checkpoint.format import load_checkpoint, _allow_list, _official_state
    from utils.checkpoint.model import load_model
    from utils.data.config import check_dataset
    from utils.data.label_cache import load_cache
    f = json.loads(sys.argv[1])
    detect.run(weights=f['weights'], source=f['good'], imgsz=[64], project=f['runs'], name='warm')  # warm-up
    vm = int(next(x for x in open('/proc/self/status') if x.startswith('VmSize')).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, vm + 2**30))  # 1 GiB above what the warm process maps

    def attempt(tag, fn):
        try:
            out = fn()
            print(tag, 'OK', out if isinstance(out, (int, str, type(None))) else type(out).__name__)
        except MemoryError:
            print(tag, 'MemoryError')
        except Exception as e:
            print(tag, type(e).__name__, ' '.join(str(e).split())[:300])

    for tag in ('bytearray', 'conv', 'view', 'names'):
        attempt(tag, lambda: load_checkpoint(f[tag]))
    for tag in ('width', 'depth'):
        attempt(tag, lambda: load_model(f[tag]))
    attempt('yaml', lambda: check_dataset(f['yaml']))
    attempt('cache', lambda: load_cache(f['cache']))
    attempt('detect', lambda: len(list(detect.run(weights=f['weights'], source=f['images'], imgsz=[64],
                                                  project=f['runs'], name='bad').glob('im*.png'))))
    # controls: without the checks, the same files exceed the limit (so these tests can fail)
    with torch.serialization.safe_globals(_allow_list()):
        for tag in ('bytearray', 'conv'):
            attempt('control-' + tag, lambda: torch.load(f[tag], weights_only=True))
        attempt('control-view', lambda: _official_state(torch.load(f['view'], weights_only=True)['model'], 'x'))
''')


def test_memory_stays_bounded_under_rlimit(model, tmp_path, monkeypatch):
    from tests.commands.test_export import write_images
    good = write_images(tmp_path / 'good', n=2)
    images = write_images(tmp_path / 'images', n=2)
    H.lying_jpeg(images / 'huge.jpg')
    H.lying_png(images / 'huge.png')
    (tmp_path / 'bomb.yaml').write_text(H.alias_bomb() + 'path: .\ntrain: a\nval: a\nnames: *l8\n')
    import zipfile
    with zipfile.ZipFile(tmp_path / 'bomb.cache', 'w', zipfile.ZIP_DEFLATED) as z:
        z.writestr('labels.npy', H.npy_header_only())
    f = {
        'weights': str(make_checkpoint(model, tmp_path / 'ok.pt')), 'good': str(good), 'images': str(images),
        'runs': str(tmp_path / 'runs'), 'yaml': str(tmp_path / 'bomb.yaml'), 'cache': str(tmp_path / 'bomb.cache'),
        'bytearray': str(H.bytearray_bomb(tmp_path / 'bytearray.pt')), 'conv': str(H.conv_bomb(tmp_path / 'conv.pt')),
        'view': str(H.zero_stride_view(tmp_path / 'view.pt', monkeypatch)),
        'names': str(H.shared_names_checkpoint(tmp_path / 'names.pt')),
        **{k: str(save_checkpoint(H.our_checkpoint(model, model={}, model_yaml=dict(model.yaml, **v)), tmp_path / k))
           for k, v in (('width', {'width_multiple': 16.0}), ('depth', {'depth_multiple': 1e6}))},
    }
    r = subprocess.run([sys.executable, '-c', CHILD, json.dumps(f), str(ROOT)], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
    got = {line.split(' ', 1)[0]: line.split(' ', 1)[1] for line in r.stdout.splitlines()
           if line.split(' ', 1)[0] in {*f, 'detect', 'control-bytearray', 'control-conv', 'control-view'}}
    assert r.returncode == 0, r.stderr[-3000:]
    expect = {'bytearray': 'calls builtins.bytearray', 'conv': 'calls torch.nn.modules.conv.Conv2d',
              'view': 'tensor views address', 'names': 'values once shared', 'width': 'over the limit of 500,000,000',
              'depth': 'repeats after depth_multiple', 'yaml': 'YAML aliases (*l0, line 2) are not accepted'}
    for tag, text in expect.items():
        assert got[tag].split(' ', 1)[0] in ('CheckpointError', 'DatasetError') and text in got[tag], (tag, got[tag])
    assert got['cache'] == 'OK None'
    assert got['detect'] == 'OK 2'  # the two good images were processed, the two bombs skipped with a warning each
    for name in ('huge.jpg', 'huge.png'):
        assert sum(f'skipping {images / name}: image header claims' in line for line in r.stdout.splitlines()) == 1
    for tag in ('control-bytearray', 'control-conv', 'control-view'):
        assert got[tag] == 'MemoryError' or "can't allocate memory" in got[tag], (tag, got[tag])
    assert not list((tmp_path / 'runs' / 'bad').glob('huge*'))  # the bombs were never decoded nor written

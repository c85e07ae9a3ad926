"""Plots and drawing: files exist, are valid images of the expected size, and empty inputs do not crash."""

import cv2
import numpy as np
import pytest
import torch

from utils.engine.result_plots import plot_results
from utils.engine.runlog import read_results_csv
from utils.ops.metrics import ConfusionMatrix, ap_per_class
from utils.viz.charts import plot_ap_curves, plot_confusion_matrix, plot_labels
from utils.viz.drawing import Annotator, colors, output_to_target, plot_images, save_one_box

RESULTS_COLUMNS = ['epoch', 'train/box_loss', 'train/obj_loss', 'train/cls_loss', 'metrics/precision',
                   'metrics/recall', 'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95', 'val/box_loss', 'val/obj_loss',
                   'val/cls_loss', 'x/lr0', 'x/lr1', 'x/lr2']




def read(path):
    im = cv2.imread(str(path))
    assert im is not None, f'{path} is not a readable image'
    return im


def test_colors_palette():
    assert colors(0) == (255, 56, 56)
    assert colors(0, bgr=True) == (56, 56, 255)
    assert colors(21) == colors(1) == (255, 157, 151)


def test_annotator_box_label_draws_in_place():
    im = np.zeros((200, 300, 3), dtype=np.uint8)
    a = Annotator(im, line_width=2)
    a.box_label([50, 80, 150, 180], 'cat 0.91', color=(255, 255, 0))
    out = a.result()
    assert out is im
    assert tuple(out[130, 50]) == (255, 255, 0)  # left edge of the box
    assert tuple(out[130, 100]) == (0, 0, 0)  # inside stays untouched
    tab = out[66:79, 52:100]  # the label tab above the box
    assert (tab == (255, 255, 0)).all(-1).mean() > 0.3  # the fill colour around the glyphs
    assert (tab == (0, 0, 0)).all(-1).any()  # with black text on the light fill
    # a box at the top edge gets its tab inside the box
    a.box_label([10, 0, 100, 50], 'dog', color=(20, 20, 120))
    assert (out[3:15, 12:40] == (20, 20, 120)).all(-1).mean() > 0.4
    assert Annotator.text_color((20, 20, 120)) == (255, 255, 255)


@pytest.mark.parametrize('shape, lw', [((480, 640, 3), 2), ((1080, 1920, 3), 5), ((64, 64, 3), 2)])
def test_annotator_line_width_from_image_size(shape, lw):
    assert Annotator(np.zeros(shape, dtype=np.uint8)).lw == lw


def test_annotator_rejects_non_image():
    with pytest.raises(ValueError, match='uint8 HxWxC numpy array'):
        Annotator(torch.zeros(3, 10, 10))


def test_output_to_target():
    out = [torch.tensor([[10.0, 20.0, 30.0, 60.0, 0.9, 2.0]]), torch.zeros(0, 6),
           torch.tensor([[0.0, 0.0, 4.0, 4.0, 0.5, 1.0], [1.0, 1.0, 3.0, 3.0, 0.4, 0.0]])]
    t = output_to_target(out)
    np.testing.assert_allclose(t, [[0, 2, 20, 40, 20, 40, 0.9], [2, 1, 2, 2, 4, 4, 0.5], [2, 0, 2, 2, 2, 2, 0.4]],
                               atol=1e-6)
    assert output_to_target(out, max_det=1).shape == (2, 7)
    assert output_to_target([]).shape == (0, 7)
    assert output_to_target([torch.zeros(0, 6)]).shape == (0, 7)


def batch(n, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 60, (n, 3, h, w), dtype=torch.uint8, generator=g)  # dark images: boxes stand out


def test_plot_images_labels_grid_and_boxes(tmp_path):
    imgs = batch(5)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.5, 0.5], [4, 3, 0.5, 0.5, 0.8, 0.8]])
    f = plot_images(imgs, targets, paths=[f'/data/im{i}.jpg' for i in range(5)], fname=tmp_path / 'b.jpg',
                    names={i: f'c{i}' for i in range(4)})
    im = read(f)
    assert im.shape == (192, 192, 3)  # 3x3 grid of 64 px tiles
    # class 1's box in tile 0 (left edge at x=16), class 3's box in tile 4 (column 1, row 1: offset 64, 64)
    assert np.abs(im[32, 16].astype(int) - colors(1, bgr=True)).max() < 40
    assert np.abs(im[96, 64 + 6].astype(int) - colors(3, bgr=True)).max() < 40
    assert (im[150:, 150:] > 240).all()  # unused tiles stay white


def test_plot_images_predictions_only_above_025(tmp_path):
    imgs = batch(1, 128, 128)
    targets = np.array([[0, 0, 40, 40, 40, 40, 0.9], [0, 5, 100, 100, 30, 30, 0.2]])  # pixels, with conf
    im = read(plot_images(imgs, targets, fname=tmp_path / 'p.jpg'))
    assert np.abs(im[40, 20].astype(int) - colors(0, bgr=True)).max() < 40
    assert im[100, 85].max() < 80  # the 0.2 box is not drawn


def test_plot_images_limits_and_resizes(tmp_path):
    im = read(plot_images(batch(20), np.zeros((0, 6)), fname=tmp_path / 'a.jpg'))
    assert im.shape == (256, 256, 3)  # 16 images max, 4x4
    big = torch.zeros(9, 3, 1000, 1000, dtype=torch.uint8)
    t = torch.tensor([[8, 0, 500, 500, 200, 200]], dtype=torch.float32)  # pixel boxes are shrunk with the mosaic
    im = read(plot_images(big, t, fname=tmp_path / 'big.jpg'))
    assert im.shape == (1920, 1920, 3)
    assert np.abs(im[1280 + 320, 1280 + 256].astype(int) - colors(0, bgr=True)).max() < 60


def test_plot_images_empty_and_float_input(tmp_path):
    im = read(plot_images(torch.rand(2, 3, 32, 48), torch.zeros(0, 6), fname=tmp_path / 'f.jpg'))
    assert im.shape == (64, 96, 3)
    im = read(plot_images(torch.zeros(0, 3, 32, 32), torch.zeros(0, 6), fname=tmp_path / 'e.jpg'))
    assert im.shape == (32, 32, 3)


@pytest.mark.parametrize('n, nc', [(300, 3), (0, 1)])
def test_plot_labels(tmp_path, n, nc):
    rng = np.random.default_rng(0)
    labels = np.c_[rng.integers(0, nc, n), rng.uniform(0.2, 0.8, (n, 2)), rng.uniform(0.05, 0.3, (n, 2))]
    f = plot_labels(labels, names={i: f'class{i}' for i in range(nc)}, save_dir=tmp_path)
    assert f == tmp_path / 'labels.jpg'
    assert read(f).shape == (1600, 1600, 3)


def write_results_csv(path, epochs):
    rng = np.random.default_rng(0)
    with open(path, 'w') as f:
        f.write(','.join(f'{c:>20s}' for c in RESULTS_COLUMNS) + '\n')
        for e in range(epochs):
            f.write(','.join(f'{v:20.5g}' for v in [e, *rng.uniform(0, 1, 13)]) + '\n')


@pytest.mark.parametrize('epochs', [2])
def test_plot_results(tmp_path, epochs):
    csv = tmp_path / 'results.csv'
    write_results_csv(csv, epochs)
    header, data = read_results_csv(csv)
    assert header == RESULTS_COLUMNS and data.shape == (epochs, 14)
    f = plot_results(csv)
    assert f == tmp_path / 'results.png'
    assert read(f).shape == (1200, 2400, 3)


def test_plot_results_bad_and_missing_files(tmp_path, log_lines):
    bad = tmp_path / 'results.csv'
    bad.write_text('epoch,train/box_loss\n0,not-a-number\n')
    assert plot_results(bad) == tmp_path / 'results.png'  # an empty figure, and a warning naming the file
    assert any('Plotting error for' in m and 'results.csv' in m for m in log_lines)
    assert plot_results('', dir=tmp_path / 'nowhere') is None
    assert any('No results.csv files found' in m for m in log_lines)


@pytest.mark.parametrize('case', ['one_class', 'no_predictions'])
def test_ap_per_class_writes_curves(tmp_path, case):
    rng = np.random.default_rng(0)
    n, nc = (0, 2) if case == 'no_predictions' else (50, 1 if case == 'one_class' else 3)
    tp = rng.random((n, 10)) < 0.6
    conf, pcls = rng.random(n), rng.integers(0, nc, n)
    tcls = rng.integers(0, nc, 40)
    plot_ap_curves(ap_per_class(tp, conf, pcls, tcls).curves, tmp_path, names={i: f'c{i}' for i in range(nc)},
                   prefix='v_')
    for name in ('PR', 'F1', 'P', 'R'):
        assert read(tmp_path / f'v_{name}_curve.png').shape == (1500, 2250, 3)


def test_confusion_matrix_plot(tmp_path):
    cm = ConfusionMatrix(3)
    cm.process_batch(torch.tensor([[0, 0, 10, 10, 0.9, 0.0]]), torch.tensor([[0, 0, 0, 10, 10.0]]))
    f = plot_confusion_matrix(cm.matrix, tmp_path / 'confusion_matrix.png', names={i: f'c{i}' for i in range(3)})
    assert f == tmp_path / 'confusion_matrix.png'
    assert read(f).shape == (2250, 3000, 3)
    empty = plot_confusion_matrix(ConfusionMatrix(1).matrix, tmp_path / 'empty' / 'confusion_matrix.png',
                                  normalize=False)  # one class, nothing counted
    assert read(empty).shape == (2250, 3000, 3)


def test_save_one_box(tmp_path, log_lines):
    im = np.zeros((100, 200, 3), dtype=np.uint8)
    im[20:60, 50:150] = (255, 0, 0)  # blue in BGR
    crop = save_one_box([50, 20, 150, 60], im, file=tmp_path / 'crops' / 'cls' / 'a.jpg', BGR=True)
    assert crop.shape == (51, 112, 3)  # (40 * 1.02 + 10, 100 * 1.02 + 10) = (50.8, 112) around the centre
    saved = read(tmp_path / 'crops' / 'cls' / 'a.jpg')
    assert saved.shape == crop.shape and saved[30, 56, 0] > 200 and saved[30, 56, 2] < 50
    save_one_box([50, 20, 150, 60], im, file=tmp_path / 'crops' / 'cls' / 'a.jpg', BGR=True)
    assert (tmp_path / 'crops' / 'cls' / 'a2.jpg').exists()  # a taken name is numbered, never overwritten
    clipped = save_one_box([-50, -50, 10, 10], im, save=False, gain=1.0, pad=0)
    assert clipped.shape == (10, 10, 3)
    assert save_one_box([300, 300, 400, 400], im, file=tmp_path / 'x.jpg', gain=1.0, pad=0).size == 0
    assert not (tmp_path / 'x.jpg').exists() and any('empty crop' in m for m in log_lines)


# viridis at 0 and 1 (matplotlib's table, BGR), written out so the test does not read the code's own lookup table
VIRIDIS_LOW, VIRIDIS_HIGH = (84, 1, 68), (37, 231, 253)


def test_feature_grid_scales_each_map_and_places_it_in_its_cell():
    """Two 2x4 maps: a ramp 0..7 (its min and max take viridis' ends) and a constant map (all at viridis' low end, as
    imshow draws it). Each cell is 300 px; the map fills 256 px of its longer side, centred, nearest-pixel enlarged
    (64x), on white."""
    from utils.viz.features import feature_grid

    ramp = np.arange(8, dtype=np.float32).reshape(2, 4)
    grid = feature_grid(np.stack([ramp, np.full((2, 4), 3.5, np.float32)]))
    assert grid.shape == (300, 600, 3) and grid.dtype == np.uint8
    top, left = (300 - 128) // 2, (300 - 256) // 2  # 86, 22
    assert tuple(grid[0, 0]) == (255, 255, 255) and tuple(grid[top - 1, left]) == (255, 255, 255)
    assert tuple(grid[top, left]) == VIRIDIS_LOW  # ramp[0, 0] = 0, the map's minimum
    assert tuple(grid[top + 63, left + 63]) == VIRIDIS_LOW  # still inside the first 64x64 block
    assert tuple(grid[top + 127, left + 255]) == VIRIDIS_HIGH  # ramp[1, 3] = 7, the maximum
    assert tuple(grid[top + 128, left + 255]) == (255, 255, 255)  # below the map
    assert (grid[top:top + 128, 300 + left:300 + left + 256] == VIRIDIS_LOW).all()  # the constant map
    greens = [int(grid[top + 64 * (v // 4), left + 64 * (v % 4), 1]) for v in range(8)]  # ramp value v's block
    assert greens == sorted(set(greens))  # viridis' green rises with the value: the blocks are in ramp order


def test_feature_visualization_writes_the_grid_and_the_exact_maps(tmp_path):
    """40 channels: the first 32 drawn (4 rows of 8 cells), all 40 saved as .npy; Detect and 1x1 maps are skipped."""
    from utils.viz.features import feature_visualization

    x = torch.randn(1, 40, 16, 20, generator=torch.Generator().manual_seed(0))
    f = feature_visualization(x, 'models.common.Conv', 3, save_dir=tmp_path)
    assert f == tmp_path / 'stage3_Conv_features.png'
    assert read(f).shape == (4 * 300, 8 * 300, 3)
    np.testing.assert_array_equal(np.load(f.with_suffix('.npy')), x[0].numpy())
    assert feature_visualization(x, 'models.yolo.Detect', 4, save_dir=tmp_path) is None
    assert feature_visualization(torch.zeros(1, 8, 1, 1), 'models.common.SPPF', 5, save_dir=tmp_path) is None


def test_feature_grid_draws_non_finite_pixels_white():
    """A diverged layer's map: NaN and inf pixels white, the finite ones scaled among themselves; an all-NaN map
    white; no warning, no garbage from casting NaN to uint8."""
    from utils.viz.features import feature_grid

    m = np.array([[0.0, np.nan], [np.inf, 2.0]], np.float32)
    with np.errstate(all='raise'):
        grid = feature_grid(np.stack([m, np.full((2, 2), np.nan, np.float32)]))
    top = left = (300 - 256) // 2  # a square map fills 256 x 256, 128 px per pixel
    assert tuple(grid[top, left]) == VIRIDIS_LOW and tuple(grid[top + 128, left + 128]) == VIRIDIS_HIGH
    assert tuple(grid[top, left + 128]) == (255, 255, 255) and tuple(grid[top + 128, left]) == (255, 255, 255)
    assert (grid[:, 300:] == 255).all()


def test_feature_visualization_unwritable_file_raises(tmp_path):
    """OpenCV's imwrite returns False instead of raising; a map that could not be saved must not pass silently."""
    from utils.viz.features import feature_visualization

    with pytest.raises(OSError, match='could not write'):
        feature_visualization(torch.ones(1, 2, 4, 4), 'Conv', 0, save_dir=tmp_path / 'missing')

"""Checked picture writing: every way OpenCV fails to write becomes one OSError line naming the file; plots made
during a run warn instead of stopping it."""
import cv2
import numpy as np
import pytest

from utils.viz import imagefile
from utils.viz.drawing import plot_images, save_one_box
from utils.viz.imagefile import plot_or_warn, writable_name, write_image


def image(h=6, w=8):
    return np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)


def assert_one_line(e, path):
    msg = str(e.value)
    assert '\n' not in msg and str(path) in msg and 'loadsave.cpp' not in msg and '/io/opencv' not in msg
    return msg


def test_write_image_round_trip(tmp_path):
    im = image()
    assert write_image(tmp_path / 'a.png', im) == tmp_path / 'a.png'
    assert np.array_equal(cv2.imread(str(tmp_path / 'a.png')), im)  # PNG is lossless: the exact pixels
    q = write_image(tmp_path / 'q.jpg', np.full((16, 16, 3), 100, np.uint8), (cv2.IMWRITE_JPEG_QUALITY, 95))
    assert abs(int(cv2.imread(str(q))[8, 8, 0]) - 100) <= 1


@pytest.mark.parametrize('name', ['a.xyz', 'noext', 'b.mpo', 'c.dng'])
def test_no_writer_for_extension(tmp_path, name):
    with pytest.raises(OSError) as e:
        write_image(tmp_path / name, image())
    assert 'OpenCV has no writer for' in assert_one_line(e, tmp_path / name)
    assert not list(tmp_path.iterdir())


def test_missing_directory(tmp_path):
    f = tmp_path / 'gone' / 'a.jpg'
    with pytest.raises(OSError) as e:
        write_image(f, image())
    assert f'directory {tmp_path / "gone"} does not exist' in assert_one_line(e, f)


def test_opencv_assertion_is_one_line(tmp_path):
    f = tmp_path / 'empty.png'
    with pytest.raises(OSError) as e:
        write_image(f, np.zeros((0, 0, 3), np.uint8))
    assert assert_one_line(e, f).endswith("(-215:Assertion failed) !_img.empty() in function 'imwrite'")


def test_imwrite_false_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(imagefile.cv2, 'imwrite', lambda *a: False)  # what a full disk looks like
    with pytest.raises(OSError) as e:
        write_image(tmp_path / 'a.jpg', image())
    assert 'disk full or not writable' in assert_one_line(e, tmp_path / 'a.jpg')


@pytest.mark.parametrize('name, out', [('x.dng', 'x.jpg'), ('x.MPO', 'x.jpg'), ('x.png', 'x.png'),
                                       ('x.JPG', 'x.JPG'), ('x.webp', 'x.webp'), ('x.tif', 'x.tif')])
def test_writable_name(tmp_path, name, out):
    assert writable_name(tmp_path / name) == tmp_path / out


def test_plot_images_raises_and_or_warn_goes_on(tmp_path, monkeypatch, log_text):
    ims = np.zeros((2, 3, 32, 32), np.uint8)
    targets = np.array([[0, 1, 0.5, 0.5, 0.2, 0.2]])
    assert plot_images(ims, targets, fname=tmp_path / 'ok.jpg') == tmp_path / 'ok.jpg'
    monkeypatch.setattr(imagefile.cv2, 'imwrite', lambda *a: False)
    with pytest.raises(OSError, match='could not write .*bad.jpg'):
        plot_images(ims, targets, fname=tmp_path / 'bad.jpg')
    assert plot_or_warn(plot_images, ims, targets, None, tmp_path / 'bad.jpg') is None
    lines = [x for x in log_text.getvalue().splitlines() if x]
    assert lines == [f'WARNING ⚠️ could not write {tmp_path / "bad.jpg"} (OpenCV imwrite failed: disk full or not '
                     'writable?); the run goes on without it']


def test_save_one_box_raises_when_not_written(tmp_path, monkeypatch):
    im = np.full((40, 40, 3), 7, np.uint8)
    crop = save_one_box([10, 10, 20, 20], im, file=tmp_path / 'c.jpg', pad=0, gain=1)
    assert crop.shape == (10, 10, 3) and (tmp_path / 'c.jpg').exists()
    monkeypatch.setattr(imagefile.cv2, 'imwrite', lambda *a: False)
    with pytest.raises(OSError, match='could not write .*c2.jpg'):
        save_one_box([10, 10, 20, 20], im, file=tmp_path / 'c.jpg', pad=0, gain=1)


def test_plot_or_warn_passes_results_and_other_errors(log_text):
    assert plot_or_warn(lambda a, b=0: a + b, 1, b=2) == 3

    def unwritable():
        raise FileNotFoundError(2, 'No such file or directory', 'runs/gone/confusion_matrix.png')

    assert plot_or_warn(unwritable) is None
    assert "could not be" not in log_text.getvalue() and 'runs/gone/confusion_matrix.png' in log_text.getvalue()
    with pytest.raises(ValueError):  # a bug in a plot is not hidden
        plot_or_warn(lambda: int('x'))

"""Inference sources: files, dirs, globs, .txt lists, videos, streams, and the messages for bad inputs."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.data.sources import (
    IMG_FORMATS,
    Frame,
    LoadImages,
    LoadStreams,
    SourceError,
    expand_source,
    is_stream_source,
    load_source,
)


def write_image(path: Path, h: int = 48, w: int = 64, value: int = 100) -> Path:
    im = np.full((h, w, 3), value, np.uint8)
    cv2.rectangle(im, (5, 5), (w // 2, h // 2), (0, 0, 255), -1)
    assert cv2.imwrite(str(path), im)
    return path


def write_video(path: Path, n: int = 6, h: int = 48, w: int = 64, fourcc: str = 'mp4v') -> Path:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (w, h))
    assert vw.isOpened()
    for i in range(n):
        vw.write(np.full((h, w, 3), 20 * i, np.uint8))
    vw.release()
    return path


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / 'src'
    d.mkdir()
    write_image(d / 'b.jpg')
    write_image(d / 'a.png', 32, 40)
    write_video(d / 'clip.mp4', n=6)
    (d / 'notes.md').write_text('not an image')
    return d


def test_directory_images_then_videos(folder):
    loader = LoadImages(folder)
    assert [Path(f).name for f in loader.files] == ['a.png', 'b.jpg', 'clip.mp4']
    frames = list(loader)
    assert [f.kind for f in frames] == ['image', 'image'] + ['video'] * 6
    assert frames[0].im0.shape == (32, 40, 3) and frames[1].im0.shape == (48, 64, 3)
    assert frames[2].describe() == f'video 3/3 (1/6) {folder / "clip.mp4"}:'
    assert frames[0].describe() == f'image 1/3 {folder / "a.png"}:'
    assert frames[-1].frame == 6 and frames[-1].meta['fps'] == pytest.approx(10, abs=0.1)


@pytest.mark.parametrize('stride, expected', [(1, 6), (2, 3), (4, 1)])
def test_vid_stride(tmp_path, stride, expected):
    v = write_video(tmp_path / 'v.mp4', n=6)
    frames = list(LoadImages(v, vid_stride=stride))
    assert len(frames) == expected
    assert frames[-1].frames == expected


@pytest.mark.parametrize('ext, fourcc', [('avi', 'MJPG'), ('mkv', 'mp4v'), ('mov', 'mp4v')])
def test_other_video_containers(tmp_path, ext, fourcc):
    v = write_video(tmp_path / f'v.{ext}', n=3, fourcc=fourcc)
    assert len(list(LoadImages(v))) == 3


def test_glob_and_txt_list(folder, tmp_path):
    assert [Path(f).name for f in expand_source(str(folder / '*.jpg'))] == ['b.jpg']
    lst = tmp_path / 'list.txt'
    lst.write_text(f'{folder / "b.jpg"}\nsrc/a.png\n')  # absolute and relative-to-the-list entries
    loader = LoadImages(lst)
    assert [Path(f).name for f in loader.files] == ['b.jpg', 'a.png']
    assert len(list(loader)) == 2


def test_list_of_sources(folder):
    loader = LoadImages([folder / 'b.jpg', folder / 'a.png'])
    assert len(loader) == 2


def test_missing_source(tmp_path):
    with pytest.raises(SourceError, match=r'nothere\.jpg does not exist'):
        LoadImages(tmp_path / 'nothere.jpg')
    with pytest.raises(SourceError, match='matches no files'):
        LoadImages(str(tmp_path / '*.jpg'))
    with pytest.raises(SourceError, match=r'missing\.txt does not exist'):
        LoadImages(tmp_path / 'missing.txt')



def test_list_entries_that_do_not_exist_are_skipped(folder, tmp_path, log_text):
    """A .txt list (or a list of sources) with missing entries: one warning each, the others used; all missing is
    one error. YOLOv5 stops at the first missing entry."""
    lst = tmp_path / 'list.txt'
    lst.write_text(f'{folder / "b.jpg"}\nsrc/gone.jpg\n{tmp_path / "nothere"}\n')
    loader = LoadImages(lst)
    assert [Path(f).name for f in loader.files] == ['b.jpg'] and len(list(loader)) == 1
    warnings = [x for x in log_text.getvalue().splitlines() if x]
    assert warnings == ['WARNING ⚠️ skipping list entry: src/gone.jpg does not exist',
                        f'WARNING ⚠️ skipping list entry: {tmp_path / "nothere"} does not exist']
    assert [Path(f).name for f in LoadImages([folder / 'a.png', folder / 'zz.png']).files] == ['a.png']
    lst.write_text('gone1.jpg gone2.jpg\n')
    with pytest.raises(SourceError, match=r'^none of the 2 entries of .*list\.txt exist \(gone1\.jpg does not '
                                          r'exist\)$'):
        LoadImages(lst)
    with pytest.raises(SourceError, match=r'^none of the sources exist \(.*zz\.png does not exist\)$'):
        LoadImages([folder / 'zz.png'])


def test_txt_list_with_byte_order_mark(folder, tmp_path):
    (tmp_path / 'bom.txt').write_bytes(f'\ufeff{folder / "b.jpg"}\n'.encode())
    assert LoadImages(tmp_path / 'bom.txt').files == [str(folder / 'b.jpg')]


@pytest.mark.parametrize('name', ['list.txt', 'cams.streams'])
def test_binary_list_file_is_one_line(tmp_path, name):
    (tmp_path / name).write_bytes(b'\xff\xd8\xff\xe0 a JPEG renamed')
    with pytest.raises(SourceError, match=rf'^{tmp_path / name}: not a text list of sources \(not UTF-8 text\)$'):
        load_source(tmp_path / name)


def test_existing_path_that_is_not_a_file(tmp_path):
    with pytest.raises(SourceError, match=r'^/dev/null is not a file or directory$'):
        LoadImages('/dev/null')

def test_empty_directory(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(SourceError, match=r'No images or videos found in .*empty'):
        LoadImages(tmp_path / 'empty')


def test_unreadable_image_skipped_good_kept(folder, caplog):
    (folder / 'broken.jpg').write_bytes(b'not a jpeg at all')
    loader = LoadImages(folder)
    frames = list(loader)
    assert len([f for f in frames if f.kind == 'image']) == 2
    assert len(loader.skipped) == 1 and 'broken.jpg: unreadable or corrupt image' in loader.skipped[0]


def test_truncated_jpeg_is_used_with_one_warning_naming_it(folder, log_text):
    """A JPEG cut short (an interrupted copy) still decodes, completed in memory as the dataset does, but its lost
    rows come out gray: detect.py says so, naming the file (libjpeg's own stderr line names none)."""
    data = (folder / 'b.jpg').read_bytes()
    (folder / 'cut.jpg').write_bytes(data[:len(data) * 2 // 3])
    frames = list(LoadImages(folder))
    assert [Path(f.path).name for f in frames if f.kind == 'image'] == ['a.png', 'b.jpg', 'cut.jpg']
    warnings = [x for x in log_text.getvalue().splitlines() if x]
    assert warnings == [f'WARNING ⚠️ {folder / "cut.jpg"}: truncated JPEG (no end marker): decoded as far as its '
                        'data goes']


def test_unopenable_video_skipped(folder):
    (folder / 'bad.avi').write_bytes(b'\x00' * 100)
    loader = LoadImages(folder)
    frames = list(loader)
    assert len(frames) == 2 + 6
    assert len(loader.skipped) == 1 and 'bad.avi' in loader.skipped[0]
    assert 'video' in loader.skipped[0]


def test_bad_vid_stride(folder):
    with pytest.raises(SourceError, match='vid-stride must be >= 1'):
        LoadImages(folder, vid_stride=0)


def test_stream_detection():
    assert is_stream_source('0') and is_stream_source('rtsp://host/x') and is_stream_source('a.streams')
    assert not is_stream_source('data/images') and not is_stream_source('x.jpg')
    assert 'jpg' in IMG_FORMATS


def test_streams_read_a_video_file(tmp_path):
    v = write_video(tmp_path / 'cam.mp4', n=5)
    lst = tmp_path / 'cams.streams'
    lst.write_text(f'{v}\n')
    loader = load_source(lst)
    assert isinstance(loader, LoadStreams) and len(loader) == 1
    frames = list(loader)
    assert 1 <= len(frames) <= 5  # live reading keeps only the newest frame
    assert all(isinstance(f, Frame) and f.im0.shape == (48, 64, 3) for f in frames)
    assert frames[0].describe() == '0: '


def test_stream_cannot_open(tmp_path):
    lst = tmp_path / 'cams.streams'
    lst.write_text(f'{tmp_path / "nope.mp4"}\n')
    with pytest.raises(SourceError, match='Failed to open stream .*nope.mp4'):
        LoadStreams(lst)


def test_offline_stream_in_a_list_is_skipped(tmp_path, log_text):
    """One camera of a .streams list that cannot be opened is a warning; the others run. None opened: one error."""
    v = write_video(tmp_path / 'cam.mp4', n=5)
    lst = tmp_path / 'cams.streams'
    lst.write_text(f'{tmp_path / "offline.mp4"}\n{v}\n')
    loader = LoadStreams(lst)
    assert loader.sources == [str(v)] and len(loader) == 1
    frames = list(loader)
    assert frames and all(f.path == str(v) and f.index == 1 and f.count == 1 for f in frames)
    assert (f'WARNING ⚠️ Failed to open stream {tmp_path / "offline.mp4"}; skipped, the other streams run'
            in log_text.getvalue())
    lst.write_text(f'{tmp_path / "a.mp4"}\n{tmp_path / "b.mp4"}\n')
    with pytest.raises(SourceError, match=r'^none of the 2 streams in .*cams\.streams could be opened \(Failed to '
                                          r'open stream .*a\.mp4\)$'):
        LoadStreams(lst)

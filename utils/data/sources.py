"""Inference inputs for detect.py: images, directories, globs, ``.txt`` lists, videos, webcams and streams.

Every loader yields :class:`Frame` objects holding the original BGR image, so pre-processing (letterbox) stays in
one place in the caller. Bad inputs never stop the run: an unreadable image or a video that cannot be opened is
skipped with a one-line warning naming the file, and the good files next to it are still processed. A source that
does not exist or holds nothing usable raises :class:`SourceError` with a one-line message.
"""
from __future__ import annotations

import glob
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from utils.core.logging import LOGGER
from utils.core.safety import MAX_IMAGE_PIXELS, UnsafeFileError, check_pixels
from utils.data.config import IMG_FORMATS, VID_FORMATS
from utils.data.images import read_image_with_note
from utils.data.textlist import read_text_list

URL_PREFIXES = ('rtsp://', 'rtmp://', 'http://', 'https://')


class SourceError(Exception):
    """A detection source that does not exist or holds no readable image or video."""


@dataclass
class Frame:
    """One image or video frame to run inference on."""

    path: str  # file path, URL or webcam index
    im0: np.ndarray  # original image, BGR, HWC, uint8
    kind: str  # 'image', 'video' or 'stream'
    index: int  # 1-based position of the file/stream among all sources
    count: int  # number of files/streams
    frame: int = 0  # 1-based frame number (videos and streams)
    frames: int = 0  # frames in the video (after vid_stride); 0 when unknown
    meta: dict = field(default_factory=dict)  # fps, width, height of a video/stream

    def describe(self) -> str:
        """YOLOv5's console prefix: ``image 1/3 path:`` or ``video 1/2 (4/30) path:``."""
        if self.kind == 'image':
            return f'image {self.index}/{self.count} {self.path}:'
        if self.kind == 'video':
            return f'video {self.index}/{self.count} ({self.frame}/{self.frames}) {self.path}:'
        return f'{self.index - 1}: '  # streams: "0: ", "1: " as YOLOv5


def is_url(source: str) -> bool:
    """True for rtsp/rtmp/http(s) addresses."""
    return str(source).lower().startswith(URL_PREFIXES)


def is_stream_source(source: str | Path) -> bool:
    """Webcam index (``0``), a ``.streams`` list file, or a URL: read live through :class:`LoadStreams`."""
    s = str(source)
    return s.isnumeric() or s.endswith('.streams') or is_url(s)


def _suffix(path: str) -> str:
    return Path(path).suffix[1:].lower()


def _expand_one(p: str, base: Path | None) -> list[str]:
    """Files named by one entry: a glob, a directory (``*.*``, not recursive) or a file."""
    if '*' in p:
        files = sorted(glob.glob(p, recursive=True))
        if not files:
            raise SourceError(f'{p} matches no files')
        return files
    path = Path(p).expanduser()
    if not path.exists() and base is not None and not path.is_absolute():
        path = base / path  # entries of a .txt list may be relative to the list's folder
    if path.is_dir():
        return sorted(str(f) for f in path.glob('*.*') if f.is_file())
    if path.is_file():
        return [str(path)]
    raise SourceError(f'{p} is not a file or directory' if path.exists() else f'{p} does not exist')


def read_list_file(path: str | Path) -> str:
    """The text of a ``.txt`` or ``.streams`` source list; SourceError (one line) when it is missing, unreadable or
    not UTF-8 text."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f'{path} does not exist')
    try:
        return read_text_list(path, 'sources')
    except ValueError as e:
        raise SourceError(str(e)) from None


def expand_source(source: str | Path | Sequence[str | Path]) -> list[str]:
    """All files named by ``source`` (file, dir, glob, ``.txt`` list or a list of these), in YOLOv5 order.

    One source that does not exist is an error. In a list, an entry that does not exist is a warning naming it and
    the others are used (YOLOv5 stops at the first); a list none of whose entries exist is an error."""
    base, listed = None, not isinstance(source, (str, Path))
    if isinstance(source, (str, Path)) and Path(source).suffix == '.txt' and '*' not in str(source):
        txt, listed = Path(source), True
        entries, base = read_list_file(txt).split(), txt.parent
        if not entries:
            raise SourceError(f'{txt} lists no images or videos')
    elif isinstance(source, (str, Path)):
        entries = [str(source)]
    else:
        entries = [str(s) for s in source]
    files, missing = [], []
    for e in entries:
        try:
            files += _expand_one(str(e), base)
        except SourceError as err:
            if not listed:
                raise
            missing.append(str(err))
            LOGGER.warning(f'WARNING ⚠️ skipping list entry: {err}')
    if missing and len(missing) == len(entries):
        raise SourceError(f'none of the {len(entries)} entries of {source} exist ({missing[0]})'
                          if isinstance(source, (str, Path)) else f'none of the sources exist ({missing[0]})')
    return files


class LoadImages:
    """Images first, then videos, each sorted; videos are read every ``vid_stride``-th frame."""

    def __init__(self, source: str | Path | Sequence[str | Path], vid_stride: int = 1):
        if vid_stride < 1:
            raise SourceError(f'--vid-stride must be >= 1, got {vid_stride}')
        files = expand_source(source)
        images = [f for f in files if _suffix(f) in IMG_FORMATS]
        videos = [f for f in files if _suffix(f) in VID_FORMATS]
        if not images and not videos:
            raise SourceError(f'No images or videos found in {source}. '
                              f'Supported formats are:\nimages: {IMG_FORMATS}\nvideos: {VID_FORMATS}')
        self.files = images + videos
        self.video_flag = [False] * len(images) + [True] * len(videos)
        self.nf, self.vid_stride = len(self.files), vid_stride
        self.skipped: list[str] = []  # files that could not be read, with the reason
        self.frames_read = 0

    def __len__(self) -> int:
        return self.nf

    def _skip(self, path: str, why: str) -> None:
        self.skipped.append(f'{path}: {why}')
        LOGGER.warning(f'WARNING ⚠️ skipping {path}: {why}')

    def _image(self, i: int, path: str) -> Iterator[Frame]:
        try:
            im, note = read_image_with_note(path)  # header checked first: 600 bytes may claim 20000x20000 pixels
        except ValueError as e:  # UnsafeFileError included; cv2.error never escapes
            self._skip(path, str(e))
            return
        if note:
            LOGGER.warning(f'WARNING ⚠️ {path}: {note}')
        self.frames_read += 1
        yield Frame(path, im, 'image', i + 1, self.nf)

    def _video(self, i: int, path: str) -> Iterator[Frame]:
        cap = cv2.VideoCapture(path)
        try:
            if not cap.isOpened():
                self._skip(path, 'video cannot be opened')
                return
            meta = _capture_meta(cap)
            if meta['width'] * meta['height'] > MAX_IMAGE_PIXELS:
                self._skip(path, f"frames of {meta['width']}x{meta['height']} exceed {MAX_IMAGE_PIXELS:,} pixels")
                return
            total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            frames = max(total // self.vid_stride, 1) if total > 0 else 0
            n = 0
            while True:
                for _ in range(self.vid_stride - 1):
                    cap.grab()
                ok, im = cap.read()
                if not ok or im is None:
                    break
                n += 1
                self.frames_read += 1
                yield Frame(path, im, 'video', i + 1, self.nf, n, max(frames, n), meta)
            if n == 0:
                self._skip(path, 'video has no readable frames')
        finally:
            cap.release()

    def __iter__(self) -> Iterator[Frame]:
        for i, (path, is_video) in enumerate(zip(self.files, self.video_flag)):
            yield from (self._video(i, path) if is_video else self._image(i, path))


def _capture_meta(cap: cv2.VideoCapture) -> dict:
    """fps (30 when unknown, as YOLOv5), width and height of an opened capture."""
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps % 100 if np.isfinite(fps) and fps > 0 else 0
    return {'fps': fps or 30.0, 'width': int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            'height': int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))}


def _stream_sources(source: str | Path) -> list[str]:
    s = str(source)
    if s.endswith('.streams'):
        lines = [x.strip() for x in read_list_file(s).splitlines() if x.strip()]
        if not lines:
            raise SourceError(f'{s} lists no streams')
        return lines
    return [s]


class _Reader(threading.Thread):
    """Background reader keeping only the latest frame of one capture (live streams must not lag)."""

    def __init__(self, cap: cv2.VideoCapture, first: np.ndarray, vid_stride: int):
        super().__init__(daemon=True)
        self.cap, self.vid_stride, self.frame = cap, vid_stride, first
        self.seq, self.done, self.lock = 1, False, threading.Lock()
        self.stop_event = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop_event.is_set():
            if not self.cap.grab():
                break
            n += 1
            if n % self.vid_stride == 0:
                ok, im = self.cap.retrieve()
                if not ok:
                    break
                with self.lock:
                    self.frame, self.seq = im, self.seq + 1
        self.done = True


def _open_stream(s: str) -> tuple[cv2.VideoCapture, np.ndarray]:
    """An opened capture of one webcam index or URL and its first frame; SourceError (one line) otherwise."""
    cap = cv2.VideoCapture(int(s) if s.isnumeric() else s)
    try:
        check_pixels(int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    except UnsafeFileError as e:
        cap.release()
        raise SourceError(f'stream {s}: {e}') from None
    ok, im = cap.read() if cap.isOpened() else (False, None)
    if not ok or im is None:
        cap.release()
        raise SourceError(f'Failed to open stream {s}')
    return cap, im


class LoadStreams:
    """Webcams (``'0'``), stream URLs and ``.streams`` list files, each read by a background thread."""

    def __init__(self, source: str | Path, vid_stride: int = 1, timeout: float = 30.0):
        if vid_stride < 1:
            raise SourceError(f'--vid-stride must be >= 1, got {vid_stride}')
        listed = _stream_sources(source)
        self.timeout, self.readers, self.meta, self.sources, failed = timeout, [], [], [], []
        for s in listed:
            try:
                cap, im = _open_stream(s)
            except SourceError as e:
                if len(listed) == 1:
                    raise
                failed.append(str(e))  # one camera of a .streams list that is offline: the others still run
                LOGGER.warning(f'WARNING ⚠️ {e}; skipped, the other streams run')
                continue
            self.meta.append(_capture_meta(cap))
            LOGGER.info(f'Stream {s}: {im.shape[1]}x{im.shape[0]} at {self.meta[-1]["fps"]:.2f} FPS')
            reader = _Reader(cap, im, vid_stride)
            reader.start()
            self.readers.append(reader)
            self.sources.append(s)
        if not self.readers:
            raise SourceError(f'none of the {len(listed)} streams in {source} could be opened ({failed[0]})')
        self.nf = len(self.sources)

    def __len__(self) -> int:
        return self.nf

    def _next(self, r: _Reader, last: int) -> tuple[np.ndarray, int] | None:
        """The first frame newer than ``last``, or None when the stream ended or stalled."""
        t0 = time.monotonic()
        while True:
            with r.lock:
                if r.seq > last:
                    return r.frame.copy(), r.seq
            if r.done or time.monotonic() - t0 > self.timeout:
                return None
            time.sleep(0.001)

    def __iter__(self) -> Iterator[Frame]:
        last = [0] * self.nf
        try:
            while True:
                alive = False
                for i, (r, s) in enumerate(zip(self.readers, self.sources)):
                    got = self._next(r, last[i])
                    if got is None:
                        continue
                    alive = True
                    im, last[i] = got
                    yield Frame(s, im, 'stream', i + 1, self.nf, last[i], 0, self.meta[i])
                if not alive:
                    return
        finally:
            self.close()

    def close(self) -> None:
        """Stop the readers and release the captures."""
        for r in self.readers:
            r.stop_event.set()
            r.join(timeout=2)
            r.cap.release()
        self.readers = []


def load_source(source: str | Path | Sequence[str | Path], vid_stride: int = 1) -> LoadImages | LoadStreams:
    """The right loader for a detect.py ``--source``."""
    if isinstance(source, (str, Path)) and is_stream_source(source):
        return LoadStreams(source, vid_stride=vid_stride)
    return LoadImages(source, vid_stride=vid_stride)

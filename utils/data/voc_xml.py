"""Pascal VOC XML annotations read directly and safely: one ``Annotations/<stem>.xml`` -> its size and objects.

Parsed with the standard library's expat through ``xml.etree.ElementTree.TreeBuilder``; a document type declaration
(``<!DOCTYPE``, and with it any ``<!ENTITY``) is refused before it can define an entity, so neither the "billion
laughs" expansion nor an external entity (a file or URL pulled into the document) is possible. The file size is
checked first (MAX_XML_BYTES).

Coordinates: VOC's ``bndbox`` is 1-based inclusive pixels; as YOLOv5's VOC.yaml converter, 1 is subtracted from
``xmin``/``xmax`` (and y), so the box spans ``xmax - xmin`` pixels from ``xmin - 1``.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET  # noqa: N817  (the usual name)
from dataclasses import dataclass
from pathlib import Path
from xml.parsers import expat

from utils.core.safety import MAX_NAME_CHARS, MAX_XML_BYTES


class VocObject:
    """One ``<object>``: class name, pixel box x1 y1 x2 y2 (0-based) and the difficult flag."""

    __slots__ = ('name', 'box', 'difficult')

    def __init__(self, name: str, box: tuple[float, float, float, float], difficult: bool):
        self.name, self.box, self.difficult = name, box, difficult


@dataclass
class VocAnnotation:
    """One VOC file: the image file name it claims, its (w, h) or None, and its objects."""

    filename: str
    size: tuple[int, int] | None
    objects: list[VocObject]


def parse_xml(data: bytes) -> ET.Element:
    """The root element of an XML document, refusing DOCTYPE/ENTITY declarations; ValueError with a short reason."""
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()

    def refuse(*_):
        raise ValueError('DOCTYPE/ENTITY declarations are not accepted')

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.StartElementHandler = lambda tag, attrs: builder.start(tag, attrs)
    parser.EndElementHandler = lambda tag: builder.end(tag)
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except expat.ExpatError as e:
        raise ValueError(f'XML does not parse: {e}') from None
    return builder.close()


def _text(el: ET.Element | None, tag: str) -> str:
    x = el.find(tag) if el is not None else None
    return (x.text or '').strip() if x is not None else ''


def _number(el: ET.Element | None, tag: str) -> float:
    try:
        v = float(_text(el, tag))
    except ValueError:
        raise ValueError(f'<{tag}> is not a number') from None
    if not math.isfinite(v):
        raise ValueError(f'<{tag}> is not finite')
    return v


def read_voc(path: str | Path) -> VocAnnotation:
    """Parse one VOC annotation file; ValueError (one line, without the path) when it is unusable."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_XML_BYTES:
        raise ValueError(f'{size:,} bytes, over the limit of {MAX_XML_BYTES:,} for an XML annotation')
    root = parse_xml(path.read_bytes())
    if root.tag != 'annotation':
        raise ValueError(f'root element <{root.tag}>, expected <annotation>')
    wh = None
    s = root.find('size')
    if s is not None and _text(s, 'width') and _text(s, 'height'):
        w, h = int(_number(s, 'width')), int(_number(s, 'height'))
        wh = (w, h) if w > 0 and h > 0 else None
    objects = []
    for obj in root.iter('object'):
        name = _text(obj, 'name')
        if not name or len(name) > MAX_NAME_CHARS:
            raise ValueError(f'an <object> has no <name> or one over {MAX_NAME_CHARS} characters')
        bb = obj.find('bndbox')
        if bb is None:
            raise ValueError(f'object {name!r} has no <bndbox>')
        x1, y1, x2, y2 = (_number(bb, k) - 1 for k in ('xmin', 'ymin', 'xmax', 'ymax'))
        objects.append(VocObject(name, (x1, y1, x2, y2), _text(obj, 'difficult') in ('1', 'true')))
    return VocAnnotation(_text(root, 'filename'), wh, objects)

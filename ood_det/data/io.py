"""Image reading shared by the backends and the dataset checker.

``read_image(path)`` returns an ``H x W x 3`` ``uint8`` **RGB** array (OpenCV decodes; grey and
RGBA images are converted to 3 channels, 16-bit images are scaled to 8 bits; EXIF orientation is
left to OpenCV's default, which applies it, as detectron2's reader does). Any unreadable file -- missing, empty, not an image,
truncated JPEG -- raises :class:`ImageReadError`, which names the file, so that a caller can skip
the image with a warning and count it (see :func:`try_read_image`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import cv2
import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_JPEG_SOS = 0xDA
# markers without a length field: TEM, RST0-7, SOI, EOI
_JPEG_STANDALONE = {0x01, 0xD8, 0xD9, *range(0xD0, 0xD8)}


class ImageReadError(OSError):
    """An image file could not be read or decoded. ``path`` is the file, ``reason`` why."""

    def __init__(self, path: PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path!r}: {reason}")


def _jpeg_truncated(data: bytes) -> bool:
    """Whether a JPEG lacks its end-of-image marker after the start of its first scan.

    OpenCV decodes a cut JPEG without complaint (the missing rows come back grey). The header
    segments are walked up to the first start-of-scan; an end-of-image marker (FF D9) must follow it
    -- entropy-coded data never contains FF D9 (0xFF is byte-stuffed there), while one inside an
    EXIF thumbnail comes before the scan and so does not count. Bytes after the marker (appended
    by some cameras) are allowed.
    """
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return False  # not a layout this walk understands: leave it to the decoder
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _JPEG_STANDALONE:
            i += 2
        elif marker == _JPEG_SOS:
            return data.rfind(_JPEG_EOI, i + 2) < 0
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return True  # the file ends inside its headers


def read_image(path: PathLike) -> np.ndarray:
    """Read ``path`` as an ``[H, W, 3]`` ``uint8`` RGB array.

    Raises:
        ImageReadError: the file is missing, empty, not a decodable image, or a truncated JPEG
            (OpenCV would otherwise hand back a partly grey image without complaint).
    """
    path = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except OSError as e:  # a directory, permissions, I/O error
        raise ImageReadError(path, f"{type(e).__name__}: {e.strerror or e}") from None
    if not data:
        raise ImageReadError(path, "the file is empty")
    if data[:2] == _JPEG_SOI and _jpeg_truncated(data):
        raise ImageReadError(path, f"truncated JPEG ({len(data)} bytes, no end-of-image marker)")
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as e:  # pragma: no cover - OpenCV reports most failures by returning None
        raise ImageReadError(path, f"OpenCV error: {e}") from None
    if img is None or img.ndim != 3 or img.shape[2] != 3 or img.size == 0:
        raise ImageReadError(path, f"not a decodable image ({len(data)} bytes)")
    if img.dtype != np.uint8:  # pragma: no cover - IMREAD_COLOR already gives 8 bits
        img = cv2.convertScaleAbs(img, alpha=255.0 / float(np.iinfo(img.dtype).max))
    return np.ascontiguousarray(img[:, :, ::-1])


def try_read_image(path: PathLike, warn: bool = True) -> Optional[np.ndarray]:
    """:func:`read_image`, but return ``None`` (and log a warning) instead of raising
    :class:`ImageReadError`. Callers count the ``None`` s."""
    try:
        return read_image(path)
    except ImageReadError as e:
        if warn:
            import logging

            logging.getLogger(__name__).warning("skipping image: %s", e)
        return None

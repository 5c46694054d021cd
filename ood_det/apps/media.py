"""Inputs and outputs of the scoring tool: finding images / videos / cameras, decoding them into
frames and naming their outputs.

An input string is one of

* an image file (``.jpg .jpeg .png .bmp .tif .tiff .webp``),
* a video file (``.mp4 .avi .mkv .mov .m4v``, decoded by OpenCV's FFmpeg backend),
* a folder (its image and video files, sorted by name, not recursive),
* a glob pattern (``data/**/*.png``; ``**`` recurses),
* a camera, ``cam:N`` (OpenCV device index N).

Anything else (a missing path, an unsupported file, a pattern matching nothing) is *skipped* with a
reason, and the other inputs are still processed.
"""
from __future__ import annotations

import glob
import math
import os
import re
import time
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".m4v")
#: FourCC used to write each output video container (all encodable by opencv-python's FFmpeg)
VIDEO_FOURCC = {".mp4": "mp4v", ".mov": "mp4v", ".m4v": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
#: frame rate assumed when a video or camera reports none
FALLBACK_FPS = 30.0

_CAMERA = re.compile(r"^cam:(\d+)$")


@dataclass
class Source:
    """One thing to score.

    Attributes:
        kind: ``"image"``, ``"video"`` or ``"camera"``.
        name: the path (or ``cam:N``) as reported in outputs.
        output: the output file's path relative to the output folder.
        camera: the OpenCV device index (cameras only).
        expected_frames: frames announced by the video header (0 if unknown), 1 for an image.
    """

    kind: str
    name: str
    output: str
    camera: Optional[int] = None
    expected_frames: int = 0


@dataclass
class Skipped:
    """An input (or part of one) that produced no or incomplete output, and why."""

    input: str
    reason: str
    frames_scored: int = 0


def _kind(path: str) -> Optional[str]:
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    return None


def _unsupported(path: str) -> str:
    return (f"unsupported file type {os.path.splitext(path)[1] or '(no extension)'!r} "
            f"(images: {' '.join(IMAGE_EXTS)}; videos: {' '.join(VIDEO_EXTS)})")


def collect_sources(
    inputs: Sequence[str], output_dir: str
) -> Tuple[List[Source], List[Skipped]]:
    """Expand the ``--input`` strings into sources, in the given order.

    Output names are the input's file name under ``output_dir``; a name already taken by an earlier
    input, or whose path under ``output_dir`` is one of the input files (``--output`` is the folder
    of an input, whichever), gets a ``_2``, ``_3``, ... suffix: no output ever replaces an input.
    A file met twice (e.g. by a folder and a pattern) is scored once.

    Returns:
        ``(sources, skipped)``.
    """
    files: List[Tuple[str, str]] = []  # (kind, path) or ("camera", "cam:N")
    skipped: List[Skipped] = []
    for raw in inputs:
        m = _CAMERA.match(raw)
        if m:
            files.append(("camera", raw))
        elif os.path.isdir(raw):
            found = [os.path.join(raw, f) for f in sorted(os.listdir(raw))]
            found = [f for f in found if os.path.isfile(f) and _kind(f)]
            if not found:
                skipped.append(Skipped(raw, "folder contains no image or video file "
                                            f"({' '.join(IMAGE_EXTS + VIDEO_EXTS)})"))
            files.extend((_kind(f), f) for f in found)
        elif os.path.isfile(raw):
            kind = _kind(raw)
            if kind is None:
                skipped.append(Skipped(raw, _unsupported(raw)))
            else:
                files.append((kind, raw))
        elif glob.has_magic(raw):
            found = [f for f in sorted(glob.glob(raw, recursive=True)) if os.path.isfile(f)]
            media = [f for f in found if _kind(f)]
            if not media:
                skipped.append(Skipped(raw, "pattern matches no image or video file"
                                       + (f" ({len(found)} other files)" if found else "")))
            files.extend((_kind(f), f) for f in media)
        else:
            skipped.append(Skipped(raw, "not found (no such file, folder or matching pattern)"))

    sources: List[Source] = []
    seen = set()
    taken = set()
    out_real = os.path.realpath(output_dir)
    inputs_real = {os.path.realpath(p) for k, p in files if k != "camera"}
    for kind, path in files:
        if kind == "camera":
            key = path
            base = f"cam{_CAMERA.match(path).group(1)}.mp4"
        else:
            key = os.path.realpath(path)
            base = os.path.basename(path)
        if key in seen:
            continue
        seen.add(key)
        stem, ext = os.path.splitext(base)
        name, k = base, 1
        while name.lower() in taken or os.path.realpath(os.path.join(out_real, name)) in inputs_real:
            k += 1
            name = f"{stem}_{k}{ext}"
        taken.add(name.lower())
        cam = int(_CAMERA.match(path).group(1)) if kind == "camera" else None
        sources.append(Source(kind, path, name, camera=cam,
                              expected_frames=1 if kind == "image" else 0))
    return sources, skipped


# ------------------------------------------------------------------------------------- decoding
@dataclass
class Frame:
    """One decoded frame. ``image``: ``H x W x 3`` uint8 RGB (what the model sees); ``bgr``: the
    decoder's BGR frame (drawn on and encoded, saving a colour conversion); ``timestamp`` in
    seconds (None for a still image)."""

    source: int
    index: int
    timestamp: Optional[float]
    image: np.ndarray
    bgr: Optional[np.ndarray] = None
    detections: Optional[dict] = None


@dataclass
class SourceStart:
    source: int
    fps: Optional[float]
    expected_frames: int


@dataclass
class SourceEnd:
    """End of a source. ``problem``: None if it was read to its end, else why it stopped early
    (``frames`` frames were decoded before)."""

    source: int
    frames: int
    problem: Optional[str] = None


Event = Union[Frame, SourceStart, SourceEnd]


def probe_frame_count(path: str) -> int:
    """Frames a video's header announces (0 if it cannot be opened or does not say)."""
    cap = cv2.VideoCapture(path)
    try:
        n = cap.get(cv2.CAP_PROP_FRAME_COUNT) if cap.isOpened() else 0
    finally:
        cap.release()
    return int(n) if n and math.isfinite(n) and n > 0 else 0


def _fps(cap) -> Optional[float]:
    fps = cap.get(cv2.CAP_PROP_FPS)
    return float(fps) if fps and math.isfinite(fps) and 0 < fps < 1000 else None


def read_source(index: int, src: Source, stop=None) -> Iterator[Event]:
    """Decode one source into ``SourceStart, Frame..., SourceEnd``.

    Never raises for bad media: an unreadable image, a video that cannot be opened, one with no
    frame, or one that stops before the frame count its header announces ends with a
    :class:`SourceEnd` whose ``problem`` says so; the frames decoded before the damage are
    yielded as usual.

    Timestamps: ``frame / fps`` for videos (fps from the header, :data:`FALLBACK_FPS` if it
    has none), seconds since the first frame for cameras, None for images.

    Args:
        stop: optional ``threading.Event``; decoding ends (without a problem) once it is set.
    """
    if src.kind == "image":
        try:
            bgr = cv2.imread(src.name, cv2.IMREAD_COLOR)
        except cv2.error as e:  # pragma: no cover - OpenCV returns None for most failures
            bgr, err = None, str(e)
        else:
            err = None
        if bgr is None:
            yield SourceEnd(index, 0, "cannot be read as an image (unreadable, corrupt or "
                                      "removed)" + (f": {err}" if err else ""))
            return
        yield SourceStart(index, None, 1)
        yield Frame(index, 0, None, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), bgr)
        yield SourceEnd(index, 1)
        return

    cap = cv2.VideoCapture(src.camera if src.kind == "camera" else src.name)
    try:
        if not cap.isOpened():
            what = "camera" if src.kind == "camera" else "video"
            yield SourceEnd(index, 0, f"cannot be opened as a {what} (unreadable, corrupt, "
                                      "truncated before its index, or not a video)")
            return
        fps = _fps(cap)
        expected = 0
        if src.kind == "video":
            n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
            expected = int(n) if n and math.isfinite(n) and n > 0 else 0
        yield SourceStart(index, fps or FALLBACK_FPS, expected)
        t0 = None
        n = 0
        while stop is None or not stop.is_set():
            ok, bgr = cap.read()
            if not ok or bgr is None:
                break
            if src.kind == "camera":
                now = time.monotonic()
                t0 = now if t0 is None else t0
                ts = now - t0
            else:
                ts = n / (fps or FALLBACK_FPS)
            if bgr.ndim == 2:  # some decoders hand out grey frames
                bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
            yield Frame(index, n, ts, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), bgr)
            n += 1
        if stop is not None and stop.is_set():
            yield SourceEnd(index, n)
        elif n == 0:
            yield SourceEnd(index, 0, "video has no frames" if expected == 0 else
                            f"no frame could be decoded (the header announces {expected})")
        elif src.kind == "video" and n < expected:
            yield SourceEnd(index, n, f"damaged or truncated: decoding stopped after {n} of the "
                                      f"{expected} frames its header announces")
        else:
            yield SourceEnd(index, n)
    finally:
        cap.release()


def open_video_writer(path: str, fps: float, width: int, height: int):
    """An opened ``cv2.VideoWriter`` for ``path`` (FourCC from :data:`VIDEO_FOURCC`).

    Raises:
        OSError: if OpenCV cannot open it (unwritable place or codec missing).
    """
    ext = os.path.splitext(path)[1].lower()
    fourcc = VIDEO_FOURCC.get(ext, "mp4v")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), float(fps), (width, height))
    if not writer.isOpened():
        writer.release()
        raise OSError(f"cannot open output video {path!r} (FourCC {fourcc}, {width}x{height} at "
                      f"{fps:g} fps)")
    return writer

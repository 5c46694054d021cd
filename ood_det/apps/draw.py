"""Drawing detections with unknown (OOD) objects marked, for the scoring tool.

Known boxes: a solid rectangle in a per-class colour, labelled ``<class> <confidence>``.
Unknown boxes (``ood_score < threshold``): a thicker **dashed** magenta rectangle labelled
``unknown <ood score>``, so that they stand out even in a grey-scale print.

All functions draw **in place** on an ``H x W x 3`` uint8 **BGR** image (OpenCV's order).
"""
from __future__ import annotations

import functools
from typing import Sequence, Tuple

import cv2
import numpy as np

#: colour of unknown boxes (BGR magenta), kept out of :data:`PALETTE`
UNKNOWN_COLOR: Tuple[int, int, int] = (255, 0, 255)
#: per-class colours (BGR), cycled; no magenta so that unknown boxes stay distinct
PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (0, 200, 0), (255, 128, 0), (0, 165, 255), (0, 215, 255), (200, 200, 0),
    (0, 128, 255), (128, 255, 0), (255, 191, 0), (0, 100, 0), (160, 160, 0),
    (60, 180, 75), (0, 140, 200), (180, 130, 70), (50, 205, 154), (0, 69, 255),
)
KNOWN_THICKNESS = 2
UNKNOWN_THICKNESS = 3
DASH = 8  # dash and gap length (pixels) of unknown boxes


def class_color(label: int) -> Tuple[int, int, int]:
    return PALETTE[int(label) % len(PALETTE)]


def dashed_rectangle(img: np.ndarray, p0, p1, color, thickness: int, dash: int = DASH) -> None:
    """Dashed axis-aligned rectangle from ``p0 = (x0, y0)`` to ``p1 = (x1, y1)`` (int pixels).

    All dashes go to OpenCV in one ``cv2.polylines`` call (a Python loop of ``cv2.line`` calls is
    several times slower with many boxes)."""
    x0, y0 = p0
    x1, y1 = p1
    step = 2 * dash
    segs = []
    for s in range(x0, x1 + 1, step):
        e = min(s + dash, x1)
        segs.append(((s, y0), (e, y0)))
        segs.append(((s, y1), (e, y1)))
    for s in range(y0, y1 + 1, step):
        e = min(s + dash, y1)
        segs.append(((x0, s), (x0, e)))
        segs.append(((x1, s), (x1, e)))
    cv2.polylines(img, np.array(segs, np.int32), False, color, thickness, cv2.LINE_8)


_FONT, _SCALE, _THICK = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1


@functools.lru_cache(maxsize=4096)
def _text_size(text: str):
    # cv2.getTextSize costs as much as drawing the text: labels repeat, so cache them
    return cv2.getTextSize(text, _FONT, _SCALE, _THICK)


def _label(img: np.ndarray, text: str, x: int, y: int, color) -> None:
    """Filled text tag whose bottom-left corner sits at the box's top-left corner (inside the
    image)."""
    font, scale, thick = _FONT, _SCALE, _THICK
    (tw, th), base = _text_size(text)
    h, w = img.shape[:2]
    x = int(min(max(x, 0), max(w - tw - 2, 0)))
    top = y - th - base - 2
    if top < 0:  # no room above the box: put the tag inside it
        top = min(max(y, 0), max(h - th - base - 2, 0))
    cv2.rectangle(img, (x, top), (x + tw + 2, top + th + base + 2), color, cv2.FILLED)
    # dark text on light colours, white on dark ones
    text_color = (0, 0, 0) if sum(color) > 380 else (255, 255, 255)
    cv2.putText(img, text, (x + 1, top + th + 1), font, scale, text_color, thick, cv2.LINE_AA)


def draw_detections(
    img: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    confidences: np.ndarray,
    ood_scores: np.ndarray,
    is_ood: np.ndarray,
    class_names: Sequence[str],
) -> np.ndarray:
    """Draw every box on ``img`` (``H x W x 3`` uint8 BGR, modified in place and returned).

    Args:
        boxes: ``[N, 4]`` xyxy pixels; labels: ``[N]`` in ``0 .. K-1``;
        confidences: ``[N]`` box confidence; ood_scores: ``[N]`` (higher = more ID);
        is_ood: ``[N]`` bool; class_names: K names.
    """
    h, w = img.shape[:2]
    # unknown boxes last, so that they are drawn on top
    order = sorted(range(len(boxes)), key=lambda i: bool(is_ood[i]))
    for i in order:
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        p0 = (int(round(min(max(x0, 0), w - 1))), int(round(min(max(y0, 0), h - 1))))
        p1 = (int(round(min(max(x1, 0), w - 1))), int(round(min(max(y1, 0), h - 1))))
        if is_ood[i]:
            dashed_rectangle(img, p0, p1, UNKNOWN_COLOR, UNKNOWN_THICKNESS)
            _label(img, f"unknown {float(ood_scores[i]):.2f}", p0[0], p0[1], UNKNOWN_COLOR)
        else:
            lab = int(labels[i])
            name = class_names[lab] if 0 <= lab < len(class_names) else str(lab)
            color = class_color(lab)
            cv2.rectangle(img, p0, p1, color, KNOWN_THICKNESS, cv2.LINE_8)
            _label(img, f"{name} {float(confidences[i]):.2f}", p0[0], p0[1], color)
    return img

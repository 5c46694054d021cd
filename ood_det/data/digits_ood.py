"""DigitsOOD: a small detection benchmark with known and unknown objects, made on the spot.

Real handwritten digits -- scikit-learn's bundled ``load_digits`` (1,797 8x8 images, no download)
-- are resized with OpenCV to a random size (default 14-40 px high, width/height ratio 0.75-1.1),
dimmed by a random brightness and pasted on dark, mildly noisy grey canvases (default 128 x 128,
1-4 digits, no two digit boxes overlapping). Boxes are the tight boxes of the digits' ink.

Splits (all generated deterministically from one seed):

===========  =======================================================================
``train``    ID digits only (default 0-4), from the *train* pool of source images
``val``      ID digits only, from the *val* pool
``test``     ID digits only, from the *test* pool
``ood``      near-OOD: OOD digits only (default 5-9), test pool; every box is an unknown object
``mixed``    ID and OOD digits together (at least one of each per image), test pool
``far``      far-OOD: patches of real photographs (no digit), every box an unknown object;
             photos ``china.jpg`` (scikit-learn) and ``grace_hopper.jpg`` (matplotlib)
``shift``    covariate shift: ID digits of the test pool, each image under one mild change
             (lower contrast, stronger noise or a Gaussian blur); every box stays ID
``val_ood``  near-OOD for choosing hyper-parameters: OOD digits of the *val* pool
``val_far``  far-OOD for choosing hyper-parameters: patches of other photographs,
             ``flower.jpg`` (scikit-learn) and ``Minduka_Present_Blue_Pack.png`` (matplotlib)
===========  =======================================================================

The 1,797 source images are first split per digit (stratified, 60 / 20 / 20 % by default) into the
train / val / test pools, so no source image used by ``train`` appears in any other split, and the
validation splits (``val``, ``val_ood``, ``val_far``) share no source digit or photograph with the
test splits (``test``, ``ood``, ``mixed``, ``far``, ``shift``). The photographs ship inside
scikit-learn and matplotlib, which ood_det depends on: nothing is downloaded.

On disk (``root`` defaults to ``<datasets root>/digits_ood``)::

    root/images/<split>/<split>_00000.png     grey PNGs
    root/annotations/<split>.json            COCO format; categories are all ten digits "0".."9"
                                             (id = digit + 1), so OOD boxes keep their true digit
    root/manifest.json                       written last: parameters, counts, size + sha1 per file

:func:`ensure_digits_ood` reuses a complete dataset and detects a missing, partial or corrupt one,
or one made with other parameters; it regenerates it (``regenerate="auto"``) or raises
:class:`DigitsOODError` saying what is wrong (``"never"``). :func:`load_digits_ood` gives the
dataset dicts: ID digits have ``category_id`` 0..K-1 (their index in the ID digits), OOD digits
``category_id`` -1 and ``"unknown_class"`` = the digit's name; every annotation also carries
``"source_index"``, the index of its source image in ``load_digits()``.

CLI: ``python -m ood_det.data.digits_ood --root datasets/digits_ood --seed 0``.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from tqdm import tqdm

from .coco import PathLike, load_coco_json, read_json, save_coco_json

#: names of the ten digit classes; ``DIGITS_CLASS_NAMES[d]`` is digit ``d``
DIGITS_CLASS_NAMES: Tuple[str, ...] = tuple(str(d) for d in range(10))
DIGITS_SPLITS: Tuple[str, ...] = ("train", "val", "test", "ood", "mixed", "far", "shift", "val_ood", "val_far")
DEFAULT_ID_DIGITS: Tuple[int, ...] = (0, 1, 2, 3, 4)
DEFAULT_OOD_DIGITS: Tuple[int, ...] = (5, 6, 7, 8, 9)
#: the known classes of the default benchmark (thing_classes of every split)
DIGITS_ID_CLASS_NAMES: Tuple[str, ...] = tuple(DIGITS_CLASS_NAMES[d] for d in DEFAULT_ID_DIGITS)
DIGITS_OOD_CLASS_NAMES: Tuple[str, ...] = tuple(DIGITS_CLASS_NAMES[d] for d in DEFAULT_OOD_DIGITS)
DEFAULT_IMAGES: Dict[str, int] = {"train": 1500, "val": 300, "test": 300, "ood": 300, "mixed": 200,
                                  "far": 300, "shift": 300, "val_ood": 200, "val_far": 200}
#: what each split contains: "id", "ood" or "mixed"
SPLIT_DISTRIBUTION: Dict[str, str] = {"train": "id", "val": "id", "test": "id", "ood": "ood", "mixed": "mixed",
                                      "far": "ood", "shift": "id", "val_ood": "ood", "val_far": "ood"}
#: which source pool each split draws its digits (or photographs) from
SPLIT_POOL: Dict[str, str] = {"train": "train", "val": "val", "test": "test", "ood": "test", "mixed": "test",
                              "far": "test", "shift": "test", "val_ood": "val", "val_far": "val"}
#: splits made of photograph patches instead of digits
PHOTO_SPLITS = ("far", "val_far")
#: the photographs each pool cuts its far-OOD patches from: (package, file)
PHOTO_SOURCES: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "test": (("sklearn", "china.jpg"), ("matplotlib", "grace_hopper.jpg")),
    "val": (("sklearn", "flower.jpg"), ("matplotlib", "Minduka_Present_Blue_Pack.png")),
}
#: the covariate shifts of the ``shift`` split (one per image)
SHIFT_KINDS = ("contrast", "noise", "blur")
#: category index of a photograph patch in the json (after the ten digits)
PHOTO_CATEGORY = 10
PHOTO_CLASS_NAME = "photo"
_SPLIT_CODE = {s: i for i, s in enumerate(DIGITS_SPLITS)}
#: bump when the rendering changes, so that old data on disk is seen as stale
GENERATOR_VERSION = 2
MANIFEST_NAME = "manifest.json"
_FILE_RE = re.compile(r"^(train|val|test|ood|mixed|far|shift|val_ood|val_far)_\d{5}\.png$")


class DigitsOODError(RuntimeError):
    """The DigitsOOD directory is missing, partial, corrupt or was made with other parameters."""


@dataclass(frozen=True)
class DigitsOODConfig:
    """Generation parameters (all sizes in pixels; ranges are inclusive ``(low, high)``).

    Args:
        seed: the one seed every image is drawn from (with the split and image index).
        id_digits / ood_digits: the known and the unknown digits (disjoint subsets of 0..9).
        images: images per split; a split with 0 images is not written.
        canvas_size: ``(height, width)`` of every image.
        objects_per_image: range of digits pasted per image (``mixed`` uses at least 2).
        digit_height: range of a pasted digit's height before its ink is cropped.
        aspect_range: range of width / height of a pasted digit.
        brightness: range of a digit's peak grey level, as a fraction of 255.
        background: range of the canvas' mean grey level (0-255).
        noise_std: standard deviation of the canvas' Gaussian noise (grey levels).
        max_iou: largest IoU allowed between two digit boxes of an image (0: no overlap).
        source_fractions: train / val / test share of the source images, split per digit.
        photo_crop: range of the side (pixels of the photograph) of a far-OOD patch's crop.
        photo_aspect: range of width / height of a pasted photograph patch (its height is drawn
            from ``digit_height``, like a digit's).
        shift_brightness: peak grey level range of the ``contrast`` shift (instead of ``brightness``).
        shift_noise_std: noise of the ``noise`` shift (instead of ``noise_std``).
        shift_blur_sigma: range of the Gaussian blur (pixels) of the ``blur`` shift.
    """

    seed: int = 0
    id_digits: Tuple[int, ...] = DEFAULT_ID_DIGITS
    ood_digits: Tuple[int, ...] = DEFAULT_OOD_DIGITS
    images: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_IMAGES))
    canvas_size: Tuple[int, int] = (128, 128)
    objects_per_image: Tuple[int, int] = (1, 4)
    digit_height: Tuple[int, int] = (14, 40)
    aspect_range: Tuple[float, float] = (0.75, 1.1)
    brightness: Tuple[float, float] = (0.6, 1.0)
    background: Tuple[float, float] = (0.0, 40.0)
    noise_std: float = 6.0
    max_iou: float = 0.0
    source_fractions: Tuple[float, float, float] = (0.6, 0.2, 0.2)
    photo_crop: Tuple[int, int] = (40, 160)
    photo_aspect: Tuple[float, float] = (0.6, 1.6)
    shift_brightness: Tuple[float, float] = (0.3, 0.5)
    shift_noise_std: float = 16.0
    shift_blur_sigma: Tuple[float, float] = (1.0, 1.5)

    def __post_init__(self):
        def fix(name, conv):
            object.__setattr__(self, name, conv(getattr(self, name)))

        fix("seed", int)
        for name in ("id_digits", "ood_digits"):
            fix(name, lambda v: tuple(int(d) for d in v))
        fix("images", lambda m: {s: int(m.get(s, 0)) for s in DIGITS_SPLITS})
        for name in ("canvas_size", "objects_per_image", "digit_height", "photo_crop"):
            fix(name, lambda v: tuple(int(x) for x in v))
        for name in ("aspect_range", "brightness", "background", "source_fractions", "photo_aspect",
                     "shift_brightness", "shift_blur_sigma"):
            fix(name, lambda v: tuple(float(x) for x in v))
        fix("noise_std", float)
        fix("shift_noise_std", float)
        fix("max_iou", float)
        self._validate()

    def _validate(self):
        bad = lambda msg: ValueError(f"DigitsOODConfig: {msg}")  # noqa: E731
        for name in ("id_digits", "ood_digits"):
            v = getattr(self, name)
            if not v or len(set(v)) != len(v) or any(d < 0 or d > 9 for d in v):
                raise bad(f"{name}={v} must be distinct digits 0..9, at least one")
        if set(self.id_digits) & set(self.ood_digits):
            raise bad(f"id_digits {self.id_digits} and ood_digits {self.ood_digits} overlap")
        if any(n < 0 for n in self.images.values()):
            raise bad(f"images={self.images}: counts must be >= 0")
        if len(self.canvas_size) != 2 or min(self.canvas_size) < 8:
            raise bad(f"canvas_size={self.canvas_size} must be (height, width) >= 8")
        lo, hi = self.objects_per_image
        if not 1 <= lo <= hi:
            raise bad(f"objects_per_image={self.objects_per_image} must satisfy 1 <= low <= high")
        if self.images["mixed"] > 0 and hi < 2:
            raise bad("the mixed split needs objects_per_image high >= 2")
        lo, hi = self.digit_height
        if not 4 <= lo <= hi or hi * max(1.0, self.aspect_range[1]) > min(self.canvas_size):
            raise bad(f"digit_height={self.digit_height} must satisfy 4 <= low <= high and fit the canvas "
                      f"{self.canvas_size} at aspect {self.aspect_range[1]}")
        if not 0 < self.aspect_range[0] <= self.aspect_range[1]:
            raise bad(f"aspect_range={self.aspect_range}")
        if not 0 < self.brightness[0] <= self.brightness[1] <= 1:
            raise bad(f"brightness={self.brightness} must lie in (0, 1]")
        if not 0 <= self.background[0] <= self.background[1] < 255:
            raise bad(f"background={self.background} must lie in [0, 255)")
        if self.noise_std < 0 or not 0 <= self.max_iou < 1:
            raise bad(f"noise_std={self.noise_std} must be >= 0 and max_iou={self.max_iou} in [0, 1)")
        f = self.source_fractions
        if len(f) != 3 or min(f) <= 0 or abs(sum(f) - 1) > 1e-6:
            raise bad(f"source_fractions={f} must be 3 positive numbers summing to 1")
        if not 8 <= self.photo_crop[0] <= self.photo_crop[1]:
            raise bad(f"photo_crop={self.photo_crop} must satisfy 8 <= low <= high")
        if not 0 < self.photo_aspect[0] <= self.photo_aspect[1] or \
                self.digit_height[1] * self.photo_aspect[1] > self.canvas_size[1]:
            raise bad(f"photo_aspect={self.photo_aspect} must be positive and fit the canvas")
        if not 0 < self.shift_brightness[0] <= self.shift_brightness[1] <= 1:
            raise bad(f"shift_brightness={self.shift_brightness} must lie in (0, 1]")
        if self.shift_noise_std < 0 or not 0 < self.shift_blur_sigma[0] <= self.shift_blur_sigma[1]:
            raise bad(f"shift_noise_std={self.shift_noise_std} must be >= 0, shift_blur_sigma="
                      f"{self.shift_blur_sigma} positive")

    def to_dict(self) -> Dict[str, Any]:
        """Plain json-able parameters (what the manifest stores and compares)."""
        d = asdict(self)
        d["images"] = dict(self.images)
        return json.loads(json.dumps(d))  # tuples -> lists, as read back from json

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DigitsOODConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @property
    def id_class_names(self) -> Tuple[str, ...]:
        return tuple(DIGITS_CLASS_NAMES[d] for d in self.id_digits)

    @property
    def ood_class_names(self) -> Tuple[str, ...]:
        return tuple(DIGITS_CLASS_NAMES[d] for d in self.ood_digits)


# --------------------------------------------------------------------------------------- sources
def load_source_digits() -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: ``images`` ``[1797, 8, 8]`` float32 in [0, 1], ``targets`` ``[1797]``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def load_photo_sources(pool: str) -> List[np.ndarray]:
    """The photographs far-OOD patches of ``pool`` (``"test"`` / ``"val"``) are cut from: grey
    ``[H, W]`` float32 in [0, 1], read from the files scikit-learn and matplotlib ship."""
    out = []
    for package, name in PHOTO_SOURCES[pool]:
        if package == "sklearn":
            from sklearn.datasets import load_sample_image

            rgb = load_sample_image(name)
        else:
            from matplotlib import cbook

            path = str(cbook.get_sample_data(name, asfileobj=False))
            bgr = cv2.imread(path, cv2.IMREAD_COLOR)
            if bgr is None:  # pragma: no cover - a broken matplotlib install
                raise DigitsOODError(f"cannot read matplotlib's sample photograph {path}")
            rgb = bgr[:, :, ::-1]
        out.append(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0)
    return out


def split_sources(targets: np.ndarray, seed: int, fractions=(0.6, 0.2, 0.2)) -> Dict[str, np.ndarray]:
    """Split source indices per digit (stratified) into disjoint ``train`` / ``val`` / ``test`` pools."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(targets))
    f_train, f_val, f_test = fractions
    train, rest = train_test_split(idx, train_size=f_train, stratify=targets, random_state=seed)
    val, test = train_test_split(
        rest, train_size=f_val / (f_val + f_test), stratify=targets[rest], random_state=seed + 1
    )
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _pools_by_digit(cfg: DigitsOODConfig, targets: np.ndarray) -> Dict[str, Dict[int, np.ndarray]]:
    pools = split_sources(targets, cfg.seed, cfg.source_fractions)
    return {p: {d: ix[targets[ix] == d] for d in range(10)} for p, ix in pools.items()}


# --------------------------------------------------------------------------------------- drawing
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of XYXY boxes ``a`` ``[N, 4]`` and ``b`` ``[M, 4]`` -> ``[N, M]`` (pixel-edge coordinates)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _split_digits(cfg: DigitsOODConfig, split: str, n: int, rng: np.random.Generator) -> List[int]:
    if split in PHOTO_SPLITS:
        return [PHOTO_CATEGORY] * n
    if split in ("ood", "val_ood"):
        return [int(d) for d in rng.choice(cfg.ood_digits, n)]
    if split == "mixed":
        first = [int(rng.choice(cfg.id_digits)), int(rng.choice(cfg.ood_digits))]
        return first + [int(d) for d in rng.choice(cfg.id_digits + cfg.ood_digits, n - 2)]
    return [int(d) for d in rng.choice(cfg.id_digits, n)]


def render_image(
    cfg: DigitsOODConfig,
    split: str,
    index: int,
    sources: np.ndarray,
    pools: Mapping[int, np.ndarray],
    max_tries: int = 50,
    photos: Optional[Sequence[np.ndarray]] = None,
) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Draw image ``index`` of ``split``: an ``[H, W]`` uint8 canvas and its objects
    ``[{"digit", "bbox" (XYXY, pixel edges), "source_index"}]`` (``digit`` = :data:`PHOTO_CATEGORY`
    for a photograph patch, ``source_index`` = the photograph's index in ``photos``). Deterministic in
    ``(cfg.seed, split, index)`` alone, so images can be drawn in any order or in parallel."""
    rng = np.random.default_rng([cfg.seed, _SPLIT_CODE[split], index])
    H, W = cfg.canvas_size
    shift = SHIFT_KINDS[int(rng.integers(len(SHIFT_KINDS)))] if split == "shift" else None
    brightness = cfg.shift_brightness if shift == "contrast" else cfg.brightness
    canvas = rng.standard_normal((H, W), dtype=np.float32)
    canvas *= cfg.shift_noise_std if shift == "noise" else cfg.noise_std
    canvas += rng.uniform(*cfg.background)
    lo, hi = cfg.objects_per_image
    n = int(rng.integers(max(lo, 2) if split == "mixed" else lo, hi + 1))
    objects: List[Dict[str, Any]] = []
    placed = np.zeros((0, 4))
    for digit in _split_digits(cfg, split, n, rng):
        h = int(rng.integers(cfg.digit_height[0], cfg.digit_height[1] + 1))
        if digit == PHOTO_CATEGORY:  # a patch of a real photograph, pasted opaque
            if not photos:
                raise ValueError(f"split {split!r} needs the photographs (load_photo_sources)")
            src = int(rng.integers(len(photos)))
            photo = photos[src]
            w = int(np.clip(round(h * rng.uniform(*cfg.photo_aspect)), 4, W))
            for _ in range(20):  # a crop with some structure, not a flat piece of sky or wall
                side = int(rng.integers(cfg.photo_crop[0], cfg.photo_crop[1] + 1))
                ch, cw = min(side, photo.shape[0]), min(max(4, round(side * w / h)), photo.shape[1])
                y0 = int(rng.integers(0, photo.shape[0] - ch + 1))
                x0 = int(rng.integers(0, photo.shape[1] - cw + 1))
                crop = photo[y0:y0 + ch, x0:x0 + cw]
                if crop.std() >= 0.08:
                    break
            patch = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA)
            # stretched to [0.15, 1] x brightness: as visible as a digit on the canvas
            lo, hi = float(patch.min()), float(patch.max())
            patch = 0.15 + 0.85 * (patch - lo) / max(hi - lo, 1e-6)
            patch = patch * (255.0 * rng.uniform(*brightness))
            tight = np.array([0, 0, w, h], np.float64)
        else:
            src = int(rng.choice(pools[digit]))
            w = int(np.clip(round(h * rng.uniform(*cfg.aspect_range)), 4, W))
            patch = cv2.resize(sources[src], (w, h), interpolation=cv2.INTER_CUBIC)
            patch = np.clip(patch, 0.0, 1.0) * (255.0 * rng.uniform(*brightness))
            ink = patch > 0.15 * patch.max()
            rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
            tight = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float64)
        for _ in range(max_tries):
            x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
            box = tight + [x, y, x, y]
            if not len(placed) or box_iou(box, placed).max() <= cfg.max_iou:
                break
        else:
            continue  # no room left: this image gets fewer digits
        region = canvas[y:y + h, x:x + w]
        if digit == PHOTO_CATEGORY:
            region[...] = patch
        else:
            np.maximum(region, patch, out=region)
        placed = np.vstack([placed, box])
        objects.append({"digit": digit, "bbox": [float(v) for v in box], "source_index": src})
    if shift == "blur":
        canvas = cv2.GaussianBlur(canvas, (0, 0), float(rng.uniform(*cfg.shift_blur_sigma)))
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), objects


# --------------------------------------------------------------------------------------- disk
def default_root() -> Path:
    """``<datasets root>/digits_ood`` (see :func:`ood_det.data.paths.datasets_root`)."""
    from .paths import datasets_root

    return datasets_root() / "digits_ood"


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``root/.lock`` (so that two processes never write at once)."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no locking
        yield
        return
    with open(root / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_generated(root: Path) -> None:
    """Delete what the generator writes (and nothing else) under ``root``."""
    for name in (MANIFEST_NAME,):
        (root / name).unlink(missing_ok=True)
    for split in DIGITS_SPLITS:
        d = root / "images" / split
        if d.is_dir():
            for p in d.iterdir():
                if _FILE_RE.match(p.name) or p.name.endswith(".tmp.png"):
                    p.unlink()
            with contextlib.suppress(OSError):
                d.rmdir()
        (root / "annotations" / f"{split}.json").unlink(missing_ok=True)
    for d in (root / "images", root / "annotations"):
        if d.is_dir():
            for p in d.glob("*.tmp*"):
                p.unlink()
            with contextlib.suppress(OSError):
                d.rmdir()


def generate_digits_ood(
    root: PathLike, config: Optional[DigitsOODConfig] = None, progress: Optional[bool] = None
) -> Dict[str, Any]:
    """Generate DigitsOOD into ``root`` from scratch (removing an earlier one) and return the manifest.

    The manifest is written last, so an interrupted run leaves a directory that
    :func:`digits_ood_status` reports as partial.
    """
    cfg = config or DigitsOODConfig()
    root = Path(root)
    t0 = time.perf_counter()
    _remove_generated(root)
    sources, targets = load_source_digits()
    pools = _pools_by_digit(cfg, targets)
    files: Dict[str, Dict[str, Any]] = {}
    counts: Dict[str, Dict[str, int]] = {}
    total = sum(cfg.images.values())
    bar = tqdm(total=total, desc="DigitsOOD", unit="img", disable=(None if progress is None else not progress))
    H, W = cfg.canvas_size
    for split in DIGITS_SPLITS:
        n_images = cfg.images[split]
        if n_images == 0:
            continue
        img_dir = root / "images" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        pool = pools[SPLIT_POOL[split]]
        photos = load_photo_sources(SPLIT_POOL[split]) if split in PHOTO_SPLITS else None
        dicts = []
        for i in range(n_images):
            img, objects = render_image(cfg, split, i, sources, pool, photos=photos)
            ok, buf = cv2.imencode(".png", img)
            if not ok:  # pragma: no cover
                raise DigitsOODError(f"OpenCV could not encode image {i} of split {split!r}")
            data = buf.tobytes()
            rel = f"images/{split}/{split}_{i:05d}.png"
            (root / rel).write_bytes(data)
            files[rel] = {"size": len(data), "sha1": _sha1(data)}
            dicts.append({
                "file_name": str(root / rel), "image_id": i + 1, "height": H, "width": W,
                "annotations": [{"bbox": o["bbox"], "bbox_mode": 0, "category_id": o["digit"],
                                 "source_index": o["source_index"]} for o in objects],
            })
            bar.update(1)
        rel = f"annotations/{split}.json"
        info = {"description": f"DigitsOOD {split}", "split": split, "seed": cfg.seed,
                "id_digits": list(cfg.id_digits), "ood_digits": list(cfg.ood_digits),
                "generator_version": GENERATOR_VERSION}
        save_coco_json(dicts, root / rel, DIGITS_CLASS_NAMES + (PHOTO_CLASS_NAME,), image_root=root, info=info)
        files[rel] = {"size": (root / rel).stat().st_size, "sha1": _file_sha1(root / rel)}
        digits = [a["category_id"] for d in dicts for a in d["annotations"]]
        counts[split] = {
            "images": n_images,
            "annotations": len(digits),
            "id_objects": sum(d in cfg.id_digits for d in digits),
            "ood_objects": sum(d in cfg.ood_digits for d in digits),
            "photo_objects": sum(d == PHOTO_CATEGORY for d in digits),
        }
    bar.close()
    manifest = {
        "dataset": "DigitsOOD",
        "generator_version": GENERATOR_VERSION,
        "params": cfg.to_dict(),
        "counts": counts,
        "files": files,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    tmp = root / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    os.replace(tmp, root / MANIFEST_NAME)
    return manifest


def digits_ood_status(
    root: PathLike, config: Optional[DigitsOODConfig] = None, verify: str = "checksum"
) -> Tuple[str, str, Optional[Dict[str, Any]]]:
    """Check a DigitsOOD directory without changing it.

    Args:
        config: the parameters wanted; ``None`` accepts any complete dataset.
        verify: ``"checksum"`` (sizes and sha1 of every file) or ``"size"`` (existence and sizes).

    Returns:
        ``(state, message, manifest)`` with state one of ``"ok"``, ``"absent"`` (nothing there),
        ``"partial"`` (files but no manifest: an interrupted run), ``"corrupt"`` (bad manifest,
        missing or altered files) or ``"changed"`` (made with other parameters).
    """
    if verify not in ("checksum", "size"):
        raise ValueError(f"verify={verify!r}: expected 'checksum' or 'size'")
    root = Path(root)
    mpath = root / MANIFEST_NAME
    if not mpath.is_file():
        leftovers = [p for p in (root / "images", root / "annotations") if p.exists()]
        if leftovers:
            return "partial", f"{str(root)!r} has {', '.join(p.name for p in leftovers)} but no {MANIFEST_NAME} " \
                              "(an interrupted generation)", None
        return "absent", f"no DigitsOOD at {str(root)!r}", None
    try:
        manifest = read_json(mpath)
        params, files = manifest["params"], manifest["files"]
        version = manifest["generator_version"]
    except (ValueError, KeyError, TypeError) as e:
        return "corrupt", f"{str(mpath)!r} is unreadable: {e}", None
    if version != GENERATOR_VERSION:
        return "changed", f"{str(root)!r} was made by generator version {version}, this is {GENERATOR_VERSION}", manifest
    if config is not None and params != config.to_dict():
        diff = {k: (params.get(k), v) for k, v in config.to_dict().items() if params.get(k) != v}
        text = ", ".join(f"{k}: {old!r} on disk, {new!r} wanted" for k, (old, new) in diff.items())
        return "changed", f"{str(root)!r} was made with other parameters ({text})", manifest
    problems = []
    for rel, meta in files.items():
        p = root / rel
        try:
            size = p.stat().st_size
        except OSError:
            problems.append(f"{rel} is missing")
            continue
        if size != meta.get("size"):
            problems.append(f"{rel} has {size} bytes, expected {meta.get('size')}")
        elif verify == "checksum" and _file_sha1(p) != meta.get("sha1"):
            problems.append(f"{rel} has a wrong checksum")
    if problems:
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        return "corrupt", f"{str(root)!r}: {len(problems)} bad file(s): " + "; ".join(problems[:5]) + more, manifest
    return "ok", f"DigitsOOD at {str(root)!r} is complete", manifest


def _regenerate_policy(regenerate: Union[str, bool]) -> str:
    if regenerate is True:
        return "always"
    if regenerate is False:
        return "never"
    if regenerate not in ("auto", "never", "always"):
        raise ValueError(f"regenerate={regenerate!r}: expected 'auto', 'never' or 'always'")
    return regenerate


def ensure_digits_ood(
    root: Optional[PathLike] = None,
    config: Optional[DigitsOODConfig] = None,
    regenerate: Union[str, bool] = "auto",
    verify: str = "checksum",
    progress: Optional[bool] = None,
) -> Dict[str, Any]:
    """Make sure a complete DigitsOOD lies in ``root`` and return its manifest.

    Args:
        root: the directory (default :func:`default_root`).
        config: the parameters wanted. ``None``: any complete dataset is reused, and an absent or
            broken one is generated with the defaults (or with the parameters its manifest records).
        regenerate: ``"auto"`` regenerates an absent, partial, corrupt or changed dataset;
            ``"never"`` raises :class:`DigitsOODError` instead (nothing is written);
            ``"always"`` regenerates in any case.
        verify: how to check an existing dataset (see :func:`digits_ood_status`).
    """
    policy = _regenerate_policy(regenerate)
    root = Path(root) if root is not None else default_root()
    if policy == "never":
        state, msg, manifest = digits_ood_status(root, config, verify)
        if state != "ok":
            raise DigitsOODError(
                f"{msg}. Generate it with `python -m ood_det.data.digits_ood --root {root}` "
                "or call ensure_digits_ood(..., regenerate='auto')"
            )
        return manifest
    with _locked(root):
        state, msg, manifest = digits_ood_status(root, config, verify)
        if state == "ok" and policy == "auto":
            return manifest
        if config is None and manifest is not None:
            try:  # rebuild what was there rather than falling back to the defaults
                params = dict(manifest["params"])
                if int(manifest.get("generator_version", 0)) < GENERATOR_VERSION:
                    # splits an older generator did not know get their default sizes
                    params["images"] = {**DEFAULT_IMAGES, **dict(params.get("images") or {})}
                config = DigitsOODConfig.from_dict(params)
            except (TypeError, ValueError, AttributeError):
                config = None
        if state != "absent":
            import logging

            logging.getLogger(__name__).warning("regenerating DigitsOOD: %s", msg)
        return generate_digits_ood(root, config, progress=progress)


def load_digits_ood(
    split: str,
    root: Optional[PathLike] = None,
    regenerate: Union[str, bool] = "auto",
    verify: str = "checksum",
) -> List[Dict[str, Any]]:
    """Dataset dicts of one DigitsOOD split (ensuring the data first; see :func:`ensure_digits_ood`).

    ID digits get ``category_id`` = their index in the dataset's ``id_digits``; OOD digits get
    ``category_id`` -1 and ``"unknown_class"`` = the digit's name. Annotations carry ``source_index``.
    """
    if split not in DIGITS_SPLITS:
        raise KeyError(f"unknown DigitsOOD split {split!r}; splits: {DIGITS_SPLITS}")
    root = Path(root) if root is not None else default_root()
    manifest = ensure_digits_ood(root, None, regenerate=regenerate, verify=verify)
    if split not in manifest["counts"]:
        raise DigitsOODError(f"DigitsOOD at {str(root)!r} was generated with 0 images in split {split!r}")
    cfg = DigitsOODConfig.from_dict(manifest["params"])
    return load_coco_json(
        root / "annotations" / f"{split}.json", root, cfg.id_class_names,
        unknown="mark", extra_annotation_keys=("source_index",),
    )


def digits_ood_class_names(root: Optional[PathLike] = None) -> Tuple[str, ...]:
    """The known classes of the DigitsOOD in ``root`` (its manifest's ID digits; the defaults if
    it has not been generated yet)."""
    root = Path(root) if root is not None else default_root()
    try:
        params = read_json(root / MANIFEST_NAME)["params"]
        return DigitsOODConfig.from_dict(params).id_class_names
    except (OSError, ValueError, KeyError, TypeError):
        return DIGITS_ID_CLASS_NAMES


# --------------------------------------------------------------------------------------- CLI
def _int_list(text: str) -> Tuple[int, ...]:
    return tuple(int(t) for t in text.replace(" ", "").split(",") if t)


def _images_arg(text: str) -> Dict[str, int]:
    out = dict(DEFAULT_IMAGES)
    for item in text.split(","):
        if not item.strip():
            continue
        k, _, v = item.partition("=")
        if k.strip() not in DIGITS_SPLITS or not v.strip().isdigit():
            raise argparse.ArgumentTypeError(f"bad --images item {item!r}; expected e.g. train=1500,ood=300")
        out[k.strip()] = int(v)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ood_det.data.digits_ood", description=__doc__.split("\n")[0])
    p.add_argument("--root", default=None, help="output directory (default: <datasets root>/digits_ood)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--id-digits", type=_int_list, default=DEFAULT_ID_DIGITS, help="e.g. 0,1,2,3,4")
    p.add_argument("--ood-digits", type=_int_list, default=DEFAULT_OOD_DIGITS, help="e.g. 5,6,7,8,9")
    p.add_argument("--images", type=_images_arg, default=dict(DEFAULT_IMAGES),
                   help="images per split, e.g. train=1500,val=300,test=300,ood=300,mixed=200,far=300,shift=300,"
                        "val_ood=200,val_far=200")
    p.add_argument("--canvas-size", type=_int_list, default=(128, 128), help="H,W (or one number)")
    p.add_argument("--objects", type=_int_list, default=(1, 4), help="min,max digits per image")
    p.add_argument("--regenerate", choices=("auto", "never", "always"), default="auto",
                   help="auto: reuse a complete dataset made with these parameters (default)")
    p.add_argument("--verify", choices=("checksum", "size"), default="checksum")
    a = p.parse_args(argv)
    canvas = a.canvas_size * 2 if len(a.canvas_size) == 1 else a.canvas_size
    try:
        cfg = DigitsOODConfig(seed=a.seed, id_digits=a.id_digits, ood_digits=a.ood_digits, images=a.images,
                              canvas_size=canvas, objects_per_image=a.objects)
        root = Path(a.root) if a.root else default_root()
        t0 = time.perf_counter()
        manifest = ensure_digits_ood(root, cfg, regenerate=a.regenerate, verify=a.verify, progress=True)
    except (ValueError, DigitsOODError) as e:
        print(f"error: {e}")
        return 1
    print(f"DigitsOOD at {root} ({time.perf_counter() - t0:.2f} s; generation took {manifest['seconds']} s)")
    for split, c in manifest["counts"].items():
        print(f"  {split:6s} {c['images']:5d} images {c['annotations']:6d} boxes "
              f"({c['id_objects']} ID, {c['ood_objects']} OOD)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

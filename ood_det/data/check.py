"""Dataset checker: say exactly what is missing or wrong before anyone spends GPU hours.

``python datasets/check.py [--root R] [--images] [names...]`` (or ``python -m ood_det.data.check``)
checks every registered dataset (or the ones named): files and folders present, image and box
counts against the published ones (930 images / 2,824 boxes for ``coco_ood_val``, 4,952 images for
VOC07 test, 16,551 for VOC07+12 trainval, ...), every listed image file present (and, with
``--images``, decodable with the size its annotation says), no known class inside an OOD split and
no unknown object inside an ID split. Exit code 1 when any dataset has a problem.

DigitsOOD is generated on first use; an absent or broken copy is only noted (it will be regenerated).
"""
from __future__ import annotations

import argparse
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from tqdm import tqdm

from . import builtin, catalog
from .paths import ENV_VAR, datasets_root
from .io import ImageReadError, read_image

_SHOW = 5  # examples listed per problem


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found for one dataset."""

    name: str
    problems: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    images: Optional[int] = None
    annotations: Optional[int] = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        counts = ""
        if self.images is not None:
            counts = f": {self.images} images, {self.annotations} boxes"
        lines = [f"[{'OK' if self.ok else 'FAIL'}] {self.name}{counts}"]
        lines += [f"    problem: {p}" for p in self.problems]
        lines += [f"    note: {n}" for n in self.notes]
        return "\n".join(lines)


def _examples(items: Sequence[Any]) -> str:
    shown = ", ".join(str(x) for x in items[:_SHOW])
    return shown + (f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else "")


def _load(name: str, md: Dict[str, Any], report: DatasetReport) -> Optional[List[Dict[str, Any]]]:
    if md.get("generated"):
        from .digits_ood import DigitsOODError, digits_ood_status, load_digits_ood

        root = md.get("image_root") or md["root"]  # the DigitsOOD folder
        state, msg, _ = digits_ood_status(root)
        if state != "ok":
            how = f", or now by: {md['download']}" if md.get("download") else ""
            report.notes.append(f"{msg}; it will be generated on first use{how}")
            return None
        try:
            return load_digits_ood(md["split"], root, regenerate="never")
        except (DigitsOODError, OSError, ValueError) as e:
            report.notes.append(f"{e}; it will be regenerated on first use")
            return None
    try:
        return catalog.get(name)
    except catalog.DatasetNotFoundError as e:
        report.problems.append(str(e))
    except (OSError, ValueError, KeyError) as e:  # malformed files: the loaders name them
        report.problems.append(f"cannot load: {e}")
    return None


def check_dataset(name: str, images: bool = False, progress: Optional[bool] = None) -> DatasetReport:
    """Check one registered dataset; ``images=True`` also decodes every image."""
    md = catalog.metadata(name)
    report = DatasetReport(name)
    dicts = _load(name, md, report)
    if dicts is None:
        return report
    report.images = len(dicts)
    report.annotations = sum(len(d.get("annotations", [])) for d in dicts)

    for key, what, found in (("expected_images", "images", report.images),
                             ("expected_annotations", "boxes", report.annotations)):
        want = md.get(key)
        if want is not None and found != want:
            report.problems.append(f"has {found} {what}, expected {want}")
    if report.images == 0:
        report.problems.append("has no images")

    missing = [d["file_name"] for d in dicts if not os.path.isfile(d["file_name"])]
    if missing:
        report.problems.append(f"{len(missing)} image file(s) missing: {_examples(missing)}")

    classes = list(md.get("thing_classes", []))
    known = Counter(classes[a["category_id"]] if 0 <= a["category_id"] < len(classes) else a["category_id"]
                    for d in dicts for a in d.get("annotations", []) if a["category_id"] >= 0)
    unknown = Counter(a.get("unknown_class", "?") for d in dicts for a in d.get("annotations", [])
                      if a["category_id"] < 0)
    dist = md.get("distribution")
    if dist == "ood" and known:
        report.problems.append(
            f"OOD split holds {sum(known.values())} box(es) of known classes: "
            + ", ".join(f"{c} x{n}" for c, n in known.most_common())
        )
    if dist == "id" and unknown:
        report.problems.append(
            f"ID split holds {sum(unknown.values())} box(es) of unknown classes: "
            + ", ".join(f"{c} x{n}" for c, n in unknown.most_common())
        )
    if dist == "mixed" and not (known and unknown):
        report.problems.append(f"mixed split lacks {'known' if not known else 'unknown'} objects")
    if dist == "ood" and report.annotations == 0:
        report.notes.append("no box annotations: every detection on these images counts as OOD")

    if images:
        missing_set = set(missing)
        present = [d for d in dicts if d["file_name"] not in missing_set]
        bad, wrong_size = [], []
        for d in tqdm(present, desc=f"reading {name}", unit="img", disable=(None if progress is None else not progress)):
            try:
                img = read_image(d["file_name"])
            except ImageReadError as e:
                bad.append(f"{e.path} ({e.reason})")
                continue
            if img.shape[:2] != (d["height"], d["width"]):
                wrong_size.append(f"{d['file_name']} is {img.shape[1]}x{img.shape[0]}, "
                                  f"annotated {d['width']}x{d['height']}")
        if bad:
            report.problems.append(f"{len(bad)} unreadable image(s): {_examples(bad)}")
        if wrong_size:
            report.problems.append(f"{len(wrong_size)} image(s) of another size than annotated: "
                                   f"{_examples(wrong_size)}")
    return report


def check_datasets(names: Optional[Sequence[str]] = None, images: bool = False,
                   progress: Optional[bool] = None) -> List[DatasetReport]:
    """Check ``names`` (default: every registered dataset)."""
    return [check_dataset(n, images=images, progress=progress) for n in (names or catalog.names())]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python datasets/check.py", description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help="datasets to check (default: all registered)")
    p.add_argument("--root", default=None,
                   help=f"datasets root (default: ${ENV_VAR}, else the checkout's datasets/)")
    p.add_argument("--images", action="store_true", help="decode every image (slow on full datasets)")
    a = p.parse_args(argv)
    root = builtin.register_builtin_datasets(a.root) if a.root else datasets_root()
    unknown = [n for n in a.names if n not in catalog.names()]
    if unknown:
        print(f"error: not registered: {', '.join(unknown)}; registered: {', '.join(catalog.names())}")
        return 2
    print(f"datasets root: {root}")
    reports = check_datasets(a.names or None, images=a.images, progress=a.images)
    for r in reports:
        print(r.format())
    failed = [r.name for r in reports if not r.ok]
    print(f"{len(reports) - len(failed)} of {len(reports)} dataset(s) OK"
          + (f"; problems in: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

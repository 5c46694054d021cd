import subprocess
import sys
from pathlib import Path

import pytest

from ood_det.data import builtin
from ood_det.data.check import check_dataset, main
from ood_det.data.digits_ood import DigitsOODConfig, ensure_digits_ood

from .conftest import TINY_COCO, TINY_DIGITS, coco_dict, write_coco

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(tmp_path):
    builtin.register_builtin_datasets(tmp_path)
    yield tmp_path
    builtin.register_builtin_datasets()


def _coco_ood(root, categories):
    data = dict(TINY_COCO, categories=[{"id": i, "name": n} for i, n in zip((1, 18, 90), categories)])
    return write_coco(root / "COCO" / "annotations" / "instances_val2017_ood_rm_overlap.json", data,
                      root / "COCO" / "val2017")


def test_missing_files_are_named(root):
    r = check_dataset("coco_ood_val")
    assert not r.ok and str(root / "COCO") in r.problems[0] and "val2017.zip" in r.problems[0]
    _coco_ood(root, ["toaster", "kite", "toothbrush"])
    (root / "COCO" / "val2017" / "sub" / "b.jpg").unlink()
    r = check_dataset("coco_ood_val")
    assert any("1 image file(s) missing" in p and "sub/b.jpg" in p for p in r.problems)


def test_wrong_counts_are_reported(root):
    _coco_ood(root, ["toaster", "kite", "toothbrush"])
    r = check_dataset("coco_ood_val")
    assert (r.images, r.annotations) == (2, 4)
    assert r.problems == ["has 2 images, expected 930", "has 4 boxes, expected 2824"]


def test_voc_class_in_ood_split(root):
    _coco_ood(root, ["car", "dining table", "toothbrush"])  # COCO spellings of VOC classes
    r = check_dataset("coco_ood_val")
    (p,) = [p for p in r.problems if "known classes" in p]
    assert "3 box(es)" in p and "car x2" in p and "diningtable x1" in p


def test_unreadable_and_resized_images_with_images_flag(root):
    oi = root / "OpenImages" / "ood_classes_rm_overlap"
    data = coco_dict([(1, "person")], [("ab12", "ab12.jpg", 30, 40), ("cd34", "cd34.jpg", 20, 20)], [])
    write_coco(oi / "COCO-Format" / "val_coco_format.json", data, oi / "images")
    r = check_dataset("openimages_ood_val")
    assert r.ok and r.images == 2 and r.annotations == 0 and "no box annotations" in r.notes[0]
    (oi / "images" / "ab12.jpg").write_bytes((oi / "images" / "ab12.jpg").read_bytes()[:100])
    assert check_dataset("openimages_ood_val").ok  # without --images only presence is checked
    data["images"][1]["width"] = 21
    write_coco(oi / "COCO-Format" / "val_coco_format.json", data)
    r = check_dataset("openimages_ood_val", images=True, progress=False)
    assert any("1 unreadable image(s)" in p and "ab12.jpg" in p and "truncated" in p for p in r.problems)
    assert any("cd34.jpg is 20x20, annotated 21x20" in p for p in r.problems)


def test_digits_are_checked_not_generated(root):
    r = check_dataset("digits_ood_ood")
    assert r.ok and "generated on first use" in r.notes[0] and not (root / "digits_ood").exists()
    ensure_digits_ood(root / "digits_ood", DigitsOODConfig(**TINY_DIGITS), progress=False)
    for split in ("train", "ood", "mixed"):
        r = check_dataset(f"digits_ood_{split}", images=True, progress=False)
        assert r.ok and r.images == TINY_DIGITS["images"][split], r.format()


def test_main_exit_codes(root, capsys):
    ensure_digits_ood(root / "digits_ood", DigitsOODConfig(**TINY_DIGITS), progress=False)
    assert main(["--root", str(root), "digits_ood_val", "digits_ood_test"]) == 0
    assert main(["--root", str(root), "digits_ood_val", "voc_2007_test"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] voc_2007_test" in out and "1 of 2 dataset(s) OK" in out
    assert main(["--root", str(root), "no_such_set"]) == 2


def test_script_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "datasets" / "check.py"), "--root", str(tmp_path),
                           "voc_custom_val"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "[FAIL] voc_custom_val" in proc.stdout and "VOC_0712_converted" in proc.stdout

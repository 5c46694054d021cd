import json

import numpy as np
import pytest

from ood_det.data import digits_ood as D
from ood_det.data.digits_ood import (
    DIGITS_SPLITS, DigitsOODConfig, DigitsOODError, digits_ood_status, ensure_digits_ood, load_digits_ood,
)
from ood_det.data.io import read_image

from .conftest import TINY_DIGITS


@pytest.fixture(scope="module")
def sources():
    return D.load_source_digits()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny DigitsOOD shared by the read-only tests."""
    root = tmp_path_factory.mktemp("digits")
    cfg = DigitsOODConfig(**TINY_DIGITS)
    manifest = ensure_digits_ood(root, cfg, progress=False)
    return root, cfg, manifest


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.name != ".lock"}


def test_layout_counts_and_json(tiny):
    root, cfg, manifest = tiny
    assert manifest["params"] == cfg.to_dict()
    for split in DIGITS_SPLITS:
        n = cfg.images[split]
        assert len(list((root / "images" / split).glob("*.png"))) == n == manifest["counts"][split]["images"]
        coco = json.loads((root / "annotations" / f"{split}.json").read_text())
        assert [c["name"] for c in coco["categories"]] == [str(d) for d in range(10)] + ["photo"]
        assert [c["id"] for c in coco["categories"]] == list(range(1, 12))
        assert len(coco["annotations"]) == manifest["counts"][split]["annotations"]
    assert set(manifest["files"]) == {f"images/{s}/{s}_{i:05d}.png" for s in DIGITS_SPLITS
                                      for i in range(cfg.images[s])} | {f"annotations/{s}.json" for s in DIGITS_SPLITS}


def test_labels_match_their_source_digits(tiny, sources):
    root, cfg, _ = tiny
    _, targets = sources
    for split in DIGITS_SPLITS:
        if split in D.PHOTO_SPLITS:
            continue
        for d in load_digits_ood(split, root, regenerate="never"):
            for a in d["annotations"]:
                true_digit = int(targets[a["source_index"]])
                if a["category_id"] >= 0:
                    assert cfg.id_digits[a["category_id"]] == true_digit
                else:
                    assert a["unknown_class"] == str(true_digit)


def test_ood_split_holds_only_ood_digits_and_mixed_holds_both(tiny):
    root, cfg, _ = tiny
    ood = load_digits_ood("ood", root, regenerate="never")
    anns = [a for d in ood for a in d["annotations"]]
    assert anns and all(a["category_id"] == -1 and a["unknown_class"] in {"5", "6", "7", "8", "9"} for a in anns)
    coco = json.loads((root / "annotations" / "ood.json").read_text())  # the json keeps the true digit
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert {names[a["category_id"]] for a in coco["annotations"]} <= {"5", "6", "7", "8", "9"}
    for split in ("train", "val", "test"):
        assert all(0 <= a["category_id"] < 5 for d in load_digits_ood(split, root, regenerate="never")
                   for a in d["annotations"])
    for d in load_digits_ood("mixed", root, regenerate="never"):
        labels = [a["category_id"] for a in d["annotations"]]
        assert min(labels) == -1 and max(labels) >= 0


def test_train_sources_disjoint_from_other_splits(tiny, sources):
    root, cfg, _ = tiny
    digit_splits = [s for s in DIGITS_SPLITS if s not in D.PHOTO_SPLITS]
    used = {s: {a["source_index"] for d in load_digits_ood(s, root, regenerate="never") for a in d["annotations"]}
            for s in digit_splits}
    others = set().union(*(used[s] for s in digit_splits if s != "train"))
    assert used["train"] and others and not used["train"] & others
    # and the pools themselves: disjoint, covering all 1,797 images, stratified per digit
    _, targets = sources
    pools = D.split_sources(targets, seed=0)
    allidx = np.concatenate(list(pools.values()))
    assert len(allidx) == len(set(allidx.tolist())) == 1797
    for d in range(10):
        n = (targets == d).sum()
        assert abs((targets[pools["train"]] == d).sum() - 0.6 * n) <= 1
        assert abs((targets[pools["val"]] == d).sum() - 0.2 * n) <= 1


def test_boxes_inside_canvas_disjoint_and_on_ink(tiny):
    root, cfg, _ = tiny
    H, W = cfg.canvas_size
    for split in DIGITS_SPLITS:
        for d in load_digits_ood(split, root, regenerate="never"):
            img = read_image(d["file_name"])[..., 0].astype(float)
            assert img.shape == (H, W) == (d["height"], d["width"])
            boxes = np.array([a["bbox"] for a in d["annotations"]])
            assert 1 <= len(boxes) <= cfg.objects_per_image[1]
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= W).all() and (boxes[:, 3] <= H).all()
            iou = D.box_iou(boxes, boxes)
            assert np.allclose(iou[~np.eye(len(boxes), dtype=bool)], 0)
            inside = np.zeros_like(img, bool)
            for x0, y0, x1, y1 in boxes.astype(int):
                # a digit's ink is bright (dimmer under the contrast / blur shifts) ...
                assert img[y0:y1, x0:x1].max() > (40 if split == "shift" else 100)
                inside[y0:y1, x0:x1] = True
            assert img[~inside].mean() < 60  # ... on a dark background


def test_box_iou_matches_torchvision():
    import torch
    from torchvision.ops import box_iou as tv_box_iou

    rng = np.random.default_rng(0)
    a = np.sort(rng.uniform(0, 50, (6, 4)).reshape(6, 2, 2), axis=1).transpose(0, 2, 1).reshape(6, 4)
    b = np.sort(rng.uniform(0, 50, (5, 4)).reshape(5, 2, 2), axis=1).transpose(0, 2, 1).reshape(5, 4)
    ref = tv_box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(D.box_iou(a, b), ref, rtol=1e-6, atol=1e-9)


def test_deterministic_for_a_seed(tmp_path, tiny):
    _, cfg, manifest = tiny
    again = ensure_digits_ood(tmp_path / "a", cfg, progress=False)
    assert again["files"] == manifest["files"]  # same sizes and sha1 for every file
    other = ensure_digits_ood(tmp_path / "b", DigitsOODConfig(**{**TINY_DIGITS, "seed": 1}), progress=False)
    assert other["files"] != manifest["files"]


def test_second_call_reuses_without_rewriting(tmp_path):
    cfg = DigitsOODConfig(**TINY_DIGITS)
    ensure_digits_ood(tmp_path, cfg, progress=False)
    before = _mtimes(tmp_path)
    ensure_digits_ood(tmp_path, cfg, progress=False)
    ensure_digits_ood(tmp_path, None, progress=False)  # None: any complete dataset is reused
    load_digits_ood("train", tmp_path)
    assert _mtimes(tmp_path) == before


@pytest.mark.parametrize("damage,state,params_survive", [
    (lambda r: (r / "images" / "val" / "val_00001.png").unlink(), "corrupt", True),
    (lambda r: (r / "images" / "ood" / "ood_00000.png").write_bytes(b"x"), "corrupt", True),
    (lambda r: (r / "annotations" / "test.json").write_text(
        (r / "annotations" / "test.json").read_text().replace('"bbox": [', '"bbox": [1', 1)), "corrupt", True),
    (lambda r: (r / "manifest.json").unlink(), "partial", False),
    (lambda r: (r / "manifest.json").write_text("{"), "corrupt", False),
])
def test_damage_is_detected_then_reported_or_regenerated(tmp_path, damage, state, params_survive):
    cfg = DigitsOODConfig(**TINY_DIGITS)
    good = ensure_digits_ood(tmp_path, cfg, progress=False)
    damage(tmp_path)
    assert digits_ood_status(tmp_path, cfg)[0] == state
    with pytest.raises(DigitsOODError, match=r"python -m ood_det.data.digits_ood"):
        ensure_digits_ood(tmp_path, cfg, regenerate="never")
    with pytest.raises(DigitsOODError):
        load_digits_ood("train", tmp_path, regenerate="never")
    # with no parameters given, a readable manifest's parameters are used to rebuild the same data
    fixed = ensure_digits_ood(tmp_path, None if params_survive else cfg, regenerate="auto", progress=False)
    assert fixed["files"] == good["files"]
    assert digits_ood_status(tmp_path, cfg)[0] == "ok"


def test_same_size_corruption_needs_checksums(tmp_path):
    cfg = DigitsOODConfig(**TINY_DIGITS)
    ensure_digits_ood(tmp_path, cfg, progress=False)
    p = tmp_path / "images" / "train" / "train_00002.png"
    data = bytearray(p.read_bytes())
    data[-20] ^= 0xFF
    p.write_bytes(bytes(data))
    assert digits_ood_status(tmp_path, cfg, verify="size")[0] == "ok"
    state, msg, _ = digits_ood_status(tmp_path, cfg, verify="checksum")
    assert state == "corrupt" and "train_00002.png has a wrong checksum" in msg


def test_changed_parameters(tmp_path):
    cfg = DigitsOODConfig(**TINY_DIGITS)
    ensure_digits_ood(tmp_path, cfg, progress=False)
    other = DigitsOODConfig(**{**TINY_DIGITS, "seed": 3, "id_digits": (1, 2), "ood_digits": (7,)})
    state, msg, _ = digits_ood_status(tmp_path, other)
    assert state == "changed" and "seed: 0 on disk, 3 wanted" in msg
    with pytest.raises(DigitsOODError, match="other parameters"):
        ensure_digits_ood(tmp_path, other, regenerate="never")
    m = ensure_digits_ood(tmp_path, other, progress=False)
    assert m["params"]["seed"] == 3 and D.digits_ood_class_names(tmp_path) == ("1", "2")
    labels = {a.get("unknown_class", a["category_id"]) for d in load_digits_ood("mixed", tmp_path)
              for a in d["annotations"]}
    assert labels <= {0, 1, "7"}


def test_regeneration_leaves_foreign_files_alone(tmp_path):
    cfg = DigitsOODConfig(**TINY_DIGITS)
    ensure_digits_ood(tmp_path, cfg, progress=False)
    mine = tmp_path / "images" / "train" / "notes.txt"
    mine.write_text("keep me")
    ensure_digits_ood(tmp_path, cfg, regenerate="always", progress=False)
    assert mine.read_text() == "keep me"


def test_absent_directory(tmp_path):
    assert digits_ood_status(tmp_path / "none")[0] == "absent"
    with pytest.raises(DigitsOODError, match="no DigitsOOD"):
        load_digits_ood("val", tmp_path / "none", regenerate="never")
    with pytest.raises(KeyError, match="splits"):
        load_digits_ood("nope", tmp_path)


def test_config_validation():
    with pytest.raises(ValueError, match="overlap"):
        DigitsOODConfig(id_digits=(0, 1), ood_digits=(1, 2))
    with pytest.raises(ValueError, match="digit_height"):
        DigitsOODConfig(canvas_size=(32, 32), digit_height=(14, 40))
    with pytest.raises(ValueError, match="source_fractions"):
        DigitsOODConfig(source_fractions=(0.5, 0.5, 0.5))
    assert DigitsOODConfig.from_dict(DigitsOODConfig(seed=5).to_dict()) == DigitsOODConfig(seed=5)


def test_cli(tmp_path, capsys):
    args = ["--root", str(tmp_path), "--images", "train=2,val=1,test=1,ood=1,mixed=1", "--canvas-size", "64",
            "--seed", "4"]
    assert D.main(args) == 0
    out = capsys.readouterr().out
    assert "mixed" in out and "OOD" in out
    assert json.loads((tmp_path / "manifest.json").read_text())["params"]["seed"] == 4
    assert D.main(args + ["--regenerate", "never"]) == 0
    assert D.main(["--root", str(tmp_path), "--seed", "5", "--regenerate", "never"]) == 1
    assert "other parameters" in capsys.readouterr().out


def test_far_ood_splits_are_photograph_patches_from_disjoint_photographs(tiny):
    """far / val_far hold only patches of real photographs (unknown objects named "photo"); the
    validation split cuts them from other photographs than the test split."""
    root, cfg, _ = tiny
    for split in D.PHOTO_SPLITS:
        anns = [a for d in load_digits_ood(split, root, regenerate="never") for a in d["annotations"]]
        assert anns and all(a["category_id"] == -1 and a["unknown_class"] == "photo" for a in anns)
    assert not set(D.PHOTO_SOURCES["test"]) & set(D.PHOTO_SOURCES["val"])
    for pool in ("test", "val"):
        photos = D.load_photo_sources(pool)
        assert len(photos) == 2 and all(p.ndim == 2 and p.dtype == np.float32 and 0 <= p.min() < p.max() <= 1
                                        for p in photos)
    a, b = D.load_photo_sources("test"), D.load_photo_sources("val")
    assert not any(x.shape == y.shape and np.array_equal(x, y) for x in a for y in b)


def test_validation_ood_split_uses_only_validation_digits(tiny, sources):
    root, cfg, _ = tiny
    _, targets = sources
    pools = D.split_sources(targets, seed=cfg.seed)
    val_ood = {a["source_index"] for d in load_digits_ood("val_ood", root, regenerate="never") for a in d["annotations"]}
    test_side = {a["source_index"] for s in ("test", "ood", "mixed", "shift")
                 for d in load_digits_ood(s, root, regenerate="never") for a in d["annotations"]}
    assert val_ood and val_ood <= set(pools["val"].tolist()) and not val_ood & test_side
    assert all(str(int(targets[i])) in cfg.ood_class_names for i in val_ood)


def test_shift_split_is_id_digits_under_a_covariate_shift(tiny, sources):
    """shift: known digits of the test pool (labelled as such), each image under one of the three
    changes (at least two kinds among six images)."""
    root, cfg, _ = tiny
    _, targets = sources
    dicts = load_digits_ood("shift", root, regenerate="never")
    assert all(0 <= a["category_id"] < len(cfg.id_digits) for d in dicts for a in d["annotations"])
    src, tg = D.load_source_digits()
    pools = D._pools_by_digit(cfg, tg)["test"]
    kinds = set()
    for i in range(cfg.images["shift"]):
        rng = np.random.default_rng([cfg.seed, D._SPLIT_CODE["shift"], i])
        kinds.add(D.SHIFT_KINDS[int(rng.integers(len(D.SHIFT_KINDS)))])
        img, objs = D.render_image(cfg, "shift", i, src, pools)
        assert all(o["source_index"] in set(np.concatenate(list(pools.values())).tolist()) for o in objs)
    assert len(kinds) >= 2  # 6 images draw more than one kind


def test_data_of_an_older_generator_is_completed_with_the_new_splits(tmp_path, caplog):
    """A dataset written before the far / shift / validation-OOD splits existed is regenerated
    with them (at their default sizes), keeping its other parameters, and says so."""
    import logging

    old = dict(TINY_DIGITS, images={k: v for k, v in TINY_DIGITS["images"].items()
                                    if k in ("train", "val", "test", "ood", "mixed")})
    ensure_digits_ood(tmp_path, DigitsOODConfig(**old), progress=False)
    mpath = tmp_path / D.MANIFEST_NAME
    m = json.loads(mpath.read_text())
    m["generator_version"] = 1
    m["params"]["images"] = {k: m["params"]["images"][k] for k in ("train", "val", "test", "ood", "mixed")}
    mpath.write_text(json.dumps(m))
    with caplog.at_level(logging.WARNING):
        manifest = ensure_digits_ood(tmp_path, progress=False)
    assert "regenerating DigitsOOD" in caplog.text and "generator version 1" in caplog.text
    assert manifest["generator_version"] == D.GENERATOR_VERSION
    assert manifest["params"]["canvas_size"] == [64, 64]  # the old parameters are kept
    for split in ("far", "shift", "val_ood", "val_far"):
        assert manifest["counts"][split]["images"] == D.DEFAULT_IMAGES[split]
    assert len(load_digits_ood("far", tmp_path, regenerate="never")) == D.DEFAULT_IMAGES["far"]

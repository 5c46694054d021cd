"""ood_det.tv.data: targets, flip, corrupt / missing images, empty images, samplers."""
import itertools

import pytest
import torch

from ood_det.tv.data import DetectionDataset, InfiniteSampler, annotation_boxes, build_test_loader, collate


def test_targets_use_torchvision_labels_and_drop_unknowns(tiny_detection_dataset):
    rec = dict(tiny_detection_dataset["mixed"][0])
    ds = DetectionDataset([rec], is_train=True, flip="none")
    item = ds[0]
    cats = [a["category_id"] for a in rec["annotations"] if a["category_id"] >= 0]
    assert item["target"]["labels"].tolist() == [c + 1 for c in cats]  # 1..K, unknowns gone
    assert item["image"].shape == (3, 64, 64) and 0 <= float(item["image"].min()) <= float(item["image"].max()) <= 1


def test_xywh_boxes_and_bad_mode():
    rec = {"file_name": "x", "annotations": [{"bbox": [1, 2, 3, 4], "bbox_mode": 1, "category_id": 0},
                                             {"bbox": [0, 0, 5, 5], "category_id": 1, "iscrowd": 1}]}
    boxes, cats = annotation_boxes(rec)
    assert boxes.tolist() == [[1, 2, 4, 6]] and cats.tolist() == [0]
    with pytest.raises(ValueError, match="bbox_mode=4"):
        annotation_boxes({"file_name": "y", "annotations": [{"bbox": [0, 0, 1, 1], "bbox_mode": 4, "category_id": 0}]})


def test_horizontal_flip_moves_boxes_with_pixels(tiny_detection_dataset, monkeypatch):
    rec = tiny_detection_dataset["train"][0]
    plain = DetectionDataset([rec], is_train=True, flip="none")[0]
    ds = DetectionDataset([rec], is_train=True, flip="horizontal")
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.tensor(0.0))  # always flip
    flipped = ds[0]
    w = 64
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    b, fb = plain["target"]["boxes"], flipped["target"]["boxes"]
    assert torch.allclose(fb[:, 0], w - b[:, 2]) and torch.allclose(fb[:, 2], w - b[:, 0])
    assert torch.equal(fb[:, 1::2], b[:, 1::2])
    # the object's pixels are inside the flipped box: mean brightness inside stays the same
    for ob, nb in zip(b.long(), fb.long()):
        a = plain["image"][:, ob[1]:ob[3], ob[0]:ob[2]].mean()
        c = flipped["image"][:, nb[1]:nb[3], nb[0]:nb[2]].mean()
        assert torch.allclose(a, c)
    with pytest.raises(ValueError, match="RANDOM_FLIP"):
        DetectionDataset([rec], is_train=True, flip="vertical")


def test_corrupt_and_missing_images_are_skipped_and_named(tiny_detection_dataset, tmp_path, caplog):
    dicts = [dict(d) for d in tiny_detection_dataset["val"]]
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    dicts[1] = dict(dicts[1], file_name=str(bad))
    dicts[2] = dict(dicts[2], file_name=str(tmp_path / "missing.png"))
    batches = list(build_test_loader(dicts, batch_size=3))
    skipped = [s for b in batches for s in b["skipped"]]
    assert skipped == [str(bad), str(tmp_path / "missing.png")]
    assert sum(len(b["images"]) for b in batches) == len(dicts) - 2
    assert [i for b in batches for i in b["indices"]] == [0, 3]
    assert "corrupt.png" in caplog.text


def test_images_without_objects_are_fine(tiny_detection_dataset):
    rec = dict(tiny_detection_dataset["val"][0], annotations=[])
    item = DetectionDataset([rec], is_train=True)[0]
    assert item["target"]["boxes"].shape == (0, 4) and item["target"]["labels"].shape == (0,)
    batch = collate([item])
    assert len(batch["images"]) == 1 and batch["skipped"] == []


def test_infinite_sampler_shards_and_repeats():
    s0 = list(itertools.islice(iter(InfiniteSampler(5, seed=3, rank=0, world_size=2)), 6))
    s1 = list(itertools.islice(iter(InfiniteSampler(5, seed=3, rank=1, world_size=2)), 6))
    # the first epoch is a permutation split between the ranks
    assert sorted(s0[:3] + s1[:2]) == [0, 1, 2, 3, 4]
    assert s0 == list(itertools.islice(iter(InfiniteSampler(5, seed=3, rank=0, world_size=2)), 6))
    with pytest.raises(ValueError):
        InfiniteSampler(0, seed=0)

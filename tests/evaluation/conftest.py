"""Small synthetic scenes shared by the evaluation tests."""
import numpy as np
import pytest


def box(x, y, w=10.0, h=10.0):
    return [float(x), float(y), float(x + w), float(y + h)]


def image(image_id, anns, size=100):
    return {"file_name": f"{image_id}.jpg", "image_id": image_id, "height": size, "width": size,
            "annotations": [dict(bbox=a[0], bbox_mode=0, category_id=a[1], **(a[2] if len(a) > 2 else {}))
                            for a in anns]}


def make_scene(seed, n_images=6, num_classes=3, unknown=False, jitter=1.0):
    """Well-separated GT on a grid (at most one GT per cell), detections jittered from GT plus
    background false positives, each with an ``msp``-like OOD score (high on known objects, low
    on unknown ones and background)."""
    rng = np.random.default_rng(seed)
    dicts, preds = [], {}
    for i in range(n_images):
        anns, boxes, labels, scores, ood = [], [], [], [], []
        cells = rng.permutation(16)[: rng.integers(1, 6)]
        for cell in cells:
            x, y = 25.0 * (cell % 4) + 2, 25.0 * (cell // 4) + 2
            is_unk = unknown and rng.random() < 0.4
            c = -1 if is_unk else int(rng.integers(num_classes))
            anns.append((box(x, y), c, {"unknown_class": "thing"} if is_unk else {}))
            if rng.random() < 0.8:  # detected
                b = np.array(box(x, y)) + np.clip(rng.normal(0, jitter, 4), -3, 3)  # stays a valid box
                boxes.append(b)
                labels.append(int(rng.integers(num_classes)) if (is_unk or rng.random() < 0.1) else c)
                scores.append(float(rng.uniform(0.3, 1.0)))
                ood.append(float(rng.uniform(0.0, 0.5) if is_unk else rng.uniform(0.3, 1.0)))
        for _ in range(rng.integers(0, 3)):  # background false positives, far from the GT cells
            boxes.append(np.array(box(rng.uniform(0, 90), rng.uniform(102, 190))))
            labels.append(int(rng.integers(num_classes)))
            scores.append(float(rng.uniform(0.05, 0.8)))
            ood.append(float(rng.uniform(0.0, 0.7)))
        dicts.append(image(i, anns, size=200))
        preds[i] = {"boxes": np.array(boxes).reshape(-1, 4), "labels": np.array(labels, dtype=np.int64),
                    "scores": np.array(scores), "ood_scores": {"msp": np.array(ood), "energy": 3 * np.array(ood)}}
    return dicts, preds


@pytest.fixture
def scene():
    return make_scene

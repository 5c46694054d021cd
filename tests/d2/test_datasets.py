"""register_ood_datasets: ood_det's catalog mirrored into detectron2's catalogs, idempotently."""
import pytest

pytest.importorskip("detectron2", reason="detectron2 is not installed (it is on no package registry; see docs/detectron2.md)")

from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from ood_det.d2 import register_ood_datasets  # noqa: E402
from ood_det.data import catalog  # noqa: E402

NAME = "d2_test_tiny_catalog_set"


def _dicts():
    return [{"file_name": "a.png", "image_id": 7, "height": 10, "width": 12, "annotations": [
        {"bbox": [1, 1, 5, 5], "bbox_mode": 0, "category_id": 1},
        {"bbox": [2, 2, 6, 6], "bbox_mode": 0, "category_id": -1, "unknown_class": "cat"},
    ]}]


@pytest.fixture
def tiny_set():
    catalog.register(NAME, _dicts, overwrite=True, thing_classes=["a", "b"], distribution="mixed",
                     evaluator_type="ood")
    yield NAME
    catalog.remove(NAME)
    for c in (DatasetCatalog, MetadataCatalog):
        if NAME in c.list():
            c.remove(NAME)


def test_every_catalog_dataset_is_registered():
    register_ood_datasets()
    assert register_ood_datasets() == []  # second call: nothing to do
    for name in catalog.names():
        assert name in DatasetCatalog.list()
        md = catalog.metadata(name)
        assert MetadataCatalog.get(name).get("thing_classes") == md.get("thing_classes")
    # detectron2's own voc_2007_test is replaced by the catalog's (same classes, our root)
    assert MetadataCatalog.get("voc_2007_test").get("root") == catalog.metadata("voc_2007_test")["root"]


def test_lazy_loader_and_reregistration(tiny_set):
    assert register_ood_datasets([tiny_set]) == [tiny_set]
    assert register_ood_datasets([tiny_set]) == []
    assert DatasetCatalog.get(tiny_set) == _dicts()
    md = MetadataCatalog.get(tiny_set)
    assert md.thing_classes == ["a", "b"] and md.distribution == "mixed"
    # the catalog entry changes (e.g. another datasets root): re-registered with new metadata
    catalog.register(tiny_set, lambda: _dicts()[:0], overwrite=True, thing_classes=["a", "b"],
                     distribution="ood", evaluator_type="ood")
    assert register_ood_datasets([tiny_set]) == [tiny_set]
    assert MetadataCatalog.get(tiny_set).distribution == "ood"
    assert DatasetCatalog.get(tiny_set) == []

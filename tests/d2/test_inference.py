"""D2InferenceModel: RGB images in, numpy boxes / labels / scores / ood_scores out; checkpoints
through the engine's Predictor."""
import numpy as np
import pytest

pytest.importorskip("detectron2", reason="detectron2 is not installed (it is on no package registry; see docs/detectron2.md)")

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402

from ood_det.d2.inference import D2InferenceModel  # noqa: E402
from ood_det.d2.train_net import add_ood_checkpointables  # noqa: E402

from .conftest import IMAGE_SIZE, NUM_CLASSES, make_tiny_cfg  # noqa: E402


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
            rng.integers(0, 256, (50, 90, 3), dtype=np.uint8)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return D2InferenceModel(make_tiny_cfg("softmax"))


def test_outputs(model):
    ims = _images()
    outs = model.predict_images(ims)
    assert len(outs) == 2
    for im, o in zip(ims, outs):
        h, w = im.shape[:2]
        n = len(o["scores"])
        assert n > 0
        assert o["boxes"].shape == (n, 4) and o["boxes"].dtype == np.float32
        assert o["labels"].dtype == np.int64 and set(o["labels"]) <= set(range(NUM_CLASSES))
        assert o["ood_scores"].shape == (n,) and o["ood_scores"].dtype == np.float32
        assert (o["boxes"][:, [0, 2]] <= w + 1e-3).all() and (o["boxes"][:, [1, 3]] <= h + 1e-3).all()
        assert (o["boxes"] >= 0).all()
        assert ((o["ood_scores"] > 0) & (o["ood_scores"] <= 1)).all()  # msp
    assert model.predict_images([]) == []


def test_rgb_input_is_converted_to_the_model_format(model):
    """Same as calling the detectron2 model with the BGR tensor directly (no resize at 64 px)."""
    im = _images()[0]
    ours = model.predict_images([im])[0]
    with torch.no_grad():
        ref = model.model([{"image": torch.as_tensor(im[:, :, ::-1].astype("float32").transpose(2, 0, 1).copy()),
                            "height": IMAGE_SIZE, "width": IMAGE_SIZE}])[0]["instances"]
    np.testing.assert_allclose(ours["boxes"], ref.pred_boxes.tensor.numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ours["ood_scores"], ref.ood_scores.numpy(), rtol=1e-5)


def test_score_override(model):
    im = _images()[:1]
    a = model.predict_images(im)[0]
    b = model.predict_images(im, score="energy")[0]
    np.testing.assert_allclose(a["boxes"], b["boxes"])
    assert not np.allclose(a["ood_scores"], b["ood_scores"])
    assert model.predictor.ood_score_name is None  # restored
    with pytest.raises(ValueError, match="does not support"):
        model.predict_images(im, score="mmles")
    with pytest.raises(ValueError, match="H x W x 3"):
        model.predict_images([np.zeros((4, 4), np.uint8)])


def test_checkpoint_through_the_engine_predictor(tmp_path):
    from ood_det.tv.build import build_inference_model
    from ood_det.apps.predictor import Predictor

    torch.manual_seed(1)
    cfg = make_tiny_cfg("isomaxplus")
    m = build_inference_model(cfg)
    assert isinstance(m, D2InferenceModel)
    m.box_classifier.set_threshold("mds", -0.75)
    ck = add_ood_checkpointables(DetectionCheckpointer(m.model, save_dir=str(tmp_path)), cfg, m.model)
    ck.save("model_final")
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(cfg.dump())
    p = Predictor.from_checkpoint(str(cfg_file), str(tmp_path / "model_final.pth"))
    assert p.threshold() == -0.75 and p.class_names == [f"class_{i}" for i in range(NUM_CLASSES)]
    ims = _images()
    for x, y in zip(p(ims), m.predict_images(ims)):
        for k in ("boxes", "labels", "scores", "ood_scores"):
            np.testing.assert_allclose(x[k], y[k], rtol=1e-5, atol=1e-5)
    # D2InferenceModel.load reads the same file
    m2 = D2InferenceModel(cfg, weights=str(tmp_path / "model_final.pth"))
    assert m2.box_classifier.threshold("mds") == -0.75

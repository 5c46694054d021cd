"""D2InferenceModel: RGB images in, the inference contract out (numpy boxes / labels / scores /
roi_conf / ood_scores by name); checkpoints through the Predictor."""
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
        assert list(o["ood_scores"]) == ["msp"]  # default: the configured score only
        msp = o["ood_scores"]["msp"]
        assert msp.shape == (n,) and msp.dtype == np.float32 and o["roi_conf"].shape == (n,)
        assert (o["boxes"][:, [0, 2]] <= w + 1e-3).all() and (o["boxes"][:, [1, 3]] <= h + 1e-3).all()
        assert (o["boxes"] >= 0).all()
        assert ((msp > 0) & (msp <= 1)).all()
        # the box's class score is one of its ROI's foreground probabilities: never above roi_conf
        assert (o["roi_conf"] >= o["scores"] - 1e-6).all() and (o["roi_conf"] <= 1).all()
    assert model.predict_images([]) == []


def test_rgb_input_is_converted_to_the_model_format(model):
    """Same as calling the detectron2 model with the BGR tensor directly (no resize at 64 px)."""
    im = _images()[0]
    ours = model.predict_images([im])[0]
    with torch.no_grad():
        ref = model.model([{"image": torch.as_tensor(im[:, :, ::-1].astype("float32").transpose(2, 0, 1).copy()),
                            "height": IMAGE_SIZE, "width": IMAGE_SIZE}])[0]["instances"]
    np.testing.assert_allclose(ours["boxes"], ref.pred_boxes.tensor.numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ours["ood_scores"]["msp"], ref.ood_scores.numpy(), rtol=1e-5)
    # ood_score_table holds every supported score, in the head's order
    head = model.box_classifier.head
    assert ref.ood_score_table.shape == (len(ref), len(head.supported_scores))
    np.testing.assert_allclose(ref.ood_score_table[:, head.supported_scores.index("msp")].numpy(),
                               ref.ood_scores.numpy(), rtol=1e-6)


def test_several_scores_at_once(model):
    im = _images()[:1]
    a = model.predict_images(im)[0]
    b = model.predict_images(im, scores=["energy", "msp"])[0]
    assert list(b["ood_scores"]) == ["energy", "msp"]
    np.testing.assert_allclose(a["boxes"], b["boxes"])
    np.testing.assert_allclose(a["ood_scores"]["msp"], b["ood_scores"]["msp"])
    assert not np.allclose(b["ood_scores"]["msp"], b["ood_scores"]["energy"])
    assert not hasattr(model.predictor, "ood_score_name")  # nothing is toggled on the module
    with pytest.raises(ValueError, match="supported: msp"):
        model.predict_images(im, scores=["mmles"])
    with pytest.raises(ValueError, match="H x W x 3"):
        model.predict_images([np.zeros((4, 4), np.uint8)])


def test_checkpoint_through_the_predictor(tmp_path):
    from ood_det.apps.predictor import Predictor
    from ood_det.d2.train_net import build_inference_model

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
        for k in ("boxes", "labels", "scores"):
            np.testing.assert_allclose(x[k], y[k], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(x["ood_scores"], y["ood_scores"]["mds"], rtol=1e-5, atol=1e-5)
    # D2InferenceModel.load reads the same file
    m2 = D2InferenceModel(cfg, weights=str(tmp_path / "model_final.pth"))
    assert m2.box_classifier.threshold("mds") == -0.75

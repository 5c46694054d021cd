import pytest
import torch


@pytest.fixture
def tiny_model(tiny_opts):
    """``make(*overrides, class_names=...) -> (OODFasterRCNN, cfg)``: a very small model."""
    from ood_det.apps.config import load_config
    from ood_det.tv.model import build_tv_model

    def make(*opts, class_names=("square", "bar")):
        cfg = load_config(None, tiny_opts + list(opts))
        torch.manual_seed(0)
        return build_tv_model(cfg, list(class_names) if class_names else None), cfg

    return make

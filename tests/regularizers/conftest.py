"""A tiny stand-in head for the regularizer tests (independent of ood_det.heads)."""
import pytest
import torch
from torch import nn


class TinyHead(nn.Module):
    """Linear ``[R, D] -> [R, K + 1]`` head following the OODHead conventions (background last).

    ``confidence_logits`` multiplies by ``conf_scale`` so tests can tell it was used.
    """

    name = "tiny"

    def __init__(self, in_features: int, num_classes: int, conf_scale: float = 1.0):
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        self.conf_scale = conf_scale
        self.linear = nn.Linear(in_features, num_classes + 1)

    def forward(self, features):
        return self.linear(features)

    def score_logits(self, logits):
        return logits[:, : self.num_classes]

    def confidence_logits(self, logits):
        return self.conf_scale * logits


@pytest.fixture
def tiny_head():
    def make(in_features=6, num_classes=3, conf_scale=1.0, seed=0):
        torch.manual_seed(seed)
        return TinyHead(in_features, num_classes, conf_scale)

    return make

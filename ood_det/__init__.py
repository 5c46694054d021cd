"""ood_det: out-of-distribution detection heads for object detectors (detectron2 and torchvision)."""
__version__ = "0.1.0"

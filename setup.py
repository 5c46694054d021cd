"""ood_det: out-of-distribution detection heads for object detectors.

Install: ``pip install -e .`` (torch + torchvision + the rest). detectron2 is optional and is on no
package registry: install it from its repository first (see README.md), then ``pip install -e .[d2]``.
"""
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="ood_det",
    version="0.1.0",
    description="Out-of-distribution box heads (IsoMax, IsoMax+, DisMax, energy, VOS, CFL, GReg) "
    "for detectron2 and torchvision detectors",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["ood_det", "ood_det.*"]),
    install_requires=[
        # torch and torchvision must be a matching pair whose compiled ops load
        # (torchvision.ops.nms); CI pins one in constraints.txt
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy",
        "scipy",
        "scikit-learn",
        "pycocotools",
        "opencv-python-headless",
        "tqdm",
        "matplotlib",
        "fvcore",
        "pyyaml",
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout"],
        # detectron2 itself must be installed from its repository (it is on no registry); these are
        # its runtime dependencies, and setuptools < 82 for detectron2.model_zoo (pkg_resources)
        "d2": ["setuptools<82", "iopath", "omegaconf", "hydra-core", "cloudpickle", "tabulate", "termcolor",
               "yacs", "black"],
    },
    entry_points={
        "console_scripts": [
            "ood-det-train=ood_det.apps.train:cli",
            "ood-det-score=ood_det.apps.score:main",
        ]
    },
)

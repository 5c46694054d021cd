#!/usr/bin/env python
"""Check the datasets before training: ``python datasets/check.py [--root R] [--images] [names...]``.

Reports, per registered dataset, missing files and folders, image / box counts that differ from the
published ones, missing or (with ``--images``) unreadable images, and known classes inside an OOD
split. Exit code 1 when anything is wrong. The logic lives in :mod:`ood_det.data.check`.
"""
import sys
from pathlib import Path

try:
    from ood_det.data.check import main
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ood_det.data.check import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Train and evaluate an OOD-aware detector: ``python tools/train_net.py --config CONFIG.yaml [--eval-only] [KEY VALUE ...]``."""
import sys

from ood_det.apps.train import cli

if __name__ == "__main__":
    sys.exit(cli())

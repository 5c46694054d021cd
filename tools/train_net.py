#!/usr/bin/env python
"""Train and evaluate an OOD-aware detector: ``python tools/train_net.py --config CONFIG.yaml [--eval-only] [KEY VALUE ...]``."""
from ood_det.engine.launch import main

if __name__ == "__main__":
    main()

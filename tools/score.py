#!/usr/bin/env python
"""Score images and videos and mark unknown (OOD) objects: a thin wrapper of ``ood-det-score``.

    python tools/score.py --config X.yaml --weights model.pth --input PATH... --output OUT/

See ``python tools/score.py --help`` and docs/score.md.
"""
import sys

from ood_det.apps.score import main

if __name__ == "__main__":
    sys.exit(main())

"""Where datasets live: ``$OOD_DET_DATASETS``, else the checkout's ``datasets/`` folder when
``ood_det`` runs from a source checkout, else ``./datasets``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

ENV_VAR = "OOD_DET_DATASETS"


def repo_root() -> Optional[Path]:
    """The source checkout ``ood_det`` runs from, or ``None`` (an installed copy)."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "setup.py").is_file() and (here / "ood_det").is_dir() else None


def datasets_root() -> Path:
    """``$OOD_DET_DATASETS``, else ``<checkout>/datasets``, else ``./datasets``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    repo = repo_root()
    return repo / "datasets" if repo is not None else Path.cwd() / "datasets"

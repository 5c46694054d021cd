"""``load_config``: a YAML config (+ ``KEY VALUE`` overrides) in the schema of its backend.

The file chain is read once (:func:`ood_det.config.read_config_chain`, ``_BASE_`` relative to
each file), ``BACKEND`` decides the schema (ours or detectron2's with the OOD keys), and every
key is merged with errors naming the file or the command line it came from.
"""
from __future__ import annotations

from typing import Optional, Sequence

from ..config import merge_config, peek_backend, read_config_chain
from .backends import get_backend


def load_config(path: Optional[str] = None, opts: Optional[Sequence[str]] = None, freeze: bool = False):
    """Load ``path`` (None: the defaults) with the overrides ``opts`` (``["KEY", "VALUE", ...]``)."""
    opts = list(opts or [])
    chain = read_config_chain(path) if path else []
    cfg = get_backend(peek_backend(chain, opts)).new_config()
    return merge_config(cfg, chain, opts, freeze=freeze)

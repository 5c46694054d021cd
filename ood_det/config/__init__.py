"""Config schemas: :func:`get_cfg` (torchvision backend), :func:`add_ood_config` (the ``MODEL.OOD``
keys both backends share), and the YAML reading helpers. Loading a file for either backend:
:func:`ood_det.apps.config.load_config`."""
from .defaults import add_ood_config
from .base import BACKENDS, CfgNode, get_cfg, merge_config, peek_backend, read_config_chain

__all__ = ["add_ood_config", "BACKENDS", "CfgNode", "get_cfg", "merge_config", "peek_backend", "read_config_chain"]

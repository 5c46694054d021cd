from .defaults import add_ood_config
from .base import CfgNode, get_cfg, load_config

__all__ = ["add_ood_config", "CfgNode", "get_cfg", "load_config"]

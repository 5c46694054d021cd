from .defaults import add_ood_config

__all__ = ["add_ood_config"]

"""The validated configuration: compose the Hydra tree (``usam/conf``) or read params.yaml, then check every value.

May import: errors. Every other package reads its knobs from here.
"""

from usam.config.compose import (
    compose,
    config_hash,
    flatten,
    load_params,
    to_dict,
    to_yaml,
    write_params,
)
from usam.config.schema import TRAIN_SECTIONS, Config, train_section

__all__ = ["TRAIN_SECTIONS", "Config", "compose", "config_hash", "flatten", "load_params", "to_dict", "to_yaml",
           "train_section", "write_params"]

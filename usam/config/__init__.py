"""The validated configuration: compose the Hydra tree or read params.yaml, then check every value."""

from usam.config.compose import (
    compose,
    config_hash,
    flatten,
    load_params,
    to_dict,
    to_yaml,
    write_params,
)
from usam.config.schema import Config

__all__ = ["Config", "compose", "config_hash", "flatten", "load_params", "to_dict", "to_yaml", "write_params"]

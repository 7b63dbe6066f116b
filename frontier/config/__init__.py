"""params.yaml as typed, validated dataclasses: the loader and every section's schema.

The schemas sit here, below every stage package, so that reading a parameter file imports nothing
of the stages (no torch, no Triton): one module per section family (data, model, kernels,
optimizer, engine, train, launch, evaluate, finetune, report, ...), the root `Params` in params.py,
the loader and its validation in load.py, field helpers in fields.py.
"""

from frontier.config.fields import bounds
from frontier.config.load import (
    ConfigError,
    build_params,
    dump_resolved,
    load_params,
    parse_override,
    read_params_data,
    section_keys,
    to_dict,
    unwrap_optional,
)
from frontier.config.params import Params

__all__ = [
    "ConfigError",
    "Params",
    "bounds",
    "build_params",
    "dump_resolved",
    "load_params",
    "parse_override",
    "read_params_data",
    "section_keys",
    "to_dict",
    "unwrap_optional",
]

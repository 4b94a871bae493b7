"""The config door: YAML files in, one validated, frozen `Config` out.

- `files.py`: reading YAML (safe_load with the YAML 1.2 float rule), `base:` inheritance,
  merging and `KEY=VALUE` overrides; dumping the resolved config back.
- `schema.py`: the typed dataclasses, the conversion of a plain document into them, and the
  checks that name the key and the fix.

Imports only trainer.errors and utils (no torch): train.py reads the config before torch loads.
Nothing below the door reads raw dicts; nothing mutates a Config after loading.
"""

from trainer.config.files import apply_override, dump_yaml, load_document, merge, parse_yaml, yaml_type_name
from trainer.config.schema import (
    NAME_PATTERN,
    CheckpointConfig,
    Component,
    Config,
    DataConfig,
    LoggingConfig,
    MetricSpec,
    TrackerSpec,
    TrainConfig,
    ValConfig,
    config_changes,
    config_from_dict,
    dump_config,
    load_config,
    run_log_dir,
)

__all__ = [
    "NAME_PATTERN",
    "CheckpointConfig",
    "Component",
    "Config",
    "DataConfig",
    "LoggingConfig",
    "MetricSpec",
    "TrackerSpec",
    "TrainConfig",
    "ValConfig",
    "apply_override",
    "config_changes",
    "config_from_dict",
    "dump_config",
    "dump_yaml",
    "load_config",
    "load_document",
    "merge",
    "parse_yaml",
    "run_log_dir",
    "yaml_type_name",
]

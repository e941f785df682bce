"""Typed configuration (``schema``), YAML loading with profiles and overrides (``load``) and
the range and cross-field rules applied whenever a config is built (``validate``)."""
from tood.config.schema import (BackboneConfig, Config, ConfigError, CriterionConfig, DataConfig, HeadConfig, ModelConfig,
                                PretrainConfig, SynthConfig, TestConfig, TrainConfig)
from tood.config.load import (build_config, deep_merge, flatten, load_config, load_raw, parse_override, resolve_profile,
                              set_dotted, to_dict)
from tood.config.validate import validate_config

__all__ = ["BackboneConfig", "Config", "ConfigError", "CriterionConfig", "DataConfig", "HeadConfig", "ModelConfig",
           "PretrainConfig", "SynthConfig", "TestConfig", "TrainConfig", "build_config", "deep_merge", "flatten",
           "load_config", "load_raw", "parse_override", "resolve_profile", "set_dotted", "to_dict", "validate_config"]

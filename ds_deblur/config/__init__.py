"""Experiment config: the original trainer's YAML schema as validated dataclasses.

``schema`` declares every key (default, doc, limits), ``checks`` validates, ``loader`` reads YAML files, dicts,
``--set`` overrides and checkpoints' stored configs, ``legacy`` turns other spellings into the schema's, and
``reference`` writes ``docs/config.md`` (``ds-deblur config``).
"""
from ds_deblur.config.loader import (canonical_dict, load_config, load_stored_config, load_two_run, parse_override,
                                     save_config)
from ds_deblur.config.schema import MODEL_PRESETS, RECORD_KEY, VGG_LAYERS, Config
from ds_deblur.errors import ConfigError

__all__ = ["Config", "ConfigError", "MODEL_PRESETS", "RECORD_KEY", "VGG_LAYERS", "canonical_dict", "load_config",
           "load_stored_config", "load_two_run", "parse_override", "save_config"]

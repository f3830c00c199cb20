"""Validated server configuration: every option declared once, on pydantic models.

Raw dicts (YAML, JSON bodies, keyword arguments) become a :class:`ServeConfig` here and nowhere
else (:mod:`.loading`); a validation error is one line naming the field path, the bad value and
what is allowed (:mod:`.messages`). Each field carries its description, bounds, choices and, where
it has one, its command-line flag: the magics, the CLI, the panel and the terminal chat derive
their arguments, sliders and settings from those declarations (:mod:`.options`).
"""

from __future__ import annotations

from .loading import (
    KEYWORD_PATHS,
    build_config,
    config_from_dict,
    load_server_config,
    load_yaml,
    normalize_config_dict,
    parse_env_assignments,
    parse_set_assignments,
    set_dotted,
)
from .messages import format_validation_error
from .schema import (
    Dtype,
    EndpointConfig,
    GenerationDefaults,
    InferenceConfig,
    KVCacheDtype,
    ModelConfig,
    ProfileConfig,
    Quantization,
    ServeConfig,
    TerminalConfig,
)

__all__ = [
    "KEYWORD_PATHS",
    "Dtype",
    "EndpointConfig",
    "GenerationDefaults",
    "InferenceConfig",
    "KVCacheDtype",
    "ModelConfig",
    "ProfileConfig",
    "Quantization",
    "ServeConfig",
    "TerminalConfig",
    "build_config",
    "config_from_dict",
    "format_validation_error",
    "load_server_config",
    "load_yaml",
    "normalize_config_dict",
    "parse_env_assignments",
    "parse_set_assignments",
    "set_dotted",
]

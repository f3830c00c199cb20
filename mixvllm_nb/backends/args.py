"""Extra backend flags in both of seed 002's formats, turned into a command-line list."""

from __future__ import annotations

import json
from typing import Any

# Flags an engine takes more than once: the user's own ASGI middleware goes beside our key guard.
REPEATABLE_FLAGS = frozenset({"--middleware"})


def format_extra_args(extra: list[str] | dict[str, Any]) -> list[str]:
    """Return ``extra`` as command-line arguments.

    A list is passed as it is (``["--enforce-eager", "--max-num-seqs", "8"]``). In a dict,
    keys may have leading dashes or not and underscores become dashes; ``True`` is a bare flag,
    ``False`` or ``None`` leaves the flag out, a dict or list value becomes JSON, anything else
    its string: ``{"trust_remote_code": True, "kv-cache-dtype": {"auto": "fp8"}}`` gives
    ``["--trust-remote-code", "--kv-cache-dtype", '{"auto": "fp8"}']``.
    """
    if isinstance(extra, list):
        return [str(item) for item in extra]
    args: list[str] = []
    for key, value in extra.items():
        flag = "--" + str(key).lstrip("-").replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, dict | list):
            args += [flag, json.dumps(value)]
        else:
            args += [flag, str(value)]
    return args


def normalized_flag(arg: str) -> str:
    """Return a flag as the engine reads it: ``--served_model_name=x`` and ``--served-model-name`` are one flag."""
    return "--" + arg.split("=", 1)[0].lstrip("-").replace("_", "-")


def flag_names(args: list[str]) -> set[str]:
    """Return the ``--flags`` present in an argument list, normalised (for spotting duplicates)."""
    return {normalized_flag(arg) for arg in args if arg.startswith("--")}


def with_extra_args(
    command: list[str], extra: list[str] | dict[str, Any], *, pinned: tuple[str, ...] = ()
) -> list[str]:
    """Return ``command`` followed by the config's ``extra_args``.

    A flag the config already set is refused (set it through its field), and so is a ``pinned`` one:
    what mixvllm_nb sets itself for the server to stay ours (its key, its address), whatever the spelling.
    """
    from ..errors import ConfigError

    args = format_extra_args(extra)
    given = flag_names(args)
    clash = (given & flag_names(command)) - REPEATABLE_FLAGS
    if clash:
        raise ConfigError(
            f"extra_args: {', '.join(sorted(clash))} is already set from the config; "
            "set it through its config field instead"
        )
    refused = sorted(given & {normalized_flag(flag) for flag in pinned})
    if refused:
        raise ConfigError(
            f"extra_args: {', '.join(refused)} is set by mixvllm_nb and cannot be overridden "
            "(the key and the address are what keep the server yours; use server.* fields)"
        )
    return command + args

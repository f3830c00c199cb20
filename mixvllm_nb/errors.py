"""The errors a user of mixvllm_nb can meet, each with a one-line message that says what to do."""

from __future__ import annotations


class MixVLLMError(Exception):
    """Base class: every error raised on purpose by mixvllm_nb."""


class ConfigError(MixVLLMError, ValueError):
    """A configuration value, file or argument is invalid; the message names the field and the rule."""


class NameTakenError(ConfigError):
    """The server name asked for belongs to another registered server (with another config)."""


class PortInUseError(MixVLLMError):
    """An explicitly requested port is already taken; nothing was launched."""


class ServerStartError(MixVLLMError):
    """A server process died or timed out while starting; it has been cleaned up.

    ``cause`` is the one-line reason read from the log, ``log_tail`` the last lines of the log.
    """

    def __init__(self, message: str, *, cause: str = "", log_tail: str = "", log_path: str = ""):
        super().__init__(message)
        self.cause = cause
        self.log_tail = log_tail
        self.log_path = log_path

    def details(self) -> str:
        """Return the message followed by the log tail, for a terminal or a notebook cell."""
        tail = f"\n--- last lines of {self.log_path} ---\n{self.log_tail}" if self.log_tail else ""
        return f"{self}{tail}"


class ServerTimeoutError(ServerStartError):
    """The server did not become ready within ``startup_timeout``; it has been stopped."""


class OwnedElsewhereError(MixVLLMError):
    """The server belongs to another live kernel or process: stopping it from here needs ``force``."""


class ServerNotFoundError(MixVLLMError, KeyError):
    """No registered server has this name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class JupyterUnavailableError(MixVLLMError, RuntimeError):
    """No Jupyter server (with this extension) could be found or reached: the proxy and terminals need one."""


class ClusterError(MixVLLMError):
    """A Ray cluster cannot be used: unreachable, a missing or wrong token, no node that fits, a job that failed."""

"""The process manager: launch, track and stop servers; the registry they share."""

from . import registry
from .server import InferenceServer, live_servers
from .tree import StopReport

__all__ = ["InferenceServer", "StopReport", "live_servers", "registry"]

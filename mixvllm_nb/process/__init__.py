"""The process manager: launch, track and stop servers (``server``), the registry they share
(``registry``), process trees (``tree``), ports and logs.

Nothing is imported here on purpose: the watchdog process imports only ``tree`` and
``registry``, and must start in a fraction of a second beside a loading model.
"""

from pathlib import Path as _Path

# Code that runs beside an engine, in the engine's own Python: the key guard, a Ray job's entry script.
ENGINE_SIDE = str(_Path(__file__).resolve().parents[1] / "engine_side")

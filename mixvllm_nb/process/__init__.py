"""The process manager: launch, track and stop servers (``server``), the registry they share
(``registry``), process trees (``tree``), ports and logs.

Nothing is imported here on purpose: the watchdog process imports only ``tree`` and
``registry``, and must start in a fraction of a second beside a loading model.
"""

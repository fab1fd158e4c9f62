"""The two errors the attack library raises.

- `AttackParameterError`: an attack parameter (an `AttackSpec` field or a function argument) holds
  a bad value. It is a `ValueError`, like every spec's validation error, so that pydantic reports
  it at the config key it came from; its `field` names the parameter.
- `AttackError`: an attack cannot run on the inputs a round gave it (updates of different shapes,
  labels outside {0, 1}, a trigger column past the last feature, no honest update to learn from).
  It is a `FedsiloError`, so the CLI prints it as one line.
"""

from __future__ import annotations

from fl_core.errors import FedsiloError


class AttackError(FedsiloError):
    """An attack cannot run on the inputs it was given."""


class AttackParameterError(ValueError):
    """An attack parameter holds a bad value; `field` is the parameter's name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self):
        return type(self), (self.field, str(self))

"""The package's exception types.

Every problem a user can fix (a missing folder, a corrupt image, a tensor of the wrong shape, a
model used before `fit`) raises :class:`AdlearnError` with a message that names the offending
file or value *and* says how to fix it. Catch this one type to handle all of them.
"""

from __future__ import annotations


class AdlearnError(ValueError):
    """A problem with the user's input or set-up; the message says what and how to fix it."""


class WeightsUnavailableError(AdlearnError):
    """Pretrained weights were requested but cannot be found offline or downloaded."""

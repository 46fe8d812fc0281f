"""Groups of settings that a model keeps as one plain-dict hyper-parameter (augmentation, a UNet).

A :class:`Settings` subclass is a frozen dataclass: validated once in ``__post_init__``, turned
into ``torch.load(weights_only=True)``-safe types by :meth:`~Settings.params`, and rebuilt from
them by :meth:`~Settings.from_params`, which names unknown keys instead of raising a bare TypeError.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any, ClassVar, TypeVar

from .errors import AdlearnError

__all__ = ["Settings"]

S = TypeVar("S", bound="Settings")


class Settings:
    """Mixin for frozen dataclasses of settings (see the module docstring)."""

    argument: ClassVar[str]
    """The model argument that holds these settings, for error messages."""

    @classmethod
    def from_params(cls: type[S], params: S | Mapping[str, Any] | None) -> S | None:
        """``None``, an instance, or a dict of the fields → an instance (or ``None``)."""
        if params is None or isinstance(params, cls):
            return params
        if not isinstance(params, Mapping):
            raise AdlearnError(
                f"{cls.argument} must be None, an {cls.__module__}.{cls.__name__} or a dict of its fields, "
                f"got {params!r}"
            )
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise AdlearnError(f"unknown {cls.argument} setting(s) {unknown}; known: {known}")
        return cls(**params)

    def params(self) -> dict[str, Any]:
        """The settings as a plain dict (what a model stores as its hyper-parameter)."""
        return asdict(self)

"""Name -> factory registries, in the style of torchvision's ``models/_api.py`` and timm.

One decorator registers a factory under a name; ``build(name, **kwargs)`` calls it;
``names()`` lists what is there. A duplicate name raises at registration time, and an
unknown name raises ``ValueError`` that suggests the closest registered names.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def close_matches(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """Return up to ``n`` candidates that look like ``name`` (case-insensitive)."""
    lowered = {c.lower(): c for c in candidates}
    found = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[f] for f in found]


def unknown_name_message(kind: str, name: str, candidates: list[str]) -> str:
    """A one-line error for an unknown ``name``, with "did you mean" suggestions."""
    msg = f"unknown {kind} {name!r}"
    matches = close_matches(name, candidates)
    if matches:
        msg += f"; did you mean {', '.join(repr(m) for m in matches)}?"
    msg += f" (known: {', '.join(sorted(candidates))})"
    return msg


class Registry(Generic[T]):
    """A named collection of factories.

    Example:
        >>> LOSSES = Registry("loss")
        >>> @LOSSES.register("ce")
        ... def make_ce(**kw): ...
        >>> LOSSES.build("ce")
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a factory under ``name``; a duplicate name raises."""
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        """Return the factory registered under ``name``."""
        try:
            return self._factories[name]
        except KeyError:
            raise ValueError(unknown_name_message(self.kind, name, self.names())) from None

    def build(self, name: str, **kwargs: Any) -> T:
        """Call the factory registered under ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._factories)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def check_options(kind: str, given: dict[str, Any] | list[str], allowed: list[str]) -> None:
    """Raise ``ValueError`` naming every option in ``given`` that is not in ``allowed``.

    Each unknown option comes with its close matches, e.g.
    ``unknown focal option 'gama'; did you mean 'gamma'?``.
    """
    problems = []
    for key in given:
        if key not in allowed:
            msg = f"unknown {kind} option {key!r}"
            matches = close_matches(key, list(allowed))
            if matches:
                msg += f"; did you mean {', '.join(repr(m) for m in matches)}?"
            problems.append(msg)
    if problems:
        raise ValueError("; ".join(problems) + f" (allowed: {', '.join(sorted(allowed))})")

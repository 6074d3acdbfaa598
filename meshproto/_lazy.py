"""Names a package loads on first use (PEP 562), written once for every package.

``meshproto``, ``meshproto_ws`` and ``meshproto_anyio`` export broker-side
names that a client never touches; importing them eagerly would load the
reference broker into every ``meshproto send``. Each package instead hands
its globals and a table of name -> submodule to :func:`lazy_names`, and
binds the two functions it returns as its module ``__getattr__`` and
``__dir__``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(
    namespace: dict[str, Any], table: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module ``__getattr__`` and ``__dir__`` for the package whose globals are ``namespace``.

    ``table`` maps each lazy name to the submodule that defines it. The first
    use of a name imports that submodule and keeps the name as a global, so
    later uses are plain lookups.
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *table})

    return __getattr__, __dir__

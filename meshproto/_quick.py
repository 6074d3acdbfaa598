"""A cheaper ``__init__`` for the frozen, slotted dataclasses made once per message.

A frozen dataclass's generated ``__init__`` sets every field with
``object.__setattr__(self, name, value)``, which looks the attribute up
again each time; a class with slots has, for every field, a descriptor whose
``__set__`` stores the value straight into its slot. :func:`quick_init`
writes an ``__init__`` that calls those setters: the same parameters (names,
order, defaults, keyword-only fields), the same values stored, the class
still frozen (assignment after ``__init__`` raises as before), in about half
the time (six fields: 0.61 µs before, 0.32 µs after, on the machine where it
was measured).

It is applied only to classes that a message's path makes every time
(outputs, actions, events, stored records) and that keep to what it can do:
slots, frozen, every field in ``__init__``, plain defaults (no factories), no
``__post_init__``. Any other class is refused at import time, so that no
class silently loses what its dataclass ``__init__`` did.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["quick_init", "slot_setters"]

_T = TypeVar("_T")


def slot_setters(cls: type[Any], attrs: list[str]) -> list[Any] | None:
    """The slot setter of each of ``attrs``, in order, or ``None`` if ``cls`` must be called.

    ``None`` for a class with a ``__post_init__`` (setting the slots would
    skip it) or without a slot for each of ``attrs``. The codec's decoders
    fill a frame this way too.
    """
    slots = getattr(cls, "__slots__", ())
    if hasattr(cls, "__post_init__") or not set(attrs) <= set(slots):
        return None
    return [getattr(cls, attr).__set__ for attr in attrs]


def quick_init(cls: type[_T]) -> type[_T]:
    """Give ``cls`` (a frozen dataclass with slots) an ``__init__`` that sets its slots."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__qualname__}: quick_init takes a frozen dataclass with slots")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__qualname__}: quick_init cannot run __post_init__")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    setters = slot_setters(cls, [field.name for field in fields])
    assert setters is not None  # frozen, slotted, no __post_init__: checked above
    namespace: dict[str, Any] = {}
    positional: list[str] = []
    keyword: list[str] = []
    body: list[str] = []
    for i, field in enumerate(fields):
        if not field.init or field.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__qualname__}.{field.name}: quick_init takes plain fields")
        param = field.name
        if field.default is not dataclasses.MISSING:
            namespace[f"_d{i}"] = field.default
            param = f"{field.name}=_d{i}"
        (keyword if field.kw_only else positional).append(param)
        namespace[f"_s{i}"] = setters[i]  # the slot's own setter
        body.append(f"    _s{i}(self, {field.name})")
    params_text = ", ".join(["self", *positional, *(["*", *keyword] if keyword else [])])
    source = "\n".join([f"def __init__({params_text}):", *(body or ["    pass"])])
    exec(source, namespace)  # our own classes' fields, never input
    init = namespace["__init__"]
    original = cls.__init__
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = dict(getattr(original, "__annotations__", {}))
    init.__doc__ = original.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls

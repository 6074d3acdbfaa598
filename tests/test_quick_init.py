"""quick_init: a frozen, slotted dataclass's cheaper __init__ behaves as the one it replaces."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshproto import MessageReceived, SendText, StoredMessage, WriteFrame
from meshproto._quick import quick_init


@dataclass(frozen=True, slots=True)
class Made:
    """The dataclass's own __init__."""

    a: int
    b: str
    c: float = 1.5
    d: tuple[int, ...] | None = None
    e: bool = dataclasses.field(default=False, kw_only=True)


@quick_init
@dataclass(frozen=True, slots=True)
class Quick:
    """The same fields, quick_init's __init__."""

    a: int
    b: str
    c: float = 1.5
    d: tuple[int, ...] | None = None
    e: bool = dataclasses.field(default=False, kw_only=True)


def _values(obj: object) -> tuple[object, ...]:
    return tuple(getattr(obj, f.name) for f in dataclasses.fields(obj))  # type: ignore[arg-type]


@given(
    a=st.integers(),
    b=st.text(max_size=5),
    c=st.floats(allow_nan=False) | st.none(),
    d=st.none() | st.tuples(st.integers()),
    e=st.booleans(),
    given_c=st.booleans(),
)
def test_quick_init_stores_what_the_dataclass_init_stores(
    *, a: int, b: str, c: float | None, d: tuple[int, ...] | None, e: bool, given_c: bool
) -> None:
    if given_c:
        made, quick = Made(a, b, c, d=d, e=e), Quick(a, b, c, d=d, e=e)  # type: ignore[arg-type]
    else:
        made, quick = Made(a, b=b), Quick(a, b=b)
    assert _values(quick) == _values(made)
    assert repr(quick) == repr(made).replace("Made(", "Quick(", 1)
    assert pickle.loads(pickle.dumps(quick)) == quick
    assert dataclasses.replace(quick, a=0) == Quick(0, quick.b, quick.c, quick.d, e=quick.e)


def test_quick_init_takes_the_same_parameters_as_the_dataclass_init() -> None:
    made = inspect.signature(Made)
    quick = inspect.signature(Quick)
    assert [(p.name, p.kind, p.default) for p in quick.parameters.values()] == [
        (p.name, p.kind, p.default) for p in made.parameters.values()
    ]


def test_quick_init_refuses_what_the_dataclass_init_refuses() -> None:
    with pytest.raises(TypeError):
        Quick(1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Quick(1, "x", 2.0, None, True)  # type: ignore[misc]
    with pytest.raises(TypeError):
        Quick(1, "x", f=3)  # type: ignore[call-arg]


@pytest.mark.parametrize("cls", [Quick, WriteFrame, SendText, StoredMessage, MessageReceived])
def test_a_class_with_quick_init_stays_frozen(cls: type) -> None:
    fields = dataclasses.fields(cls)
    obj = cls(*(None for f in fields if f.default is dataclasses.MISSING and not f.kw_only))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, fields[0].name, 1)


def test_quick_init_refuses_a_class_whose_init_it_cannot_replace_faithfully() -> None:
    @dataclass(slots=True)
    class NotFrozen:
        a: int

    @dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclass(frozen=True, slots=True)
    class Factory:
        a: list[int] = field(default_factory=list)

    for cls in (NotFrozen, NoSlots, Checked, Factory):
        with pytest.raises(TypeError, match="quick_init"):
            quick_init(cls)

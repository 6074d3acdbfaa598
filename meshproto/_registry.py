"""Who may join a mesh, and how a hello's signature is checked (reference broker).

The broker asks a :class:`MemberRegistry` for the member row behind a hello's
``(meshId, pubkey)`` and a :class:`Verifier` whether the hello's signature is
good (docs/protocol.md §3.1). Both are interfaces so that the core never touches a
key or a database: :class:`StaticRegistry` keeps the rows in memory and
:class:`AcceptingVerifier` takes any well-formed signature (tests and the
pre-crypto demo). A real deployment passes an ed25519 verifier (PyNaCl) and a
registry backed by its own member list.

A registry that can also *admit* unknown keys (a dev/demo "open mesh")
implements :class:`AdmittingRegistry`; the broker asks it only after the
signature has been checked and the plain lookup found nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from ._frames import Group

__all__ = [
    "AcceptingVerifier",
    "AdmittingRegistry",
    "Member",
    "MemberRegistry",
    "StaticRegistry",
    "Verifier",
]

_HEX128 = re.compile(r"[0-9a-f]{128}")


@dataclass(frozen=True, slots=True)
class Member:
    """One row of the member registry: a member key admitted to one mesh."""

    mesh_id: str
    member_id: str
    pubkey: str
    display_name: str
    groups: tuple[Group, ...] = ()
    revoked: bool = False


@runtime_checkable
class MemberRegistry(Protocol):
    """The broker's view of the member list."""

    def lookup(self, mesh_id: str, pubkey: str) -> Member | None:
        """The member with ``pubkey`` in ``mesh_id`` (revoked ones included), or ``None``."""
        ...


@runtime_checkable
class AdmittingRegistry(MemberRegistry, Protocol):
    """A registry that may admit a key it does not know (an open, dev/demo mesh)."""

    def admit(
        self, mesh_id: str, pubkey: str, *, member_id: str, display_name: str | None
    ) -> Member | None:
        """Admit ``pubkey`` into ``mesh_id`` and return its new row, or ``None`` to refuse."""
        ...


@runtime_checkable
class Verifier(Protocol):
    """Checks an ed25519 detached signature (both given as lowercase hex)."""

    def verify(self, pubkey_hex: str, message: bytes, signature_hex: str) -> bool:
        """Whether ``signature_hex`` is ``pubkey_hex``'s signature of ``message``."""
        ...


class AcceptingVerifier:
    """Accepts any well-formed (128 lowercase hex) signature. For tests and demos only."""

    __slots__ = ()

    def verify(self, pubkey_hex: str, message: bytes, signature_hex: str) -> bool:
        return _HEX128.fullmatch(signature_hex) is not None

    def __repr__(self) -> str:
        return "AcceptingVerifier()"


class StaticRegistry:
    """An in-memory member registry.

    ``open_mesh``: if set, an unknown pubkey saying hello into that mesh is
    admitted as a new :class:`Member` (``member_id`` from the hello,
    ``display_name`` from the hello or ``pubkey[:8]``): a dev/demo mode for
    meshes without a member list. A revoked key is never re-admitted.
    """

    __slots__ = ("_members", "open_mesh")

    def __init__(self, members: Iterable[Member] = (), *, open_mesh: str | None = None) -> None:
        self._members: dict[tuple[str, str], Member] = {}
        self.open_mesh = open_mesh
        for member in members:
            self.add(member)

    def lookup(self, mesh_id: str, pubkey: str) -> Member | None:
        return self._members.get((mesh_id, pubkey))

    def admit(
        self, mesh_id: str, pubkey: str, *, member_id: str, display_name: str | None
    ) -> Member | None:
        known = self._members.get((mesh_id, pubkey))
        if known is not None:
            return known
        if self.open_mesh is None or mesh_id != self.open_mesh:
            return None
        member = Member(mesh_id, member_id, pubkey, display_name or pubkey[:8])
        self.add(member)
        return member

    def add(self, member: Member) -> None:
        """Add or replace the row for ``(member.mesh_id, member.pubkey)``."""
        self._members[(member.mesh_id, member.pubkey)] = member

    def revoke(self, mesh_id: str, pubkey: str) -> None:
        """Mark a member revoked; its next hello is refused with ``revoked`` (close 4002)."""
        member = self._members.get((mesh_id, pubkey))
        if member is None:
            member = Member(mesh_id, "", pubkey, pubkey[:8])
        self._members[(mesh_id, pubkey)] = replace(member, revoked=True)

    def members(self, mesh_id: str) -> list[Member]:
        """Every row of ``mesh_id``, in the order added."""
        return [m for (mesh, _), m in self._members.items() if mesh == mesh_id]

    def __repr__(self) -> str:
        return f"StaticRegistry({len(self._members)} members, open_mesh={self.open_mesh!r})"

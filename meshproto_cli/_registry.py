"""A member registry read from a members file, reread whenever the file changes.

The reference broker asks the registry on every hello, so revoking a member
in the file (``"revoked": true``) takes effect at that member's next hello.
A file that becomes unreadable or malformed keeps the last good list and
logs why, rather than locking everyone out.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from meshproto import Group, Member

from ._files import FileProblem, MembersFile, load_members_file

__all__ = ["FileRegistry"]

logger = logging.getLogger("meshproto.registry")


class FileRegistry:
    """The broker's ``MemberRegistry`` over a ``members.json`` file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._file: MembersFile = load_members_file(path)
        self._rows: dict[tuple[str, str], Member] = {}
        self._index()
        self._stamp = self._current_stamp()

    @property
    def mesh_id(self) -> str:
        return self._file.mesh_id

    @property
    def name(self) -> str:
        return self._file.name

    def _current_stamp(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size)

    def _index(self) -> None:
        self._rows = {
            (self._file.mesh_id, row.pubkey): Member(
                mesh_id=self._file.mesh_id,
                member_id=row.member_id,
                pubkey=row.pubkey,
                display_name=row.display_name,
                groups=tuple(Group(name) for name in row.groups),
                revoked=row.revoked,
            )
            for row in self._file.members
        }

    def _refresh(self) -> None:
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._file = load_members_file(self.path)
        except FileProblem as exc:
            logger.warning("keeping the previous member list: %s", exc)
            return
        self._index()
        logger.info("reloaded %d members from %s", len(self._rows), self.path)

    def lookup(self, mesh_id: str, pubkey: str) -> Member | None:
        self._refresh()
        return self._rows.get((mesh_id, pubkey))

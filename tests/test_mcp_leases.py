"""Session leases for ``meshproto mcp``: one session per running server, its key kept.

Two servers running at once never get the same session; a server started
after another has exited (or was killed) gets that session, and so its key,
again; a pinned name is refused while another server holds it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from meshproto_cli._files import FileProblem
from meshproto_cli._mcp_session import lease_session


def test_running_servers_never_share_a_session_and_a_freed_one_is_taken_again(
    tmp_path: Path,
) -> None:
    first, second = lease_session(tmp_path), lease_session(tmp_path)
    assert (first.name, second.name) == ("mcp-1", "mcp-2")
    first.release()
    with lease_session(tmp_path) as third:
        assert third.name == "mcp-1"  # the lowest free slot, with its key
    second.release()
    assert sorted(p.name for p in (tmp_path / "meshproto-mcp").iterdir()) == [
        "mcp-1.lock",
        "mcp-2.lock",
    ]


def test_a_lease_ends_with_its_process_even_a_killed_one(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; "
            "from meshproto_cli._mcp_session import lease_session; "
            f"lease = lease_session(Path({str(tmp_path)!r})); print(lease.name, flush=True); "
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "mcp-1"
        with lease_session(tmp_path) as meanwhile:
            assert meanwhile.name == "mcp-2"
        holder.kill()  # no cleanup runs: the kernel drops the lock
        holder.wait(timeout=10)
        with lease_session(tmp_path) as after:
            assert after.name == "mcp-1"
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_a_pinned_session_is_held_like_a_slot_and_refused_while_held(tmp_path: Path) -> None:
    with lease_session(tmp_path, "laptop") as lease:
        assert (lease.name, lease.pinned) == ("laptop", True)
        with pytest.raises(FileProblem, match="session 'laptop' is in use by another"):
            lease_session(tmp_path, "laptop")
        with lease_session(tmp_path) as slot:  # slots are unaffected
            assert slot.name == "mcp-1"
    with lease_session(tmp_path, "laptop"):
        pass


@pytest.mark.parametrize("name", ["", "a/b", "../up", "x" * 65, "sp ace"])
def test_a_pinned_session_name_must_be_a_safe_file_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(FileProblem, match="session names may use letters, digits"):
        lease_session(tmp_path, name)

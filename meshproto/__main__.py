"""``python -m meshproto``: say which version is installed and where to go next.

The core is a library with no command of its own; this points at the
``meshproto`` command, which comes with the ``cli`` extra.
"""

from __future__ import annotations

import sys

from . import __version__

_ABOUT = f"""\
meshproto {__version__}: a sans-IO implementation of the claudemesh broker protocol.

This is the core library; it has no command of its own. Next steps:
  meshproto --help         the command (pip install 'meshproto[cli]')
  meshproto demo           a broker and three peers on this machine
  docs/ in the source       the protocol, the architecture and how-to pages
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["--version"], ["-V"]):
        print(f"meshproto {__version__}")
        return 0
    if args and args not in (["-h"], ["--help"]):
        print(f"python -m meshproto takes no arguments, got {' '.join(args)!r}", file=sys.stderr)
        print(_ABOUT, end="", file=sys.stderr)
        return 2
    print(_ABOUT, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

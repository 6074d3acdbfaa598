"""``python -m meshproto_cli``: the ``meshproto`` command."""

from __future__ import annotations

import sys

from . import main

sys.exit(main())

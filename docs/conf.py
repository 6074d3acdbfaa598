"""Sphinx configuration: ``sphinx-build -W docs docs/_build`` (warnings are errors)."""

from __future__ import annotations

import sys
from importlib.metadata import version as _version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

project = "meshproto"
author = "the meshproto authors"
copyright = "2026, the meshproto authors"
release = _version("meshproto")
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
# Names that the type hints mention but that have no page of their own.
nitpicky = False

html_theme = "furo"
html_title = f"meshproto {release}"

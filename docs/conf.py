"""Sphinx configuration for dogclf's documentation (built with ``sphinx-build -W`` in CI)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

project = "dogclf"
author = "dogclf developers"
copyright = "2026, dogclf developers"
from dogclf import __version__ as release  # noqa: E402

version = release
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.intersphinx", "sphinx.ext.viewcode"]
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# No network at build time: intersphinx inventories are not fetched, so references stay plain text.
intersphinx_mapping: dict = {}
nitpicky = False
html_theme = "alabaster"
exclude_patterns = ["_build"]
suppress_warnings = ["ref.python"]

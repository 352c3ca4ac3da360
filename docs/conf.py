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
exclude_patterns = ["_build", "_generated"]
suppress_warnings = ["ref.python"]


def _hyperparameter_table(app) -> None:
    """Write the entry point's hyperparameter table from the config fields themselves (docs cannot drift)."""
    from dataclasses import MISSING

    from dogclf._contract import BOUNDS, hyperparameter_fields, wire_name, wire_value
    from dogclf.models import ModelConfig, Preprocess
    from dogclf.training import TrainingConfig

    rows = []
    for cls, owner in ((ModelConfig, "ModelConfig"), (Preprocess, "ModelConfig.preprocess"),
                       (TrainingConfig, "TrainingConfig")):
        for f, meta, _ in hyperparameter_fields(cls):
            default = f.default if f.default is not MISSING else f.default_factory()
            limits = [f"{word} {meta[key]:g}" for key, word in BOUNDS if meta.get(key) is not None]
            if meta["choices"]:
                limits.append("one of " + ", ".join(f"``{c}``" for c in meta["choices"]))
            text = meta["help"] + (f" ({'; '.join(limits)})" if limits else "")
            rows.append(f"   * - ``{f.name}``\n     - ``--{wire_name(f)}``\n     - ``{wire_value(default, meta)}``\n"
                        f"     - {text}\n     - {owner}\n")
    out = os.path.join(app.srcdir, "_generated")
    os.makedirs(out, exist_ok=True)
    table = (".. list-table::\n   :header-rows: 1\n   :widths: 14 16 10 50 10\n\n"
             "   * - field\n     - option (wire)\n     - default\n     - meaning\n     - config\n" + "".join(rows))
    path = os.path.join(out, "hyperparameters.rst")
    if not os.path.exists(path) or open(path, encoding="utf-8").read() != table:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(table)


def setup(app):
    app.connect("builder-inited", _hyperparameter_table)

"""The house rules, checked on the code itself: which package may import which, where AWS lives, module sizes.

Every ``import`` and ``from ... import`` in ``dogclf/`` is read with :mod:`ast`, including those inside
functions (where a cycle would otherwise hide). The layers are the ones docs/architecture.rst draws.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dogclf"

# Lowest first. A module may import its own package, and packages of lower layers, nothing else.
LAYERS: list[tuple[str, ...]] = [
    # foundation: errors, the one atomic-write helper, registry helper, contract machinery, paths, images
    ("dogclf", "dogclf.errors", "dogclf._io", "dogclf._registry", "dogclf._lazy", "dogclf._paths",
     "dogclf._contract", "dogclf._source", "dogclf._extras", "dogclf._faults", "dogclf._process", "dogclf.images"),
    ("dogclf.labels",),
    ("dogclf.models", "dogclf.data"),
    ("dogclf.training",),
    ("dogclf.backends",),                                        # the Backend protocol and its registry
    ("dogclf.hpo", "dogclf.debug", "dogclf.serving"),           # capabilities
    ("dogclf.backends.local", "dogclf.backends.sagemaker"),     # concrete backends
    ("dogclf.cli", "dogclf.__main__"),
]

# Third-party modules that speak AWS request shapes, and the only packages that may import them.
AWS = ("boto3", "botocore", "sagemaker")
AWS_ALLOWED = ("dogclf.backends.sagemaker", "dogclf.data.s3")  # data/s3.py: the S3 data plane of staging


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every import in the file, relative ones resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            # `from dogclf import training` imports a package, not a name
            if target.startswith("dogclf"):
                out.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names
                           if (PACKAGE.parent / f"{target}.{alias.name}".replace(".", "/")).is_dir())
    return out


def _owner(module: str) -> tuple[int, str] | None:
    """The layer and unit (the longest listed prefix) a dogclf module belongs to."""
    best: tuple[int, str] | None = None
    for level, units in enumerate(LAYERS):
        for unit in units:
            inside = module == unit or (unit != "dogclf" and module.startswith(unit + "."))
            if inside and (best is None or len(unit) > len(best[1])):
                best = (level, unit)
    return best


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    unplaced = [_module_name(p) for p in MODULES if _owner(_module_name(p)) is None]
    assert not unplaced, f"modules in no layer of LAYERS (add them where they belong): {unplaced}"


def _violations() -> list[str]:
    found = []
    for path in MODULES:
        name = _module_name(path)
        here = _owner(name)
        assert here is not None
        for line, target in _imports(path):
            if not target.startswith("dogclf"):
                continue
            there = _owner(target)
            if there is None or there[1] == here[1] or target == "dogclf":
                continue
            # Siblings of a layer (models/data, the capabilities, the concrete backends) stay apart; the
            # foundation's small modules may use each other.
            if there[0] > here[0] or (there[0] == here[0] > 0 and there[1] != here[1]):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line} {here[1]} (layer {here[0]}) imports "
                             f"{target} ({there[1]}, layer {there[0]})")
    return found


def test_imports_only_go_down_the_layers():
    assert _violations() == []


def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch):
    """The check itself works: a training module that imports debug (a capability above it) is reported."""
    bad = PACKAGE / "training" / "_architecture_probe.py"
    bad.write_text("def f():\n    from dogclf.debug import make_callbacks\n    return make_callbacks\n")
    try:
        monkeypatch.setattr(__import__(__name__), "MODULES", sorted(PACKAGE.rglob("*.py")))
        found = _violations()
    finally:
        bad.unlink()
    assert any("_architecture_probe.py:2 dogclf.training (layer 3) imports dogclf.debug" in v for v in found), found


def test_only_the_sagemaker_backend_speaks_aws():
    offenders = []
    for path in MODULES:
        name = _module_name(path)
        if any(name == a or name.startswith(a + ".") for a in AWS_ALLOWED):
            continue
        for line, target in _imports(path):
            if target.split(".")[0] in AWS:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert offenders == []


def test_capability_packages_take_backends_through_the_protocol():
    """No parameter called ``backend`` is typed ``Any``: capabilities see :class:`~dogclf.backends.Backend`."""
    loose = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for arg in [*node.args.args, *node.args.kwonlyargs]:
                    if arg.arg == "backend" and (arg.annotation is None or ast.unparse(arg.annotation) == "Any"):
                        loose.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}")
    assert loose == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_500_lines(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= 500, f"{path.relative_to(PACKAGE.parent)} has {lines} lines: split it along a seam"

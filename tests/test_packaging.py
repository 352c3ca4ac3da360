"""Packaging: the extras table, every third-party import's home, and the built wheel in a core-only venv.

The slow test builds the sdist and wheel with ``python -m build`` and installs the wheel into a throwaway venv
outside the repository that sees only the core's distributions (torch, torchvision, NumPy, Pillow and what they
require) plus pytest and hypothesis: a venv layered through a ``.pth`` file on symlinks to this environment's
installed copies (``tools/venvs.py``), so nothing is downloaded or copied. ``pip install --no-index`` of the wheel
there succeeds only if those distributions satisfy its requirements. It then runs the ``dogclf`` command, checks
the package data and the inference ``code/`` vendoring from the installed wheel, and runs the core test subset
(``test_core_install.py``, ``test_labels.py``, ``test_models.py``) against the installed wheel.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from dogclf._extras import EXTRAS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from venvs import layered_venv, link_distributions, requirement_closure  # noqa: E402

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))
CORE = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "PIL": "pillow"}
# Optional imports that are not dogclf extras: each falls back when the module is missing.
OPTIONAL_BY_FALLBACK = {
    ("dogclf/serving/_request.py", "sagemaker_inference"),  # the serving container's toolkit, for its error class
    ("dogclf/training/data.py", "psutil"),  # the decode-cache budget; 4 GB without it
}


def _extras() -> dict[str, list[Requirement]]:
    return {k: [Requirement(r) for r in v] for k, v in PYPROJECT["project"]["optional-dependencies"].items()}


def test_core_dependencies_are_torch_torchvision_numpy_pillow():
    names = {Requirement(r).name.lower() for r in PYPROJECT["project"]["dependencies"]}
    assert names == set(CORE.values())


def test_extras_table_matches_pyproject():
    extras = _extras()
    assert set(EXTRAS) <= set(extras)
    (everything,) = extras["all"]
    assert everything.name == "dogclf" and everything.extras == set(EXTRAS)
    providers = metadata.packages_distributions()
    def norm(name: str) -> str:
        return name.lower().replace("_", "-")

    for extra, (_, modules) in EXTRAS.items():
        brought = {norm(d.metadata["Name"]) for d in requirement_closure(str(r) for r in extras[extra])}
        for module in modules:
            dists = {norm(d) for d in providers.get(module, ())}
            assert dists & brought, f"extra {extra!r} lists module {module!r}, which comes from {sorted(dists)}, " \
                                    f"not from what the extra installs"


def test_pins_only_smdebug_needs_live_in_debug():
    extras = _extras()
    for extra, reqs in extras.items():
        for r in reqs:
            if r.name.lower() == "protobuf" or (r.name.lower() == "numpy" and any(s.operator == "<"
                                                                                for s in r.specifier)):
                assert extra == "debug", f"{r} belongs to the debug extra, not {extra!r}"
    core = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    assert all(not any(s.operator in ("<", "<=", "==") for s in r.specifier) for r in core)


def test_sagemaker_debug_requirements_are_the_debug_extra():
    from dogclf.backends.sagemaker.training import DEBUG_REQUIREMENTS

    assert {str(Requirement(r)) for r in DEBUG_REQUIREMENTS} == {str(r) for r in _extras()["debug"]}


def _third_party_imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level module, imported at module level outside try/except ImportError) for each import in ``path``."""
    tree = ast.parse(path.read_text("utf-8"))
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.Try) and any(
                    isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                    for h in child.handlers):
                visit(child, False)
            elif isinstance(child, ast.Import):
                out.extend((a.name.split(".")[0], top) for a in child.names)
                visit(child, top)
            elif isinstance(child, ast.ImportFrom):
                if child.level == 0 and child.module:
                    out.append((child.module.split(".")[0], top))
            else:
                visit(child, top)

    visit(tree, True)
    return [(m, top) for m, top in out if m not in sys.stdlib_module_names and m not in ("dogclf", "__future__")]


def test_every_third_party_import_is_core_or_in_an_extra():
    optional = {m for _, modules in EXTRAS.values() for m in modules}
    problems = []
    for path in sorted((REPO / "dogclf").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for module, top in _third_party_imports(path):
            if module in CORE or (rel, module) in OPTIONAL_BY_FALLBACK:
                continue
            if module not in optional:
                problems.append(f"{rel}: {module} is neither core nor in an extra of dogclf._extras.EXTRAS")
            elif top:
                problems.append(f"{rel}: {module} (optional) is imported at module level")
    assert not problems, "\n".join(problems)


# -- the built wheel in a core-only venv outside the repository ------------------------------------------------------
PLUGIN = '''
from hypothesis import HealthCheck, settings

# The question here is whether the installed wheel works, not how fast a shared machine generates examples.
settings.register_profile("core-venv", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("core-venv")
'''


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> str:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.slow
def test_wheel_in_a_core_only_venv_outside_the_repo(tmp_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--outdir", dist, REPO], cwd=tmp_path)
    (wheel,) = dist.glob("dogclf-*.whl")
    (sdist,) = dist.glob("dogclf-*.tar.gz")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "dogclf/labels/data/dogimages_133.txt" in names and not any(n.startswith("tests/") for n in names)
    assert "dogclf = dogclf.cli:main" in entry_points and "local = dogclf.backends.local:LocalBackend" in entry_points
    requires = [Requirement(line.split(":", 1)[1]) for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    core = [str(r) for r in requires if r.marker is None]
    assert {Requirement(r).name.lower() for r in core} == set(CORE.values())
    with tarfile.open(sdist) as t:
        members = {m.split("/", 1)[1] for m in t.getnames() if "/" in m}
    assert {"pyproject.toml", "README.md", "dogclf/labels/data/dogimages_133.txt", "tests/conftest.py",
            "tools/venvs.py", "docs/index.rst"} <= members

    overlay = link_distributions(requirement_closure([*core, "pytest", "hypothesis"]), tmp_path / "overlay")
    py = layered_venv(tmp_path / "venv", [overlay])
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", py]
    _run([*pip, "install", "--no-index", wheel], cwd=tmp_path)
    _run([*pip, "check"], cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()

    script = tmp_path / "venv" / "bin" / "dogclf"
    assert _run([script, "--version"], cwd=work).strip().endswith(metadata.version("dogclf"))
    found = json.loads(_run([script, "labels", "find", "german shepherd dog"], cwd=work))
    assert found["folder"] == "071.German_shepherd_dog"
    probe = '''
import importlib.util, json, sys
import dogclf
from dogclf.labels import get_labels
from dogclf.serving.package import write_code_dir
code = write_code_dir(sys.argv[1])
print(json.dumps({"file": dogclf.__file__, "n": len(get_labels("dogimages-133")),
                  "extras": [n for n in ("pandas", "sagemaker", "smdebug", "optuna", "requests", "boto3", "tqdm",
                                         "matplotlib", "starlette", "uvicorn", "sagemaker_training", "psutil")
                             if importlib.util.find_spec(n) is not None]}))
'''
    report = json.loads(_run([py, "-c", probe, tmp_path / "code"], cwd=work).splitlines()[-1])
    assert report["file"].startswith(str(tmp_path / "venv")) and report["n"] == 133 and report["extras"] == []
    code = tmp_path / "code"
    assert (code / "inference.py").is_file() and (code / "dogclf" / "labels" / "data" / "dogimages_133.txt").is_file()
    assert (code / "dogclf" / "serving" / "handler.py").is_file() and not list(code.rglob("__pycache__"))

    (work / "core_venv_plugin.py").write_text(PLUGIN)
    tests = [REPO / "tests" / name for name in ("test_core_install.py", "test_labels.py", "test_models.py")]
    env_cmd = ["env", f"PYTHONPATH={work}", py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
               "core_venv_plugin", *tests]
    out = _run(env_cmd, cwd=work, timeout=900)
    assert " passed" in out and " failed" not in out

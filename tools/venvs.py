"""Throwaway virtual environments for the packaging checks (stdlib plus ``packaging``; run by the dev venv).

Two kinds:

* **Layered** (:func:`layered_venv`): a new venv with no packages of its own that sees exactly the distributions
  it is given through a ``.pth`` file pointing at an *overlay* folder of symlinks (:func:`link_distributions`) to
  the running environment's installed copies. Building one costs a second and no disk: it is how the tests check
  a core-only install (torch, torchvision, NumPy, Pillow and their own requirements, nothing else) without
  installing torch again. pip in such a venv sees the overlay's distributions as installed, so ``pip install
  --no-index dogclf.whl`` succeeds only if the core requirements are met by them, and ``pip check`` agrees.
* **Pinned** (:func:`pinned_venv`): a real venv for another Python with pinned wheels, downloaded once into a
  cache folder keyed by the requirements and reused (``make compat``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

__all__ = ["requirement_closure", "link_distributions", "layered_venv", "venv_python", "pinned_venv", "cache_root",
           "tree_size"]


def requirement_closure(requirements: Iterable[str]) -> list[metadata.Distribution]:
    """The installed distributions ``requirements`` need, transitively (markers evaluated for this interpreter).

    Raises:
        LookupError: a requirement is not installed here.
    """
    todo = [(Requirement(r), "") for r in requirements]
    seen: dict[str, metadata.Distribution] = {}
    done_extras: set[tuple[str, str]] = set()
    while todo:
        req, from_extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": from_extra}):
            continue
        name = canonicalize_name(req.name)
        dist = seen.get(name) or _installed(req)
        if dist.version not in req.specifier:
            raise LookupError(f"{req} is needed; {dist.metadata['Name']} {dist.version} was chosen already")
        seen[name] = dist
        for extra in ("", *sorted(req.extras)):
            if (name, extra) in done_extras:
                continue
            done_extras.add((name, extra))
            for text in dist.requires or ():
                sub = Requirement(text)
                in_extra = sub.marker is not None and "extra" in str(sub.marker)
                if extra == "" and in_extra:
                    continue
                if extra and not in_extra:
                    continue
                todo.append((sub, extra))
    return sorted(seen.values(), key=lambda d: canonicalize_name(d.metadata["Name"]))


def _installed(req: Requirement) -> metadata.Distribution:
    """The first distribution on ``sys.path`` that satisfies ``req`` (a shadowed older copy is skipped)."""
    found = [d for d in metadata.distributions(name=req.name)]
    for dist in found:
        if dist.version in req.specifier:
            return dist
    have = ", ".join(f"{d.version} in {d.locate_file('')}" for d in found) or "none"
    raise LookupError(f"{req} is needed but not installed for {sys.executable} (found: {have})")


def _top_level_entries(dist: metadata.Distribution) -> set[Path]:
    """The top-level files and folders of ``dist`` in its site-packages (from RECORD; scripts outside excluded)."""
    base = Path(dist.locate_file("")).resolve()
    out: set[Path] = set()
    for f in dist.files or ():
        parts = Path(f).parts
        if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith(".pth"):
            continue
        out.add(base / parts[0])
    return out


def link_distributions(dists: Iterable[metadata.Distribution], dest: str | os.PathLike[str]) -> Path:
    """Fill ``dest`` with symlinks to the installed files of ``dists`` (packages, modules, ``.dist-info``)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for dist in dists:
        for src in sorted(_top_level_entries(dist)):
            if not src.exists():
                continue
            link = dest / src.name
            if link.is_symlink() and link.resolve() == src.resolve():
                continue
            if link.exists() or link.is_symlink():
                raise FileExistsError(f"{link} would point at both {link.resolve()} and {src}")
            link.symlink_to(src, target_is_directory=src.is_dir())
    return dest


def venv_python(venv: str | os.PathLike[str]) -> Path:
    """The interpreter of ``venv``."""
    return Path(venv) / "bin" / "python"


def layered_venv(path: str | os.PathLike[str], overlays: Sequence[str | os.PathLike[str]], *,
                 python: str = sys.executable) -> Path:
    """A venv at ``path`` (no pip, no system site-packages) whose ``sys.path`` also holds ``overlays``.

    Install into it with the running pip: ``python -m pip --python <venv>/bin/python install ...``.
    Returns its interpreter.
    """
    path = Path(path)
    base = subprocess.run([python, "-c", "import sys; print(sys._base_executable)"], check=True,
                          capture_output=True, text=True).stdout.strip()
    subprocess.run([base, "-m", "venv", "--without-pip", str(path)], check=True)
    py = venv_python(path)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "zz_overlay.pth").write_text("".join(f"{Path(o).resolve()}\n" for o in overlays))
    return py


def cache_root() -> Path:
    """``$DOGCLF_COMPAT_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/dogclf-compat``: outside any clone, kept."""
    explicit = os.environ.get("DOGCLF_COMPAT_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dogclf-compat"


def tree_size(path: str | os.PathLike[str]) -> int:
    """Bytes of the regular files under ``path`` (symlinks not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def _log(message: str) -> None:
    print(f"[compat] {message}", flush=True)


def pinned_venv(python: str, requirements: Sequence[str], key: str, *, cache: Path | None = None,
                pip_args: Sequence[str] = ()) -> tuple[Path, dict[str, float]]:
    """A venv for ``python`` with exactly ``requirements`` installed, cached under ``cache/venvs/<key>-<hash>``.

    The wheels are fetched once into ``cache/wheels/<key>-<hash>`` and the venv is built from them offline;
    a later call with the same requirements reuses the venv (a stamp file marks it complete). Returns the
    interpreter and the seconds spent downloading and installing (0 when cached).
    """
    cache = cache or cache_root()
    version = subprocess.run([python, "-c", "import platform; print(platform.python_version())"], check=True,
                             capture_output=True, text=True).stdout.strip()
    digest = hashlib.sha256(json.dumps([version, list(requirements)]).encode()).hexdigest()[:10]
    name = f"{key}-{digest}"
    venv, wheels = cache / "venvs" / name, cache / "wheels" / name
    stamp = venv / ".dogclf-compat-complete"
    times = {"download_s": 0.0, "install_s": 0.0}
    if stamp.is_file():
        _log(f"{key}: cached venv {venv}")
        return venv_python(venv), times
    if venv.exists():
        shutil.rmtree(venv)
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    py = str(venv_python(venv))
    pip = [py, "-m", "pip", "--disable-pip-version-check", "-q"]
    started = time.perf_counter()
    fetched = wheels / ".dogclf-compat-complete"
    if not fetched.is_file():
        _log(f"{key}: downloading {' '.join(requirements)} into {wheels}")
        # `pip wheel` rather than `pip download`: a requirement published only as an sdist is built into a wheel
        # once, so the install below (and any rebuild of the venv) needs no network and no build tools.
        subprocess.run([*pip, "wheel", "-w", str(wheels), *pip_args, *requirements], check=True)
        fetched.write_text("\n".join(sorted(p.name for p in wheels.glob("*.whl"))) + "\n")
        times["download_s"] = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run([*pip, "install", "--no-index", "--find-links", str(wheels), *pip_args, *requirements],
                   check=True)
    times["install_s"] = time.perf_counter() - started
    freeze = subprocess.run([*pip, "freeze"], check=True, capture_output=True, text=True).stdout
    stamp.write_text(freeze)
    _log(f"{key}: downloaded in {times['download_s']:.0f} s ({tree_size(wheels) / 1e9:.2f} GB), installed in "
         f"{times['install_s']:.0f} s ({tree_size(venv) / 1e9:.2f} GB)")
    return Path(py), times

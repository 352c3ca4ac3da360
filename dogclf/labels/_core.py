"""The :class:`BreedLabels` value object and dogImages folder-name parsing."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from dogclf._io import atomic_write
from dogclf.errors import ConfigError, DuplicateError, UnknownBreedError

__all__ = ["BreedLabels", "parse_folder_name", "format_folder_name", "normalize_breed"]

_SEPARATORS = re.compile(r"[\s_\-]+")
# dogImages class folders: three (or more) digits, a dot, then the breed: "071.German_shepherd_dog".
_FOLDER_RE = re.compile(r"^(?P<num>\d{3,})\.(?P<name>[^\s./\\][^/\\]*)$")
_FORBIDDEN = re.compile(r"[/\\\x00-\x1f]")
_JSON_FORMAT = "dogclf.breed_labels/1"


def normalize_breed(name: str) -> str:
    """The lookup key of a breed name: case-folded, with runs of spaces, underscores and hyphens made one ``_``.

    ``"German shepherd dog"``, ``"german_shepherd-DOG"`` and ``"German_shepherd_dog"`` share one key.
    Hyphens count as separators, so ``"Chinese shar-pei"`` is found as ``"chinese shar pei"`` too.
    """
    return _SEPARATORS.sub("_", name.strip()).strip("_").casefold()


def parse_folder_name(folder: str) -> tuple[int, str]:
    """Split a dogImages class folder name into its zero-based label index and breed name.

    Args:
        folder: A folder name such as ``"071.German_shepherd_dog"``.

    Returns:
        ``(70, "German_shepherd_dog")``: the number minus one, and the breed as written.

    Raises:
        ConfigError: ``folder`` is not three or more digits, a dot, and a non-empty breed name
            (``"71.German"``, ``"abc"`` and ``""`` are refused), or its number is ``000``.
    """
    if not isinstance(folder, str):
        raise ConfigError(f"folder name must be a str like '071.German_shepherd_dog', got {type(folder).__name__}")
    match = _FOLDER_RE.match(folder)
    if match is None:
        raise ConfigError(
            f"malformed class folder name {folder!r}: expected three digits, a dot and the breed, "
            "like '071.German_shepherd_dog'"
        )
    number = int(match["num"])
    if number < 1:
        raise ConfigError(f"malformed class folder name {folder!r}: numbering starts at 001")
    return number - 1, match["name"]


def format_folder_name(index: int, name: str) -> str:
    """The dogImages folder name for a zero-based ``index`` and a breed ``name``: ``(70, "German shepherd dog")``
    gives ``"071.German_shepherd_dog"``. Spaces become underscores; the inverse of :func:`parse_folder_name`."""
    if index < 0:
        raise ConfigError(f"label index must be >= 0, got {index}")
    breed = re.sub(r"\s+", "_", name.strip())
    return f"{index + 1:03d}.{breed}"


def _check_breed(name: Any, position: int) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"breed at position {position} must be a str, got {type(name).__name__}: {name!r}")
    if not name or name != name.strip():
        raise ConfigError(f"breed at position {position} must be non-empty without surrounding spaces, got {name!r}")
    if _FORBIDDEN.search(name):
        raise ConfigError(f"breed {name!r} at position {position} contains a path separator or control character")
    if not normalize_breed(name):
        raise ConfigError(f"breed {name!r} at position {position} has no letters or digits")
    return name


@dataclass(frozen=True)
class BreedLabels:
    """An immutable, ordered set of breed names: the classes a model predicts, in output order.

    Index ``i`` of the model's output is ``names[i]``. Lookups by name ignore case and treat spaces, underscores
    and hyphens alike, so ``labels.index("german shepherd dog")`` finds ``German_shepherd_dog``.

    Args:
        names: The breed names in label order. Each must be non-empty, unique after normalisation
            (see :func:`normalize_breed`) and free of path separators.
        name: Optional name of the label set (``"dogimages-133"``), kept in its JSON form.

    Raises:
        ConfigError: ``names`` is empty or holds a malformed name.
        DuplicateError: two names normalise to the same key.

    Example:
        >>> labels = BreedLabels(["Beagle", "German_shepherd_dog", "Pug"])
        >>> labels.index("german shepherd dog"), labels[2], labels.display_name(1)
        (1, 'Pug', 'German shepherd dog')
    """

    names: tuple[str, ...]
    name: str | None = None
    _index: dict[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __init__(self, names: Iterable[str], name: str | None = None) -> None:
        if isinstance(names, (str, bytes)):
            raise ConfigError(f"names must be a sequence of breed names, not a single string {names!r}")
        names = tuple(names)
        if not names:
            raise ConfigError("a label set needs at least one breed, got none")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ConfigError(f"label set name must be a non-empty str or None, got {name!r}")
        index: dict[str, int] = {}
        for i, breed in enumerate(names):
            key = normalize_breed(_check_breed(breed, i))
            if key in index:
                raise DuplicateError(
                    f"duplicate breed {breed!r} at position {i}: same as {names[index[key]]!r} at position {index[key]}"
                )
            index[key] = i
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_index", index)

    # -- sequence behaviour -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    @overload
    def __getitem__(self, key: int) -> str: ...
    @overload
    def __getitem__(self, key: str) -> int: ...

    def __getitem__(self, key: int | str) -> str | int:
        """``labels[i]`` is the breed at index ``i``; ``labels["pug"]`` is the index of a breed name."""
        if isinstance(key, str):
            return self.index(key)
        return self.breed(key)

    def __contains__(self, breed: object) -> bool:
        return isinstance(breed, str) and normalize_breed(breed) in self._index

    def __repr__(self) -> str:
        shown = ", ".join(repr(n) for n in self.names[:3]) + (", ..." if len(self) > 3 else "")
        label = f"{self.name!r}, " if self.name else ""
        return f"BreedLabels({label}{len(self)} breeds: {shown})"

    # -- lookups ------------------------------------------------------------------------------------------------
    def breed(self, index: int) -> str:
        """The breed name at a zero-based ``index`` (negative indices count from the end, as for a list).

        Raises:
            UnknownBreedError: ``index`` is out of range.
        """
        if isinstance(index, bool) or not isinstance(index, int):
            try:
                index = int(index)  # numpy and torch integer scalars
            except (TypeError, ValueError):
                raise UnknownBreedError(f"label index must be an int, got {type(index).__name__}: {index!r}") from None
        if not -len(self) <= index < len(self):
            raise UnknownBreedError(f"label index {index} out of range for {len(self)} breeds (0..{len(self) - 1})")
        return self.names[index]

    def index(self, breed: str) -> int:
        """The zero-based index of ``breed``, matched case-insensitively with spaces, ``_`` and ``-`` alike.

        A dogImages folder name (``"071.German_shepherd_dog"``) is accepted too.

        Raises:
            UnknownBreedError: no breed in the set matches; the message suggests close names.
        """
        if not isinstance(breed, str):
            raise UnknownBreedError(f"breed must be a str, got {type(breed).__name__}: {breed!r}")
        key = normalize_breed(breed)
        if key not in self._index and _FOLDER_RE.match(breed):
            key = normalize_breed(parse_folder_name(breed)[1])
        try:
            return self._index[key]
        except KeyError:
            raise UnknownBreedError(self._unknown_message(breed)) from None

    def _unknown_message(self, breed: str) -> str:
        import difflib

        close = difflib.get_close_matches(normalize_breed(breed), list(self._index), n=3, cutoff=0.6)
        hint = ", ".join(repr(self.names[self._index[c]]) for c in close)
        where = f"label set {self.name!r}" if self.name else f"this label set of {len(self)} breeds"
        return f"unknown breed {breed!r} in {where}" + (f"; did you mean {hint}?" if hint else "")

    def display_name(self, breed: int | str) -> str:
        """The human form of a breed, given by index or name: ``German_shepherd_dog`` gives
        ``"German shepherd dog"``."""
        name = self.breed(breed) if not isinstance(breed, str) else self.names[self.index(breed)]
        return name.replace("_", " ")

    @property
    def display_names(self) -> tuple[str, ...]:
        """All display names, in label order."""
        return tuple(n.replace("_", " ") for n in self.names)

    def folder_name(self, breed: int | str) -> str:
        """The dogImages folder name of a breed given by index or name: ``"071.German_shepherd_dog"``."""
        index = breed if not isinstance(breed, str) else self.index(breed)
        return format_folder_name(int(index) % len(self), self.breed(index))

    @property
    def folder_names(self) -> tuple[str, ...]:
        """All folder names in label order, as a dogImages split holds them."""
        return tuple(format_folder_name(i, n) for i, n in enumerate(self.names))

    def with_name(self, name: str | None) -> BreedLabels:
        """The same breeds under another label-set name."""
        return BreedLabels(self.names, name=name)

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_folder_names(cls, folders: Iterable[str], *, name: str | None = None,
                          strict: bool = True) -> BreedLabels:
        """Build a label set from class folder names, ordered as :class:`torchvision.datasets.ImageFolder` orders
        them (sorted by folder name).

        Args:
            folders: Folder names such as ``"001.Affenpinscher"``. With ``strict=False``, plain breed folder names
                (``"beagle"``) are accepted as long as none of them is numbered.
            name: The label-set name to give the result.
            strict: Require the numbered dogImages form.

        Raises:
            ConfigError: a name is malformed, the folders mix numbered and plain names, or the numbers do not run
                001, 002, ... in sorted order (so the folder number would disagree with ImageFolder's index).
        """
        ordered = sorted(folders)
        if not ordered:
            raise ConfigError("no class folders given: a label set needs at least one breed")
        numbered = [bool(_FOLDER_RE.match(f)) for f in ordered]
        if strict or any(numbered):
            if not all(numbered):
                bad = [f for f, ok in zip(ordered, numbered) if not ok]
                raise ConfigError(
                    f"class folder names {bad[:5]!r} are not in the numbered form '071.German_shepherd_dog'"
                    + ("" if strict else " while others are; use one form for all folders")
                )
            breeds = []
            for position, folder in enumerate(ordered):
                index, breed = parse_folder_name(folder)
                if index != position:
                    raise ConfigError(
                        f"class folder {folder!r} is number {index + 1} but sorts at position {position + 1}; "
                        "numbers must run 001, 002, ... without gaps so they match the label index"
                    )
                breeds.append(breed)
            return cls(breeds, name=name)
        return cls(ordered, name=name)

    @classmethod
    def from_directory(cls, path: str | os.PathLike[str], *, name: str | None = None,
                       strict: bool = False) -> BreedLabels:
        """Build a label set from the class sub-folders of ``path`` (one dataset split, e.g. ``dogImages/train``).

        Hidden folders (``.cache``) are ignored. See :meth:`from_folder_names` for ``strict``.

        Raises:
            DataNotFoundError: ``path`` is not a directory.
            ConfigError: it has no class folders, or their names are malformed.
        """
        from dogclf.errors import DataNotFoundError

        root = Path(path)
        if not root.is_dir():
            raise DataNotFoundError(f"dataset folder {str(root)!r} does not exist or is not a directory")
        folders = [e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]
        if not folders:
            raise ConfigError(f"dataset folder {str(root)!r} has no class sub-folders")
        return cls.from_folder_names(folders, name=name, strict=strict)

    # -- serialisation ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"format": ..., "name": ..., "breeds": [...]}``."""
        return {"format": _JSON_FORMAT, "name": self.name, "breeds": list(self.names)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BreedLabels:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: ``data`` is not a dogclf label-set document.
        """
        if not isinstance(data, dict) or not isinstance(data.get("breeds"), list):
            raise ConfigError(f"not a label-set document: expected a dict with a 'breeds' list, got {data!r:.200}")
        fmt = data.get("format", _JSON_FORMAT)
        if fmt != _JSON_FORMAT:
            raise ConfigError(f"unsupported label-set format {fmt!r}; expected {_JSON_FORMAT!r}")
        return cls(data["breeds"], name=data.get("name"))

    def to_json(self, **kwargs: Any) -> str:
        """The label set as a JSON string (``kwargs`` go to :func:`json.dumps`)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> BreedLabels:
        """Inverse of :meth:`to_json`.

        Raises:
            ConfigError: ``text`` is not valid JSON or not a label-set document.
        """
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"label-set JSON does not parse: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON form to ``path`` atomically (a temporary file renamed into place) and return the path."""
        return atomic_write(path, self.to_json(indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BreedLabels:
        """Read a label set written by :meth:`save`."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def as_list(self) -> list[str]:
        """The breed names as a new list."""
        return list(self.names)


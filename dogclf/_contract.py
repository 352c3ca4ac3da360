"""The typed-contract machinery: config fields that are hyperparameters, one encoder and one decoder.

A config class (a frozen dataclass such as :class:`~dogclf.training.TrainingConfig` or
:class:`~dogclf.models.ModelConfig`) declares each hyperparameter with :func:`hyperparameter`: a dataclass field
whose metadata carries its help text, range, choices and its name on the wire. A field holding another config
(``ModelConfig.preprocess``) is marked with :func:`nested` and its hyperparameters are flattened onto the wire.
Python code uses Python names (``batch_size``); the wire (SageMaker hyperparameters, ``hyperparameters.json``, the
entry point's command-line options) keeps SageMaker's spelling (``batch-size``). :func:`encode` turns configs into
wire strings, :func:`decode` turns any spelling back into a typed config, and :func:`add_arguments` generates the
entry point's options, all from the same fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from collections.abc import Iterable, Mapping
from dataclasses import field
from typing import Any

from dogclf.errors import ConfigError

__all__ = ["add_arguments", "convert", "decode", "encode", "hyperparameter", "hyperparameter_fields", "label", "names",
           "nested", "python_name", "values", "split_known", "validate_fields", "wire_name", "wire_value"]

_NONE_WORDS = ("none", "null")
_NESTED = "dogclf_nested"


def hyperparameter(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING,
                   wire: str | None = None, choices: Iterable[Any] | None = None, ge: float | None = None,
                   gt: float | None = None, lt: float | None = None, none: str = "None") -> Any:
    """A dataclass field that is an entry-point hyperparameter.

    Args:
        default: The default value.
        help: One line for ``--help`` and the docs.
        default_factory: Instead of ``default``, as for :func:`dataclasses.field`.
        wire: The name on the wire (default: the Python name with ``_`` spelled ``-``).
        choices: The allowed values.
        ge, gt, lt: Bounds of a number (``>=``, ``>``, ``<``).
        none: How ``None`` is spelled on the wire (``"None"``, or ``"auto"`` where ``None`` means "choose").
    """
    meta = {"help": help, "wire": wire, "choices": tuple(choices) if choices is not None else None,
            "ge": ge, "gt": gt, "lt": lt, "none": none}
    return field(default=default, default_factory=default_factory, metadata={"dogclf": meta})


def nested(default: Any = None, *, reset_on: Iterable[str] = ()) -> Any:
    """A field holding another config whose hyperparameters go onto the wire flattened (``preprocess`` ->
    ``resize``, ``crop``).

    Args:
        default: The default (``None``: the outer config's ``__post_init__`` fills it in, e.g. from the weights).
        reset_on: Names of the outer config's fields that the nested default depends on: when :func:`decode`
            changes one of them over a base config, the nested config is re-derived (then given values applied).
    """
    return field(default=default, metadata={_NESTED: True, "reset_on": tuple(reset_on)})


def hyperparameter_fields(cls: type) -> list[tuple[dataclasses.Field[Any], dict[str, Any], Any]]:
    """``(field, metadata, type)`` of each hyperparameter field of a config class, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [(f, f.metadata["dogclf"], hints[f.name]) for f in dataclasses.fields(cls) if "dogclf" in f.metadata]


def _nested_fields(cls: type) -> list[tuple[str, type]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, _base_type(hints[f.name])[0]) for f in dataclasses.fields(cls) if f.metadata.get(_NESTED)]


def _reset_on(cls: type, name: str) -> tuple[str, ...]:
    return next(f.metadata.get("reset_on", ()) for f in dataclasses.fields(cls) if f.name == name)


def _all_fields(cls: type) -> list[tuple[tuple[str, ...], dataclasses.Field[Any], dict[str, Any], Any]]:
    """Every hyperparameter field of ``cls`` and its nested configs, with its attribute path."""
    out = [((f.name,), f, meta, tp) for f, meta, tp in hyperparameter_fields(cls)]
    for name, sub in _nested_fields(cls):
        out.extend(((name, *path), f, meta, tp) for path, f, meta, tp in _all_fields(sub))
    return out


def wire_name(f: dataclasses.Field[Any]) -> str:
    """A field's name on the wire (``batch_size`` -> ``batch-size``)."""
    return f.metadata["dogclf"].get("wire") or f.name.replace("_", "-")


def label(f: dataclasses.Field[Any]) -> str:
    """How messages name a hyperparameter: ``'batch_size' (--batch-size)``, or ``'lr'`` where both agree."""
    wire = wire_name(f)
    return repr(f.name) if wire == f.name else f"{f.name!r} (--{wire})"


def python_name(name: str) -> str:
    """Any spelling of a hyperparameter name as a Python name: ``--batch-size`` -> ``batch_size``."""
    return name.lstrip("-").replace("-", "_")


def _base_type(tp: Any) -> tuple[type, bool]:
    """``(int, True)`` for ``int | None``; ``(str, False)`` for ``str``."""
    args = typing.get_args(tp)
    if args:
        non_none = [a for a in args if a is not type(None)]
        return non_none[0], len(non_none) < len(args)
    return tp, False


def convert(name: str, value: Any, tp: Any, meta: dict[str, Any]) -> Any:
    """``value`` (typed, or a wire string) as the field's type; raises :class:`ConfigError` naming the field
    (``name`` is how the message names it, see :func:`label`)."""
    base, optional = _base_type(tp)
    if value is None or (isinstance(value, str) and optional
                         and value.strip().lower() in (*_NONE_WORDS, meta["none"].lower())):
        if optional:
            return None
        raise ConfigError(f"hyperparameter {name} must not be None")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(value, bool):
            raise ValueError
        if base is int:
            number = float(value) if isinstance(value, str) else value
            if not isinstance(number, (int, float)) or not math.isfinite(number) or not float(number).is_integer():
                raise ValueError
            return int(number)
        if base is float:
            if not isinstance(value, (int, float, str)):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        kind = {bool: "true or false", int: "an integer", float: "a finite number"}.get(base, "a string")
        raise ConfigError(f"hyperparameter {name} must be {kind}, got {value!r}") from None


def _check(name: str, value: Any, meta: dict[str, Any]) -> None:
    if value is None:
        return
    if meta["choices"] is not None and value not in meta["choices"]:
        raise ConfigError(f"hyperparameter {name} is {value!r}; choose one of "
                          f"{', '.join(repr(c) for c in meta['choices'])}")
    for bound, words in (("ge", ">="), ("gt", ">"), ("lt", "<")):
        limit = meta[bound]
        if limit is None:
            continue
        ok = value >= limit if bound == "ge" else value > limit if bound == "gt" else value < limit
        if not ok:
            raise ConfigError(f"hyperparameter {name} must be {words} {limit:g}, got {value!r}")


def validate_fields(instance: Any) -> None:
    """Convert and check the hyperparameter fields of a config instance in place (its ``__post_init__`` calls
    this); raises :class:`ConfigError` naming the first bad value and what was expected."""
    for f, meta, tp in hyperparameter_fields(type(instance)):
        value = convert(label(f), getattr(instance, f.name), tp, meta)
        _check(label(f), value, meta)
        object.__setattr__(instance, f.name, value)


def wire_value(value: Any, meta: dict[str, Any] | None = None) -> str:
    """One value as its wire string (``None`` spelled per field, ``true``/``false``, floats with ``repr``)."""
    if value is None:
        return (meta or {}).get("none", "None")
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def encode(*configs: Any) -> dict[str, str]:
    """The configs' hyperparameters on the wire: ``{"lr": "0.001", "batch-size": "64", ...}``.

    Every value is the string the entry point turns back into the same typed value with :func:`decode`.
    """
    out: dict[str, str] = {}
    for config in configs:
        current = values(config)
        for _, f, meta, _ in _all_fields(type(config)):
            out[wire_name(f)] = wire_value(current[f.name], meta)
    return out


def values(config: Any) -> dict[str, Any]:
    """Python name -> typed value of every hyperparameter of a config instance (nested ones flattened)."""
    out: dict[str, Any] = {}
    for path, f, _, _ in _all_fields(type(config)):
        value: Any = config
        for attr in path:
            value = getattr(value, attr)
        out[f.name] = value
    return out


def names(cls: type) -> dict[str, str]:
    """Python name -> wire name of every hyperparameter of ``cls`` (nested ones included)."""
    return {f.name: wire_name(f) for _, f, _, _ in _all_fields(cls)}


def split_known(cls: type, values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(values for cls's hyperparameters by Python name, the rest as given)`` from a mapping in any spelling.

    Raises:
        ConfigError: a name that is not a string, or one hyperparameter given in two spellings.
    """
    fields = _all_fields(cls)
    lookup = {f.name: f.name for _, f, _, _ in fields} | {wire_name(f): f.name for _, f, _, _ in fields}
    mine: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key.strip("-_"):
            raise ConfigError(f"hyperparameter names must be non-empty strings, got {key!r}")
        name = lookup.get(key.lstrip("-")) or lookup.get(python_name(key))
        if name is None:
            rest[key] = value
        elif name in mine:
            raise ConfigError(f"hyperparameter {name!r} is given twice (as {key!r} and another spelling)")
        else:
            mine[name] = value
    return mine, rest


def decode(cls: type, values: Mapping[str, Any], *, base: Any = None) -> Any:
    """A config of class ``cls`` from wire strings or typed values in any spelling, over ``base``'s values.

    Raises:
        ConfigError: an unknown name, or a value of the wrong type or out of range (named in the message).
    """
    mine, rest = split_known(cls, values)
    if rest:
        known = ", ".join(repr(n) for n in names(cls))
        raise ConfigError(f"unknown hyperparameter(s) {sorted(rest)} for {cls.__name__}; known: {known}")
    return _build(cls, mine, base)


def _build(cls: type, values: dict[str, Any], base: Any) -> Any:
    """The outer config first (a nested one re-derived where its ``reset_on`` fields change), then the nested
    values applied over the nested config it holds."""
    kwargs: dict[str, Any] = {}
    for f, meta, tp in hyperparameter_fields(cls):
        if f.name in values:
            kwargs[f.name] = convert(label(f), values[f.name], tp, meta)
    if base is not None:
        for name, _ in _nested_fields(cls):
            if any(k in kwargs and kwargs[k] != getattr(base, k) for k in _reset_on(cls, name)):
                kwargs[name] = None
        obj = dataclasses.replace(base, **kwargs) if kwargs else base
    else:
        obj = cls(**kwargs)
    for name, sub in _nested_fields(cls):
        sub_names = {f.name for _, f, _, _ in _all_fields(sub)}
        if sub_names & set(values):
            sub_values = {k: v for k, v in values.items() if k in sub_names}
            obj = dataclasses.replace(obj, **{name: _build(sub, sub_values, getattr(obj, name))})
    return obj


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per hyperparameter of ``cls`` (both spellings), as strings for :func:`decode` (unset: None)."""
    defaults = cls()
    for path, f, meta, _ in _all_fields(cls):
        value: Any = defaults
        for attr in path:
            value = getattr(value, attr)
        wire = wire_name(f)
        spellings = [f"--{wire}"] + ([f"--{f.name}"] if f.name != wire else [])
        extra = f" (one of {', '.join(map(str, meta['choices']))})" if meta["choices"] else ""
        parser.add_argument(*spellings, dest=f.name, default=None, metavar=wire.upper().replace("-", "_"),
                            help=f"{meta['help']}{extra} [default: {wire_value(value, meta)}]")

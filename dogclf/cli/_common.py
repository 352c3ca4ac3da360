"""What the ``dogclf`` subcommands share: small parsers, the backend and job from the options, output."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dogclf.errors import ConfigError

if TYPE_CHECKING:
    from dogclf.backends import Backend

logger = logging.getLogger("dogclf.cli")

_SEED_SPACE = ("lr=0.001..0.1:log", "batch_size=32,64,128", "epochs=1,2")


def _scalar(text: str) -> Any:
    """``"64"`` -> 64, ``"0.1"`` -> 0.1, ``"true"`` -> True, anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """``["lr=0.01", "batch-size=64"]`` -> ``{"lr": 0.01, "batch-size": 64}``.

    Raises:
        ConfigError: an item has no ``=`` or an empty name.
    """
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"expected NAME=VALUE, got {item!r}")
        out[name.strip()] = _scalar(value)
    return out


def parse_space(items: Sequence[str]) -> dict[str, Any]:
    """A search space from ``NAME=SPEC`` strings.

    ``SPEC`` is ``LOW..HIGH`` (a continuous range), ``LOW..HIGH:log`` (sampled on a log scale),
    ``int:LOW..HIGH`` (integers) or ``A,B,C`` (categorical; numbers are parsed). The seed's space is
    ``lr=0.001..0.1:log batch-size=32,64,128 epochs=1,2``.

    Raises:
        ConfigError: a malformed item or range (the message names it and the accepted forms).
    """
    from dogclf.hpo import Categorical, Continuous, Integer

    space: dict[str, Any] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        name, spec = name.strip(), spec.strip()
        if not sep or not name or not spec:
            raise ConfigError(f"search-space entry {item!r} is not NAME=SPEC; use e.g. 'lr=0.001..0.1:log', "
                              "'epochs=int:1..3' or 'batch-size=32,64,128'")
        if ".." in spec:
            integer = spec.startswith("int:")
            body = spec[4:] if integer else spec
            body, _, scale = body.partition(":")
            low, _, high = body.partition("..")
            try:
                lo, hi = (int(low), int(high)) if integer else (float(low), float(high))
            except ValueError:
                raise ConfigError(f"search-space entry {item!r}: {low!r}..{high!r} is not a numeric range") from None
            scale = scale or "linear"
            space[name] = Integer(lo, hi, scale=scale) if integer else Continuous(lo, hi, scale=scale)
        else:
            space[name] = Categorical([_scalar(v) for v in spec.split(",") if v.strip()])
    return space


def _channels(data: str) -> dict[str, str]:
    """Training channels from a staged dataset root: one channel per split (local or ``s3://``)."""
    if data.startswith("s3://"):
        root = data.rstrip("/")
        return {split: f"{root}/{split}" for split in ("train", "valid", "test")}
    root = Path(data).expanduser()
    if not root.is_dir():
        from dogclf.errors import DataNotFoundError

        raise DataNotFoundError(f"dataset folder {str(root)!r} does not exist; stage one with 'dogclf stage'")
    splits = {s: str(root / s) for s in ("train", "valid", "test") if (root / s).is_dir()}
    if "train" not in splits:
        from dogclf.errors import DatasetLayoutError

        raise DatasetLayoutError(f"{str(root)!r} has no train/ folder; expected a staged dataset root holding "
                                 "train/, valid/ and test/")
    return splits


def _backend(args: argparse.Namespace) -> Any:
    from dogclf.backends import get_backend

    name = args.backend
    if name == "sagemaker":
        return get_backend(name, role=args.role, bucket=args.bucket, region=args.region)
    if name == "local" or name is None:
        return get_backend("local", root=args.root) if args.root else get_backend("local")
    return get_backend(name)


def _spec(args: argparse.Namespace, params: dict[str, Any] | None = None) -> Any:
    """The job from the model options, a parameter file's hyperparameters and ``--set`` (each over the one before;
    any spelling, decoded by the one job contract)."""
    from dogclf.training import TrainingJobSpec

    hp: dict[str, Any] = {"backbone": args.backbone, "weights": str(args.weights)}
    for name in ("resize", "crop"):
        if getattr(args, name) is not None:
            hp[name] = getattr(args, name)
    for key, value in {**(params or {}), **parse_assignments(args.set or [])}.items():
        hp.pop(key.replace("_", "-"), None)
        hp.pop(key.replace("-", "_"), None)
        hp[key] = value
    return TrainingJobSpec.from_hyperparameters(hp, _channels(args.data), instance_type=args.instance_type,
                                                job_name=getattr(args, "job_name", None))


def _emit(args: argparse.Namespace, data: dict[str, Any], lines: Sequence[str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=1, default=str))
    else:
        for line in lines:
            print(line)


def _tqdm() -> Any:
    """tqdm's progress-bar class (the ``cli`` extra)."""
    from dogclf._extras import require

    return require("cli", "tqdm.auto").tqdm


class _EpochProgress:
    """A backend wrapper whose ``train`` shows a progress bar over the job's epochs (from its published metrics).

    :class:`~dogclf.debug.DebugTrainer` calls ``backend.train(spec)``; this wrapper starts the job with
    ``wait=False`` and follows the handle's ``metric_history`` (the local backend's jobs have one). Other backends
    are used as they are.
    """

    def __init__(self, backend: Backend, epochs: int | None) -> None:
        self._backend = backend
        self._epochs = epochs
        self.name = backend.name

    def train(self, spec: Any, **kwargs: Any) -> Any:

        if self.name != "local" or "wait" in kwargs:
            return self._backend.train(spec, **kwargs)
        handle = self._backend.train(spec, wait=False, **kwargs)
        with _tqdm()(total=self._epochs, desc=f"train {handle.job_name}", unit="epoch") as bar:
            while not handle.done():
                epochs = [e for e in handle.metric_history if "epoch" in e]
                if len(epochs) > bar.n:
                    bar.update(len(epochs) - bar.n)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in epochs[-1].items() if k.endswith("loss")})
                time.sleep(0.5)
        return handle.wait()

    def deploy(self, artifact: Any, **kwargs: Any) -> Any:
        return self._backend.deploy(artifact, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)



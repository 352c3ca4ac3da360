"""The ``dogclf`` command line.

Exit codes: 0 success, 1 failure (a :class:`~dogclf.errors.DogclfError`, shown as one line; ``--debug`` shows
the traceback), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from dogclf import __version__
from dogclf.errors import DogclfError

__all__ = ["main", "build_parser"]


def _cmd_labels(args: argparse.Namespace) -> int:
    from dogclf.labels import get_labels, list_labels

    if args.labels_cmd == "list":
        for name in list_labels(args.pattern):
            print(f"{name}\t{len(get_labels(name))} breeds")
    elif args.labels_cmd == "show":
        labels = get_labels(args.name)
        if args.json:
            print(labels.to_json(indent=1))
        else:
            for i, breed in enumerate(labels):
                print(f"{i}\t{labels.folder_name(i)}\t{labels.display_name(i)}")
    elif args.labels_cmd == "find":
        labels = get_labels(args.name)
        for breed in args.breeds:
            i = labels.index(breed)
            print(json.dumps({"query": breed, "index": i, "breed": labels[i], "display_name": labels.display_name(i),
                              "folder": labels.folder_name(i)}))
    return 0


def _cmd_backends(args: argparse.Namespace) -> int:
    from dogclf.backends import list_backends

    for name in list_backends():
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dogclf`` command (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="dogclf", description="Dog-breed classification, locally or on SageMaker.")
    parser.add_argument("--version", action="version", version=f"dogclf {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("labels", help="list, show and look up breed label sets")
    lsub = p.add_subparsers(dest="labels_cmd", required=True, metavar="ACTION")
    q = lsub.add_parser("list", help="registered label sets")
    q.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'dogimages-*'")
    q = lsub.add_parser("show", help="the breeds of a label set in label order")
    q.add_argument("name", nargs="?", default="dogimages-133")
    q.add_argument("--json", action="store_true", help="print the JSON form that model artifacts carry")
    q = lsub.add_parser("find", help="look breeds up by any spelling ('german shepherd dog')")
    q.add_argument("breeds", nargs="+")
    q.add_argument("--name", default="dogimages-133", help="label set to search (default: dogimages-133)")
    p.set_defaults(func=_cmd_labels)

    p = sub.add_parser("backends", help="list the registered backends")
    p.set_defaults(func=_cmd_backends)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dogclf`` command with ``argv`` (default: ``sys.argv[1:]``) and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except DogclfError as exc:
        if args.debug:
            raise
        print(f"dogclf: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The main job: the seed notebook's workflow as user code, on the local backend, offline.

Run it with ``make demo`` (which creates the virtual environment first) or ``python examples/workflow_local.py``.
Each step is added here as the library gains it; today it covers what exists.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dogclf.backends import get_backend
from dogclf.labels import get_labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="where outputs go")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)

    labels = get_labels("dogimages-133")
    path = labels.save(args.out / "labels.json")
    backend = get_backend("local", root=args.out / "backend")
    print(f"label set {labels.name}: {len(labels)} breeds, e.g. {labels.display_name('german shepherd dog')!r}")
    print(f"backend: {backend!r}")
    print(f"labels written to {path}")


if __name__ == "__main__":
    main()

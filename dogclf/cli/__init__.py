"""The ``dogclf`` command line: one subcommand per step of the workflow, mirroring the library's classes.

=========  ==========================================================  ============================================
command    what it does                                                library call
=========  ==========================================================  ============================================
stage      validate a dataset and put it in place with a manifest      :class:`~dogclf.data.DatasetStager`
tune       tune lr / batch size / epochs as training jobs              :class:`~dogclf.hpo.HPOExperiment`
train      train with Debugger collections, rules and profiling        :class:`~dogclf.debug.DebugTrainer`
report     (re)build the Debugger/profiler report of a finished job    :func:`~dogclf.debug.build_report`
deploy     serve a model artifact behind an endpoint                   :class:`~dogclf.serving.EndpointDeployer`
predict    predict breeds of a folder of photos, write a gallery       :class:`~dogclf.serving.BreedPredictor`
labels     list, show and look up breed label sets                     :func:`~dogclf.labels.get_labels`
backends   list the registered backends                                :func:`~dogclf.backends.list_backends`
=========  ==========================================================  ============================================

Every subcommand has ``--help``. Long work shows progress bars (on standard error). Exit codes: 0 success,
1 failure (a :class:`~dogclf.errors.DogclfError`, shown as one line ``dogclf: error: ...``; ``--debug`` shows the
traceback and debug logs), 2 usage error, 130 interrupted.

Example, the seed's workflow in six commands::

    dogclf stage dogImages.zip runs/data/dogImages
    dogclf tune runs/data/dogImages --trials 3 --out runs/best.json
    dogclf train runs/data/dogImages --params runs/best.json --report runs/report.html --json > runs/job.json
    dogclf report JOB_NAME --out runs/report.html
    dogclf deploy runs/backend/jobs/JOB_NAME/model           # serves until Ctrl-C
    dogclf predict runs/backend/jobs/JOB_NAME/model photos/ --gallery runs/gallery
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from dogclf.cli._common import parse_assignments, parse_space
from dogclf.cli._parser import _check, build_parser
from dogclf.errors import DogclfError

__all__ = ["main", "build_parser", "parse_space", "parse_assignments"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dogclf`` command with ``argv`` (default: ``sys.argv[1:]``) and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _check(parser, args)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not args.debug:
        os.environ.setdefault("SMDEBUG_LOG_LEVEL", "error")
        for noisy in ("dogclf.backends.local.training", "matplotlib", "PIL"):
            logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    try:
        return int(args.func(args) or 0)
    except DogclfError as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"dogclf: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dogclf: interrupted", file=sys.stderr)
        return 130


"""The ``dogclf`` command's argument parser."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from dogclf import __version__
from dogclf.cli import _commands as commands
from dogclf.cli._common import _SEED_SPACE

logger = logging.getLogger("dogclf.cli")


def _runtime_options(p: argparse.ArgumentParser) -> None:
    from dogclf.serving.runtimes import RUNTIMES

    p.add_argument("--runtime", choices=RUNTIMES, default=None,
                   help="inference runtime: torch (eager, default), onnx (ONNX Runtime fp32) or onnx-int8 (static "
                        "int8); an ONNX runtime the artifact lacks is exported and checked first (needs "
                        "dogclf[onnx])")
    p.add_argument("--calibration", default=None, metavar="DIR",
                   help="training photos to calibrate onnx-int8 with when the artifact has none recorded")


def _backend_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("backend")
    g.add_argument("--backend", default=None, help="local (default, or $DOGCLF_BACKEND) or sagemaker")
    g.add_argument("--root", default=None, help="local backend folder (default $DOGCLF_HOME or ~/.dogclf)")
    g.add_argument("--role", default=None, help="sagemaker: IAM role ARN")
    g.add_argument("--bucket", default=None, help="sagemaker: S3 bucket")
    g.add_argument("--region", default=None, help="sagemaker: AWS region")
    return p


def _model_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model and entry point")
    g.add_argument("--backbone", default="resnet50", help="resnet18|resnet34|resnet50|resnet101|resnet152")
    g.add_argument("--weights", default="DEFAULT",
                   help="pretrained weights: DEFAULT (the backbone's), a name such as IMAGENET1K_V1, a checkpoint "
                        "path, or None")
    g.add_argument("--resize", type=int, default=None, help="short side images are resized to (default 256)")
    g.add_argument("--crop", type=int, default=None, help="centre crop the network sees (default 224)")
    g.add_argument("--set", action="append", metavar="NAME=VALUE",
                   help="any other entry-point hyperparameter (repeatable), e.g. --set freeze=last-block")
    g.add_argument("--instance-type", default="ml.c5.2xlarge", help="sagemaker: training instance type")
    return p


def _json_option() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written; shows a default only when there is one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dogclf`` command (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="dogclf", description="Dog-breed classification, locally or on SageMaker.",
                                     epilog="Run 'dogclf COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"dogclf {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--quiet", action="store_true", help="log warnings only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    backend, model, as_json = _backend_options(), _model_options(), _json_option()

    def add(name: str, help: str, description: str, parents: Sequence[argparse.ArgumentParser] = ()) -> Any:
        return sub.add_parser(name, help=help, description=description, parents=list(parents),
                              formatter_class=_Formatter)

    p = add("stage", "validate a dataset and stage it with a manifest (DatasetStager)",
            "Get a dataset in the dogImages layout (train|valid|test/NNN.Breed/*.jpg) from a folder, .zip, "
            "http(s) URL or s3:// prefix, validate it and put it at TARGET (a folder or s3://bucket/prefix) with "
            "a manifest. Staging the same source again is a no-op.", [as_json])
    p.add_argument("source", nargs="?", default=None,
                   help="folder, .zip, URL or s3:// prefix (default: the dogImages URL)")
    p.add_argument("target", nargs="?", default=None,
                   help="folder or s3://bucket/prefix (default: <local backend root>/data/dogImages)")
    p.add_argument("--labels", default=None, help="label set the classes must match, e.g. dogimages-133")
    p.add_argument("--name", default=None, help="dataset name recorded in the manifest")
    p.add_argument("--sha256", default=None, help="expected sha256 of the zip")
    p.add_argument("--on-corrupt", choices=("fail", "skip"), default="fail",
                   help="what to do with images that do not decode")
    p.add_argument("--cache-short-side", type=int, default=None,
                   help="also write a downscaled copy (256 is what a 224 crop needs)")
    p.add_argument("--force", action="store_true", help="stage again even if already staged")
    p.set_defaults(func=commands._cmd_stage)

    p = add("tune", "tune hyperparameters as training jobs (HPOExperiment)",
            "Tune the entry point's hyperparameters on a staged dataset. The default space is the seed's: "
            + " ".join(_SEED_SPACE) + ". SPEC forms: LOW..HIGH, LOW..HIGH:log, int:LOW..HIGH, A,B,C.",
            [backend, model, as_json])
    p.add_argument("data", nargs="?", default=None, help="staged dataset root (train/ valid/ test/) or s3:// URI")
    p.add_argument("--space", action="append", metavar="NAME=SPEC", help="a tuned hyperparameter (repeatable)")
    p.add_argument("--objective", default="test_loss", help="metric to optimise (…_acc is maximised)")
    p.add_argument("--trials", type=int, default=3, help="trials in all")
    p.add_argument("--parallel", type=int, default=1, help="trials at once")
    p.add_argument("--strategy", default="bayesian", choices=("bayesian", "random", "grid"))
    p.add_argument("--early-stopping", default="off", choices=("off", "auto"))
    p.add_argument("--name", default=None, help="experiment name (default hpo-<time>)")
    p.add_argument("--attach", default=None, metavar="NAME", help="report on an existing experiment instead")
    p.add_argument("--seed", type=int, default=None, help="seed of the strategy")
    p.add_argument("--out", default=None, help="write the best parameters to this JSON file")
    p.add_argument("--plot", default=None, help="write the trials plot to this PNG")
    p.set_defaults(func=commands._cmd_tune)

    p = add("train", "train with Debugger collections, rules and profiling (DebugTrainer)",
            "Run one training job with the seed's Debugger collections, the rules and profiling, then build the "
            "report.", [backend, model, as_json])
    p.add_argument("data", help="staged dataset root (train/ valid/ test/) or s3:// URI")
    p.add_argument("--params", default=None,
                   help="JSON file of hyperparameters, e.g. 'dogclf tune --out' (its best_hyperparameters); "
                        "it overrides --backbone/--weights/--resize/--crop, --set overrides it")
    p.add_argument("--job-name", default=None, help="the job's name")
    p.add_argument("--report", default=None, help="where the HTML report goes (default: in the job output)")
    p.add_argument("--rule", action="append", help="a rule to run (repeatable; default: all tensor rules)")
    p.add_argument("--no-profiler", action="store_true", help="switch system monitoring and profiling off")
    p.add_argument("--monitor-ms", type=int, default=500, help="system monitor interval")
    p.set_defaults(func=commands._cmd_train)

    p = add("report", "build the Debugger/profiler report of a finished job (build_report)",
            "Evaluate the rules on a finished job's tensors and profile and write the HTML report.",
            [as_json])
    p.add_argument("job", help="a local job name, its job folder, or its output data folder")
    p.add_argument("--root", default=None, help="local backend folder to find the job name in")
    p.add_argument("--out", default=None, help="the HTML file (default: <output>/report/debug-report.html)")
    p.add_argument("--rule", action="append", help="a tensor rule to evaluate (repeatable; default: all)")
    p.set_defaults(func=commands._cmd_report)

    p = add("deploy", "serve a model artifact behind an endpoint (EndpointDeployer)",
            "Deploy an artifact folder or model.tar.gz. A local endpoint serves until Ctrl-C (or --duration); "
            "a SageMaker endpoint keeps running after the command ends.", [backend, as_json])
    p.add_argument("artifact", help="artifact folder, model.tar.gz, or s3:// model.tar.gz (sagemaker)")
    p.add_argument("--port", type=int, default=None, help="local port (default: a free one)")
    p.add_argument("--max-batch-size", type=int, default=8, help="dynamic batching: images per forward pass")
    p.add_argument("--endpoint-name", default=None, help="the endpoint's name")
    p.add_argument("--instance-type", default=None, help="sagemaker: endpoint instance type (ml.m5.large)")
    p.add_argument("--duration", type=float, default=None, help="local: serve this many seconds, then stop")
    _runtime_options(p)
    p.set_defaults(func=commands._cmd_deploy)

    p = add("predict", "predict breeds of photos, write an annotated gallery (BreedPredictor)",
            "Predict one photo or every photo under a folder, in this process from a model artifact, through a "
            "temporary local endpoint (--deploy), or through a SageMaker endpoint (--endpoint).",
            [backend, as_json])
    p.add_argument("model", nargs="?", default=None, help="artifact folder or model.tar.gz (not with --endpoint)")
    p.add_argument("photos", help="a photo or a folder of photos")
    p.add_argument("--endpoint", default=None, help="name of a SageMaker endpoint to call")
    p.add_argument("--deploy", action="store_true", help="deploy a local endpoint for the run, then delete it")
    p.add_argument("--gallery", default=None, help="write annotated copies here (predicted_<Breed>_<file>)")
    p.add_argument("--csv", default=None, help="write the predictions table here")
    p.add_argument("-k", type=int, default=3, help="breeds listed per photo")
    p.add_argument("--labels", default=None, help="label set to read true breeds from file names")
    _runtime_options(p)
    p.set_defaults(func=commands._cmd_predict)

    p = add("labels", "list, show and look up breed label sets",
            "Breed label sets: output i of a model is breed i of its label set.")
    lsub = p.add_subparsers(dest="labels_cmd", required=True, metavar="ACTION")
    q = lsub.add_parser("list", help="registered label sets")
    q.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'dogimages-*'")
    q = lsub.add_parser("show", help="the breeds of a label set in label order")
    q.add_argument("name", nargs="?", default="dogimages-133")
    q.add_argument("--json", action="store_true", help="print the JSON form that model artifacts carry")
    q = lsub.add_parser("find", help="look breeds up by any spelling ('german shepherd dog')")
    q.add_argument("breeds", nargs="+")
    q.add_argument("--name", default="dogimages-133", help="label set to search (default: dogimages-133)")
    p.set_defaults(func=commands._cmd_labels)

    p = add("backends", "list the registered backends", "The backends registered in the dogclf.backends group.")
    p.set_defaults(func=commands._cmd_backends)
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage checks argparse cannot express (they exit 2 like argparse's own)."""
    if args.command == "tune" and not args.attach and not args.data:
        parser.error("tune: give a staged dataset folder (or --attach NAME)")
    if args.command == "predict":
        if args.endpoint and args.model:
            parser.error("predict: give a model artifact or --endpoint, not both")
        if not args.endpoint and not args.model:
            parser.error("predict: give a model artifact (or --endpoint NAME)")
        if args.endpoint and (args.runtime or args.calibration):
            parser.error("predict: --runtime and --calibration choose how a model artifact is served; an --endpoint "
                         "serves the runtime it was deployed with (dogclf deploy --runtime ...)")
    if getattr(args, "backend", None) == "sagemaker" and args.command in ("tune", "train", "deploy") \
            and not args.role:
        parser.error(f"{args.command} --backend sagemaker needs --role (the IAM role ARN jobs assume)")



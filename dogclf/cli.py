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

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dogclf import __version__
from dogclf.errors import ConfigError, DogclfError

__all__ = ["main", "build_parser", "parse_space", "parse_assignments"]

logger = logging.getLogger(__name__)

_SEED_SPACE = ("lr=0.001..0.1:log", "batch-size=32,64,128", "epochs=1,2")


# -- small parsers ---------------------------------------------------------------------------------------------
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


def _static_hyperparameters(args: argparse.Namespace) -> dict[str, Any]:
    hp: dict[str, Any] = {"backbone": args.backbone, "weights": str(args.weights)}
    for name in ("resize", "crop"):
        if getattr(args, name) is not None:
            hp[name] = getattr(args, name)
    hp.update(parse_assignments(args.set or []))
    return hp


def _emit(args: argparse.Namespace, data: dict[str, Any], lines: Sequence[str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=1, default=str))
    else:
        for line in lines:
            print(line)


def _tqdm() -> Any:
    from tqdm.auto import tqdm

    return tqdm


class _EpochProgress:
    """A backend wrapper whose ``train`` shows a progress bar over the job's epochs (from its metric lines).

    :class:`~dogclf.debug.DebugTrainer` calls ``backend.train(spec)``; the local backend accepts ``on_log_line``,
    which this wrapper adds. Other backends are used as they are.
    """

    def __init__(self, backend: Any, epochs: int | None) -> None:
        self._backend = backend
        self._epochs = epochs
        self.name = backend.name

    def train(self, spec: Any, **kwargs: Any) -> Any:
        from dogclf.training import parse_metric_line

        if self.name != "local" or "on_log_line" in kwargs:
            return self._backend.train(spec, **kwargs)
        bar = _tqdm()(total=self._epochs, desc=f"train {spec.job_name or ''}".strip(), unit="epoch")

        def on_line(line: str) -> None:
            parsed = parse_metric_line(line)
            if parsed and "epoch" in parsed:
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in parsed.items() if k.endswith("loss")})

        try:
            return self._backend.train(spec, on_log_line=on_line, **kwargs)
        finally:
            bar.close()

    def tune(self, spec: Any, **kwargs: Any) -> Any:
        return self._backend.tune(spec, **kwargs)

    def deploy(self, artifact: Any, **kwargs: Any) -> Any:
        return self._backend.deploy(artifact, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


# -- commands --------------------------------------------------------------------------------------------------
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


def _cmd_stage(args: argparse.Namespace) -> int:
    from dogclf.data import DatasetStager

    tqdm = _tqdm()
    bars: dict[str, Any] = {}

    def progress(phase: str, done: int, total: int | None) -> None:
        bar = bars.get(phase)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[phase] = tqdm(total=total, desc=phase, unit="B" if phase == "download" else "file",
                                     unit_scale=phase == "download")
        if total is not None and bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    options: dict[str, Any] = {"on_corrupt": args.on_corrupt, "force": args.force}
    for name in ("labels", "sha256", "cache_short_side", "name"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    try:
        staged = DatasetStager(args.source, args.target, progress=progress, **options).run()
    finally:
        for bar in bars.values():
            bar.close()
    counts = {split: sum(c.values()) for split, c in staged.counts.items()}
    data = {"uri": staged.uri, "channels": dict(staged.channels), "manifest": staged.manifest_uri,
            "breeds": len(staged.labels), "images": counts, "skipped": list(staged.skipped), "noop": staged.noop,
            "cache": staged.cache_uri}
    lines = [f"{'already staged' if staged.noop else 'staged'} {staged.n_images} images of {len(staged.labels)} "
             f"breeds at {staged.uri}",
             "  " + ", ".join(f"{split}: {n}" for split, n in counts.items()),
             f"  manifest {staged.manifest_uri}"]
    if staged.skipped:
        lines.append(f"  skipped {len(staged.skipped)} unreadable images (listed in the manifest)")
    _emit(args, data, lines)
    return 0


def _run_with_progress(experiment: Any, bar: Any) -> None:
    """``experiment.run()`` in a thread while ``bar`` counts finished trials; the run's error is re-raised here."""
    import threading

    errors: list[BaseException] = []

    def target() -> None:
        try:
            experiment.run()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="dogclf-tune", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
        state = getattr(experiment, "state_", None)
        if state is not None:
            bar.n = sum(t.finished for t in state.trials)
            bar.refresh()
    if errors:
        raise errors[0]


def _cmd_tune(args: argparse.Namespace) -> int:
    from dogclf.hpo import HPOExperiment
    from dogclf.training import TrainingJobSpec

    backend = _backend(args)
    space = parse_space(args.space or _SEED_SPACE)
    if args.attach:
        experiment = HPOExperiment.attach(args.attach, backend=backend)
    else:
        spec = TrainingJobSpec(hyperparameters=_static_hyperparameters(args), channels=_channels(args.data),
                               instance_type=args.instance_type)
        experiment = HPOExperiment(spec, space, args.objective, max_trials=args.trials, max_parallel=args.parallel,
                                   strategy=args.strategy, early_stopping=args.early_stopping, backend=backend,
                                   name=args.name, seed=args.seed)
        with _tqdm()(total=args.trials, desc=f"tune {experiment.name}", unit="trial") as bar:
            _run_with_progress(experiment, bar)
    best = experiment.best_trial_
    data = {"experiment": experiment.name, "objective": experiment.objective.metric,
            "best_objective": best.objective, "best_job": best.job_name, "best_params": experiment.best_params_,
            "best_hyperparameters": experiment.best_hyperparameters_, "space": experiment.space.to_dict()}
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
        os.replace(tmp, out)
    if args.plot:
        experiment.plot(args.plot)
    lines = [experiment.format_jobs_table(), "",
             f"best {experiment.objective.metric} {best.objective:.6g} ({best.job_name}): "
             f"{json.dumps(experiment.best_params_)}"]
    if args.out:
        lines.append(f"best parameters written to {args.out}")
    _emit(args, data, lines)
    return 0


def _load_params(path: str) -> dict[str, Any]:
    """Hyperparameters from a JSON file: ``dogclf tune --out``'s (``best_hyperparameters``/``best_params``) or a
    plain ``{"lr": ..., ...}``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        from dogclf.errors import NotFoundError

        raise NotFoundError(f"parameter file {path!r} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"parameter file {path!r} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"parameter file {path!r} must hold a JSON object, got {type(data).__name__}")
    for key in ("best_hyperparameters", "best_params"):
        if isinstance(data.get(key), dict):
            return dict(data[key])
    return data


def _cmd_train(args: argparse.Namespace) -> int:
    from dogclf.debug import DebuggerConfig, DebugTrainer, ProfilerConfig

    backend = _backend(args)
    # --set overrides the --params file, which overrides --backbone/--weights/--resize/--crop.
    hp = {**_static_hyperparameters(args), **(_load_params(args.params) if args.params else {}),
          **parse_assignments(args.set or [])}
    rules = tuple(args.rule) if args.rule else DebuggerConfig().rules
    profiler = None if args.no_profiler else ProfilerConfig(system_monitor_interval_millis=args.monitor_ms)
    config = DebuggerConfig(rules=rules, profiler=profiler)
    epochs = int(hp.get("epochs", 2))
    trainer = DebugTrainer(hp, _channels(args.data), config=config, backend=_EpochProgress(backend, epochs),
                           job_name=args.job_name, report_path=args.report, instance_type=args.instance_type)
    trainer.fit()
    result, report = trainer.result_, trainer.report_
    data = {"job_name": result.job_name, "status": result.status, "metrics": result.metrics,
            "artifact": result.model_artifact, "output_dir": result.output_dir, "report": str(report.html_path),
            "rules_triggered": report.triggered, "hyperparameters": result.hyperparameters}
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items()) if isinstance(v, float))
    _emit(args, data, [f"job {result.job_name} {result.status}: {metrics}",
                       f"  artifact {result.model_artifact}",
                       f"  report   {report.html_path}",
                       f"  rules triggered: {', '.join(report.triggered) or 'none'}"])
    return 0


def _job_output_dir(job: str, args: argparse.Namespace) -> Path:
    """A job's output data folder from a folder path or a local job name."""
    path = Path(job).expanduser()
    if path.is_dir():
        if (path / "output" / "data").is_dir():
            return path / "output" / "data"
        return path
    from dogclf.backends.local import default_root
    from dogclf.errors import NotFoundError

    root = Path(args.root) if args.root else default_root()
    candidate = root / "jobs" / job / "output" / "data"
    if candidate.is_dir():
        return candidate
    raise NotFoundError(f"{job!r} is neither a job output folder nor a local job under {root / 'jobs'}")


def _cmd_report(args: argparse.Namespace) -> int:
    from dogclf.debug import build_report

    output_dir = _job_output_dir(args.job, args)
    report = build_report(output_dir, args.out, rules=args.rule or None,
                          summary={"job output": str(output_dir)})
    data = {"report": str(report.html_path), "images": {k: str(v) for k, v in report.images.items()},
            "rules_triggered": report.triggered, "step_stats": dict(report.step_stats)}
    _emit(args, data, [f"report {report.html_path}",
                       f"  {len(report.findings)} rule findings; triggered: {', '.join(report.triggered) or 'none'}"])
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from dogclf.serving import EndpointDeployer

    backend = _backend(args)
    options: dict[str, Any] = {"max_batch_size": args.max_batch_size, "runtime": args.runtime or "torch",
                               "calibration": args.calibration}
    if args.port is not None:
        options["port"] = args.port
    if args.endpoint_name:
        options["endpoint_name"] = args.endpoint_name
    if args.instance_type:
        options["instance_type"] = args.instance_type
    endpoint = EndpointDeployer(**options).deploy(args.artifact, backend=backend)
    url = getattr(endpoint, "url", None)
    data = {"endpoint": endpoint.name, "url": url, "backend": backend.name}
    _emit(args, data, [f"endpoint {endpoint.name} in service" + (f" at {url}" if url else "")])
    sys.stdout.flush()
    if backend.name != "local":
        if hasattr(endpoint, "keep"):
            endpoint.keep()
        print(f"  it runs (and costs) until deleted: dogclf predict ... --endpoint {endpoint.name}; delete it in "
              "the SageMaker console or with SageMakerEndpoint.attach(name).delete()")
        return 0
    # A local endpoint lives as long as this process.
    try:
        if args.duration is not None:
            time.sleep(args.duration)
        else:
            print("  serving until Ctrl-C (POST images to /invocations, GET /ping)")
            sys.stdout.flush()
            while endpoint.is_running:
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        endpoint.delete()
    print(f"endpoint {endpoint.name} deleted")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from dogclf.serving import BreedPredictor, EndpointDeployer

    if args.endpoint:
        from dogclf.backends.sagemaker.serving import SageMakerEndpoint, make_session

        source: Any = SageMakerEndpoint.attach(args.endpoint, make_session(_backend(args)), labels=args.labels)
        cleanup = None
    elif args.deploy:
        source = EndpointDeployer(runtime=args.runtime or "torch", calibration=args.calibration).deploy(
            args.model, backend=_backend(args))
        cleanup = source.delete
    else:
        source, cleanup = args.model, None
    in_process = not args.endpoint and not args.deploy
    try:
        photos = Path(args.photos)
        predictor = BreedPredictor(source, k=args.k, labels=args.labels,
                                   runtime=args.runtime if in_process else None,
                                   calibration=args.calibration if in_process else None)
        if photos.is_file():
            with _tqdm()(total=1, desc="predict", unit="photo") as bar:
                pred = predictor.predict(photos)
                bar.update()
            data = {"file": str(photos), "breed": pred.breed, "display_name": pred.display_name,
                    "probability": pred.probability, "top_k": [s.breed for s in pred.top_k]}
            _emit(args, data, [f"{photos.name}: " + ", ".join(f"{s.display_name} {s.probability:.1%}"
                                                              for s in pred.top_k)])
            return 0
        with _tqdm()(total=None, desc="predict", bar_format="{desc} {elapsed}"):
            table = predictor.predict_folder(photos, args.gallery)
    finally:
        if cleanup is not None:
            cleanup()
    if args.csv:
        table.to_csv(args.csv, index=False)
    rows = table.to_dict(orient="records")
    lines = []
    for row in rows:
        if row["error"] is not None and not (isinstance(row["error"], float) and math.isnan(row["error"])):
            lines.append(f"{row['file']}: ERROR {row['error']}")
        else:
            lines.append(f"{row['file']}: {row['display_name']} ({row['probability']:.1%})"
                         + (f" -> {row['annotated']}" if row.get("annotated") else ""))
    known = table[table["correct"].notna()] if "correct" in table else table.iloc[0:0]
    if len(known):
        lines.append(f"accuracy on {len(known)} photos with a known breed: {known['correct'].astype(bool).mean():.1%}")
    _emit(args, {"predictions": rows, "gallery": args.gallery, "csv": args.csv}, lines)
    failed = int(table["error"].notna().sum())
    return 1 if failed and failed == len(table) else 0


# -- the parser ------------------------------------------------------------------------------------------------
def _runtime_options(p: argparse.ArgumentParser) -> None:
    from dogclf.serving.runtimes import RUNTIMES

    p.add_argument("--runtime", choices=RUNTIMES, default=None,
                   help="inference runtime: torch (eager, default), onnx (ONNX Runtime fp32) or onnx-int8 (static "
                        "int8); an "
                        "ONNX runtime the artifact lacks is exported and checked first (needs dogclf[onnx])")
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
    g.add_argument("--weights", default="IMAGENET1K_V2",
                   help="torchvision weights (IMAGENET1K_V2, IMAGENET1K_V1, DEFAULT), a checkpoint path, or None")
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
    p.set_defaults(func=_cmd_stage)

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
    p.set_defaults(func=_cmd_tune)

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
    p.set_defaults(func=_cmd_train)

    p = add("report", "build the Debugger/profiler report of a finished job (build_report)",
            "Evaluate the rules on a finished job's tensors and profile and write the HTML report.",
            [as_json])
    p.add_argument("job", help="a local job name, its job folder, or its output data folder")
    p.add_argument("--root", default=None, help="local backend folder to find the job name in")
    p.add_argument("--out", default=None, help="the HTML file (default: <output>/report/debug-report.html)")
    p.add_argument("--rule", action="append", help="a tensor rule to evaluate (repeatable; default: all)")
    p.set_defaults(func=_cmd_report)

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
    p.set_defaults(func=_cmd_deploy)

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
    p.set_defaults(func=_cmd_predict)

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
    p.set_defaults(func=_cmd_labels)

    p = add("backends", "list the registered backends", "The backends registered in the dogclf.backends group.")
    p.set_defaults(func=_cmd_backends)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

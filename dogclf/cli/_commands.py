"""The ``dogclf`` subcommands: each turns its options into one library call and prints the result."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from dogclf.cli._common import (
    _SEED_SPACE,
    _backend,
    _emit,
    _EpochProgress,
    _spec,
    _tqdm,
    parse_space,
)
from dogclf.errors import ConfigError

logger = logging.getLogger("dogclf.cli")


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
            "cache": staged.cache_uri, "stats": dict(staged.stats)}
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

    backend = _backend(args)
    space = parse_space(args.space or _SEED_SPACE)
    if args.attach:
        experiment = HPOExperiment.attach(args.attach, backend=backend)
    else:
        spec = _spec(args)
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
        from dogclf._io import atomic_write_json

        atomic_write_json(args.out, data, default=str)
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
    spec = _spec(args, _load_params(args.params) if args.params else None)
    rules = tuple(args.rule) if args.rule else DebuggerConfig().rules
    profiler = None if args.no_profiler else ProfilerConfig(system_monitor_interval_millis=args.monitor_ms)
    config = DebuggerConfig(rules=rules, profiler=profiler)
    trainer = DebugTrainer(spec, config, backend=_EpochProgress(backend, spec.training.epochs),
                           report_path=args.report)
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
    from dogclf._paths import home
    from dogclf.errors import NotFoundError

    root = Path(args.root) if args.root else home()
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
    endpoint = EndpointDeployer(backend=backend, **options).deploy(args.artifact)
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
        backend = _backend(args)
        if not callable(getattr(backend, "attach_endpoint", None)):
            raise ConfigError(f"backend {backend.name!r} cannot attach to a named endpoint; use --backend sagemaker")
        source: Any = backend.attach_endpoint(args.endpoint, labels=args.labels)
        cleanup = None
    elif args.deploy:
        source = EndpointDeployer(runtime=args.runtime or "torch", calibration=args.calibration,
                                  backend=_backend(args)).deploy(args.model)
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



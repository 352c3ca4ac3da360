"""Benchmark: the seed's hyperparameter search, seed-style vs HPOExperiment on the local backend.

The seed tuned ``lr`` in [0.001, 0.1], batch size {32, 64, 128} and epochs {1, 2} of a ResNet50 with a frozen
backbone, minimising the average test loss, as separate training jobs run one after another. Here, on the same
synthetic dogImages-shaped dataset:

* **seed-style**: the trials' hyperparameters trained one after another, each a fresh training job of the entry
  point that runs the frozen backbone over every image in every epoch (``feature-cache off``), as the seed's jobs
  did;
* **dogclf**: ``HPOExperiment(..., max_parallel=2).run()`` on a cold local backend: the first trial fills the
  shared backbone feature cache, every other trial is a head fit on cached features in a warm worker process.

Both run with 3 and with 12 trials (the seed-style run is timed after its 3rd and 12th job; its trials are the
12-trial experiment's, whose first 3 are the 3-trial experiment's). Also printed: one plain backbone pass over all
images (the floor any approach pays once) and the marginal cost of one more trial. Last line:
``ratio=<seed-style time / dogclf time at 12 trials>``.

Run: ``.venv/bin/python benchmarks/bench_hpo.py`` (the seed-style jobs dominate: about 20 minutes on 2 cores shared
with other work, less on idle ones; ``--help`` for sizes, e.g. ``--train-per-class 4`` for a quicker, noisier run).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its ended child processes (job processes, pool workers):
    steadier than wall time when other work shares the cores."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def backbone_pass(data: Path, backbone: str, batch_size: int = 32) -> tuple[float, int]:
    """Seconds for one forward pass of the frozen backbone over every image (decode included), and the count."""
    import torch

    from dogclf.images import Normalizer
    from dogclf.models import ResNetBreedModel, forward_features
    from dogclf.training.data import decode_batches, resolve_data_labels, scan_split

    labels = resolve_data_labels("auto", data / "train")
    model = ResNetBreedModel(labels, backbone=backbone, weights="IMAGENET1K_V2").build()
    module = model.module_.eval()
    pre = model.config.preprocess
    norm = Normalizer(pre)
    total, n = 0.0, 0
    for split in ("train", "valid", "test"):
        s = scan_split(split, data / split, labels)
        start = time.perf_counter()
        with torch.inference_mode():
            for images, _ in decode_batches(s, pre, pre.crop, batch_size, 0):
                forward_features(module, norm(images))
        total += time.perf_counter() - start
        n += len(s)
    return total, n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--train-per-class", type=int, default=8)
    p.add_argument("--eval-per-class", type=int, default=2, help="valid and test images per class")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--sizes", default="3,12", help="trial counts to compare")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from dogclf.backends.local import LocalBackend
    from dogclf.data import make_synthetic_dataset
    from dogclf.hpo import Categorical, Continuous, HPOExperiment
    from dogclf.models.testing import place_fake_weights
    from dogclf.training import TrainingJobSpec

    work = Path(tempfile.mkdtemp(prefix="dogclf-bench-hpo-"))
    try:
        # Pretrained weights as the seed used them, loaded through torchvision's cache (random tensors here).
        os.environ["TORCH_HOME"] = str(work / "torch")
        place_fake_weights(args.backbone, "IMAGENET1K_V2", work / "torch")
        data = work / "dogImages"
        make_synthetic_dataset(data, n_classes=args.classes, image_size=args.image_size, seed=0,
                               per_class={"train": args.train_per_class, "valid": args.eval_per_class,
                                          "test": args.eval_per_class})
        static = {"backbone": args.backbone, "weights": "IMAGENET1K_V2", "freeze": "head", "seed": 0}
        space = {"lr": Continuous(0.001, 0.1), "batch_size": Categorical([32, 64, 128]),
                 "epochs": Categorical([1, 2])}
        floor, n_images = backbone_pass(data, args.backbone)
        print(f"data: {n_images} synthetic {args.image_size}px images, {args.classes} classes; "
              f"{args.backbone} (frozen), resize 256 / crop 224; {os.cpu_count()} CPUs")
        print(f"floor: one plain backbone pass over all {n_images} images: {floor:.1f}s")

        dogclf_s: dict[int, float] = {}
        dogclf_cpu: dict[int, float] = {}
        seed_cpu: dict[int, float] = {}
        params: list[dict] = []
        within = float("nan")  # marginal trial cost inside the largest run: trial ends after the smallest size
        for n in sizes:
            backend = LocalBackend(work / f"home-dogclf-{n}")   # cold feature cache for every size
            spec = TrainingJobSpec.from_hyperparameters(static, {"training": str(data)})
            exp = HPOExperiment(spec, space, "test_loss", max_trials=n, max_parallel=args.parallel,
                                strategy="bayesian", backend=backend, name=f"bench-{n}", seed=0)
            start, cpu = time.perf_counter(), cpu_seconds()
            exp.run()
            dogclf_s[n] = time.perf_counter() - start
            dogclf_cpu[n] = cpu_seconds() - cpu
            df = exp.trials_
            bad = df[df["status"] != "Completed"]
            if len(bad):
                print(f"WARNING: {len(bad)} dogclf trials did not complete: {bad['failure_reason'].tolist()}")
            print(f"dogclf HPOExperiment, {n} trials, {args.parallel} in parallel: {dogclf_s[n]:.1f}s "
                  f"(best test_loss {exp.best_trial_.objective:.4f} with {exp.best_params_})")
            params = [dict(p) for p in df[list(space)].to_dict("records")]
            ends = sorted(df["ended"].dropna())
            if n == sizes[-1] and len(ends) > sizes[0]:
                within = (ends[-1] - ends[sizes[0] - 1]).total_seconds() / (len(ends) - sizes[0])

        # Seed-style: the largest experiment's trials, one fresh job after another, backbone on every image.
        seed_backend = LocalBackend(work / "home-seed")
        seed_s: dict[int, float] = {}
        start, cpu = time.perf_counter(), cpu_seconds()
        for i, hp in enumerate(params, start=1):
            spec = TrainingJobSpec.from_hyperparameters({**static, **hp, "feature_cache": "off"},
                                                        {"training": str(data)}, job_name=f"seed-style-{i:03d}")
            result = seed_backend.train(spec, raise_on_failure=False)
            if result.status != "Completed":
                print(f"WARNING: seed-style job {i} {result.status}: {result.failure_reason}")
            if i in sizes:
                seed_s[i] = time.perf_counter() - start
                seed_cpu[i] = cpu_seconds() - cpu
                print(f"seed-style, {i} training jobs one after another: {seed_s[i]:.1f}s")

        lo, hi = sizes[0], sizes[-1]
        print()
        print(f"{'trials':>6} {'seed-style s':>13} {'dogclf s':>9} {'ratio':>6}   "
              f"{'seed-style cpu s':>16} {'dogclf cpu s':>13} {'cpu ratio':>9}")
        for n in sizes:
            print(f"{n:>6} {seed_s[n]:>13.1f} {dogclf_s[n]:>9.1f} {seed_s[n] / dogclf_s[n]:>6.2f}   "
                  f"{seed_cpu[n]:>16.1f} {dogclf_cpu[n]:>13.1f} {seed_cpu[n] / dogclf_cpu[n]:>9.2f}")
        if hi > lo:
            print(f"marginal cost of one more trial: dogclf {(dogclf_s[hi] - dogclf_s[lo]) / (hi - lo):.2f}s between "
                  f"runs, {within:.2f}s within the {hi}-trial run ({args.parallel} in parallel); seed-style "
                  f"{(seed_s[hi] - seed_s[lo]) / (hi - lo):.2f}s (floor {floor:.1f}s per backbone pass)")
        print(f"ratio={seed_s[hi] / dogclf_s[hi]:.2f}")
    finally:
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

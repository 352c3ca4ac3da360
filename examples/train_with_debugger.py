"""Step 3: train with Debugger collections, rules and profiling with :class:`dogclf.debug.DebugTrainer`.

The seed's estimator with ``debugger_hook_config`` (weights, gradients, biases and the CrossEntropyLoss output),
``rules=[loss_not_decreasing, ProfilerReport]`` and ``profiler_config``, which no longer runs as written
(Debugger is closed to new customers, smdebug's framework profiling fails on torch 2.x). Here it runs on PyTorch
2.x, locally or on SageMaker, and the report is built at the end::

    python examples/train_with_debugger.py
    python examples/train_with_debugger.py --data runs/stage/dogImages --params runs/tune/best_params.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("SMDEBUG_LOG_LEVEL", "error")  # smdebug logs each rule invocation at INFO

from dogclf.backends import get_backend  # noqa: E402
from dogclf.data import DatasetStager, make_synthetic_dataset  # noqa: E402
from dogclf.debug import CollectionConfig, DebuggerConfig, DebugTrainer, ProfilerConfig, RuleConfig  # noqa: E402
from dogclf.training import TrainingJobSpec  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="folder for the outputs")
    p.add_argument("--data", default=None, help="a staged dataset folder (default: a synthetic one made here)")
    p.add_argument("--params", type=Path, default=None, help="hyperparameters JSON (e.g. the tune example's)")
    p.add_argument("--tiny", action="store_true", help="the smallest run (CI)")
    args = p.parse_args(argv)

    data = args.data
    if data is None:
        synthetic = make_synthetic_dataset(args.out / "synthetic", n_classes=3 if args.tiny else 5,
                                           per_class={"train": 4 if args.tiny else 12, "valid": 2, "test": 2},
                                           image_size=32, overwrite=True)
        data = DatasetStager(synthetic, args.out / "dogImages").run().uri

    spec = TrainingJobSpec({"backbone": "resnet18", "weights": None, "resize": 36, "crop": 32}, data,
                           {"num_workers": 0, "lr": 0.01, "batch_size": 4, "epochs": 2})
    if args.params:  # e.g. the tune example's best hyperparameters (any spelling)
        spec = spec.with_params(json.loads(args.params.read_text()))

    # The seed's four collections, spelled out (dogclf.debug.seed_collections() returns the same).
    every = {"train.save_interval": "5", "eval.save_interval": "1"}
    config = DebuggerConfig(
        collections=(CollectionConfig("model_weights", every), CollectionConfig("model_gradients", every),
                     CollectionConfig("biases_values", every),
                     CollectionConfig("LossOutput", {"include_regex": "CrossEntropyLoss_output_0",
                                                     "train.save_interval": "1", "eval.save_interval": "1"})),
        # the seed's rule, with parameters, plus two more; rules are plug-ins found by name
        rules=(RuleConfig("LossNotDecreasing", {"num_steps": 2}), "Overfit", "VanishingGradient"),
        # ProfilerReport's rules, run on the system monitor's samples and the step timings
        profiler_rules=("StepOutlier", "Dataloader", "CPUBottleneck", "BatchSize", "MaxInitializationTime"),
        profiler=ProfilerConfig(system_monitor_interval_millis=500, profile_start_step=1, profile_num_steps=2),
        rule_interval=2,
    )
    trainer = DebugTrainer(spec, config, backend=get_backend("local", root=args.out / "backend"),
                           report_path=args.out / "report" / "debug-report.html")
    trainer.fit()

    result = trainer.result_
    print(f"job {result.job_name}: {result.status}, test_loss={result.metrics.get('test_loss', float('nan')):.4f}")
    print(f"  model artifact    {result.model_artifact}")
    print(f"  Debugger tensors  {trainer.trial_path_}")
    print(f"  report            {trainer.report_.html_path}")
    for finding in trainer.findings_:
        print(f"  {'FIRED' if finding.triggered else 'ok   '} {finding.rule:24s} "
              f"{finding.trigger_count} of {finding.datapoints} datapoints")
    loss = trainer.report_.loss.get("TRAIN", ([], []))[1]
    if loss:
        print(f"  train loss {loss[0]:.3f} -> {loss[-1]:.3f} over {len(loss)} saved steps")


if __name__ == "__main__":
    main()

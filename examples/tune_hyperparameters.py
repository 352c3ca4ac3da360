"""Step 2: tune learning rate, batch size and epochs with :class:`dogclf.hpo.HPOExperiment`.

The seed's ``HyperparameterTuner(estimator, "average test loss", {"lr": ContinuousParameter(0.001, 0.1),
"batch-size": CategoricalParameter([32, 64, 128]), "epochs": CategoricalParameter([1, 2])}, max_jobs=3)``,
on the local backend (each trial a training job of the shared entry point in its own process)::

    python examples/tune_hyperparameters.py --trials 4
    python examples/tune_hyperparameters.py --data runs/stage/dogImages --backbone resnet50 --weights IMAGENET1K_V2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm.auto import tqdm

from dogclf.backends import get_backend
from dogclf.data import DatasetStager, make_synthetic_dataset
from dogclf.hpo import Categorical, Continuous, HPOExperiment
from dogclf.training import TrainingJobSpec


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/tune"), help="folder for the outputs")
    p.add_argument("--data", default=None, help="a staged dataset folder (default: a synthetic one made here)")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--weights", default=None, help="e.g. IMAGENET1K_V2 (default None: no downloads here)")
    p.add_argument("--tiny", action="store_true", help="the smallest run (CI)")
    args = p.parse_args(argv)

    data = args.data
    if data is None:
        synthetic = make_synthetic_dataset(args.out / "synthetic", n_classes=3 if args.tiny else 5,
                                           per_class={"train": 4 if args.tiny else 12, "valid": 2, "test": 2},
                                           image_size=32, overwrite=True)
        data = DatasetStager(synthetic, args.out / "dogImages").run().uri
    channels = {split: str(Path(data) / split) for split in ("train", "valid", "test")}

    # Static hyperparameters of every trial; small images so that this runs in seconds on a laptop.
    spec = TrainingJobSpec({"backbone": args.backbone, "weights": args.weights, "resize": 36, "crop": 32},
                           channels, {"num_workers": 0})
    space = {"lr": Continuous(0.001, 0.1, scale="log"),
             "batch_size": Categorical([4, 8] if args.tiny else [8, 16, 32]),
             "epochs": Categorical([1, 2])}
    experiment = HPOExperiment(spec, space, objective="valid_loss", max_trials=2 if args.tiny else args.trials,
                               max_parallel=1, strategy="bayesian", early_stopping="auto",
                               backend=get_backend("local", root=args.out / "backend"), seed=0)

    with tqdm(total=experiment.max_trials, desc="trials", unit="trial") as bar:
        experiment.run(wait=False)                  # trials run in a background thread
        while bar.n < experiment.max_trials:
            experiment.wait(timeout=1.0)            # re-raises the experiment's error, if any
            bar.n = int(experiment.trials_["status"].isin(["Completed", "Failed", "Stopped", "Pruned"]).sum())
            bar.refresh()
    experiment.wait()                               # the last trial's state is saved

    print(experiment.format_jobs_table())           # the console's "Training jobs" table
    print("best:", json.dumps(experiment.best_params_), f"valid_loss={experiment.best_trial_.objective:.4f}")
    experiment.plot(args.out / "hpo.png")
    (args.out / "best_params.json").write_text(json.dumps(experiment.best_hyperparameters_, indent=1))
    print(f"plot {args.out / 'hpo.png'}; best hyperparameters {args.out / 'best_params.json'}")
    # experiment.train_best() would train the final model; examples/train_with_debugger.py does it with Debugger.


if __name__ == "__main__":
    main()

"""The built-in tensor rules, re-implemented on smdebug's ``Rule`` API.

smdebug's wheel ships no rules (AWS's live only in its rule containers), so these follow AWS's documentation of
the built-ins of the same names, with the same parameters and defaults. Where the documentation leaves the exact
arithmetic open, the docstring says what this implementation computes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dogclf.errors import ConfigError

from .base import TensorRule

__all__ = [
    "LossNotDecreasing",
    "Overfit",
    "VanishingGradient",
    "ExplodingTensor",
    "PoorWeightInitialization",
    "WeightUpdateRatio",
    "ClassImbalance",
    "LOSS_REGEX",
]

LOSS_REGEX = r"[Ll]oss_(?!input).*output"
"""Tensors that hold a loss value (smdebug's ``losses`` collection regex)."""

_MODES = (None, "TRAIN", "EVAL", "PREDICT", "GLOBAL")


def _positive(p: dict[str, Any], *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = p[name]
        if value is None:
            continue
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero
                                                                                 else value > 0)
        if not ok:
            raise ConfigError(f"rule parameter {name} must be a number {'>= 0' if allow_zero else '> 0'}; "
                              f"got {value!r}")


class _LossRule(TensorRule):
    def _loss_names(self, step: int) -> list[str]:
        regex = self.parameters.get("tensor_regex")
        names = set(self._names_at(step, regex=regex or LOSS_REGEX)) if (regex or
                                                                          self.parameters["use_losses_collection"]) else set()
        if self.parameters["use_losses_collection"]:
            names |= set(self._names_at(step, collection="losses"))
        return sorted(names)


class LossNotDecreasing(_LossRule):
    """Fires when the loss stops going down.

    Every ``num_steps`` steps of ``mode`` (train by default) the mean loss of that window is compared with the
    previous window's: the rule fires when it fell by less than ``diff_percent`` percent, or when it rose more
    than ``increase_threshold_percent`` percent above the lowest window mean so far. Averaging over the window
    keeps mini-batch noise from firing it.

    Parameters (AWS's): ``tensor_regex`` (loss tensors; default: smdebug's losses regex),
    ``use_losses_collection`` (``True``), ``num_steps`` (10), ``diff_percent`` (0.1),
    ``increase_threshold_percent`` (5), ``mode`` (``None``: train steps).
    """

    defaults = {"tensor_regex": None, "use_losses_collection": True, "num_steps": 10, "diff_percent": 0.1,
                "increase_threshold_percent": 5.0, "mode": None}
    description = ("Checks if the loss is not decreasing: compares the mean loss of each window of num_steps "
                   "steps with the previous window's.")
    recommendation = ("Lower the learning rate, check the data and labels, or stop training if the loss has "
                      "converged.")

    def validate(self, p: dict[str, Any]) -> None:
        if not isinstance(p["num_steps"], int) or p["num_steps"] < 1:
            raise ConfigError(f"rule parameter num_steps must be an integer >= 1; got {p['num_steps']!r}")
        _positive(p, "diff_percent", "increase_threshold_percent", allow_zero=True)
        if p["mode"] is not None and str(p["mode"]).upper() not in _MODES:
            raise ConfigError(f"rule parameter mode must be one of TRAIN, EVAL, GLOBAL or None; got {p['mode']!r}")
        self._window: dict[str, list[float]] = {}
        self._prev: dict[str, float] = {}
        self._best: dict[str, float] = {}

    def check(self, step: int) -> Any:
        want = str(self.parameters["mode"] or "TRAIN").upper()
        if want != "GLOBAL" and self._mode(step) != want:
            return None
        fired: dict[str, Any] = {}
        judged = False
        for name in self._loss_names(step):
            window = self._window.setdefault(name, [])
            window.append(float(np.mean(self._value(name, step))))
            if len(window) < self.parameters["num_steps"]:
                continue
            mean = float(np.mean(window))
            window.clear()
            prev = self._prev.get(name)
            best = self._best.get(name, mean)
            self._prev[name] = mean
            self._best[name] = min(best, mean)
            if prev is None:
                continue
            judged = True
            not_decreasing = not mean < prev * (1 - self.parameters["diff_percent"] / 100)
            increased = mean > best * (1 + self.parameters["increase_threshold_percent"] / 100)
            if not_decreasing or increased or not np.isfinite(mean):
                fired[name] = {"window_mean": mean, "previous_window_mean": prev, "best_window_mean": best}
        if not judged:
            return None
        return fired or False


class Overfit(_LossRule):
    """Fires when the mean validation loss runs away from the mean training loss.

    Eval steps come in blocks (one per validation pass). At each eval step the running mean of the block's eval
    loss is compared with the mean training loss of the train steps since the previous block:
    ``(mean_eval - mean_train) / mean_train``. The rule fires when that exceeds ``ratio_threshold`` for
    ``patience`` eval steps in a row.

    Parameters (AWS's): ``tensor_regex``, ``use_losses_collection`` (``True``), ``patience`` (1),
    ``ratio_threshold`` (0.1), ``start_step`` (0).
    """

    defaults = {"tensor_regex": None, "use_losses_collection": True, "patience": 1, "ratio_threshold": 0.1,
                "start_step": 0}
    description = ("Detects if the model is overfitting: the mean validation loss is much higher than the mean "
                   "training loss.")
    recommendation = "Add regularisation (dropout, weight decay, augmentation), get more data, or stop earlier."

    def validate(self, p: dict[str, Any]) -> None:
        if not isinstance(p["patience"], int) or p["patience"] < 1:
            raise ConfigError(f"rule parameter patience must be an integer >= 1; got {p['patience']!r}")
        _positive(p, "ratio_threshold", allow_zero=True)
        _positive(p, "start_step", allow_zero=True)
        self._train: dict[str, list[float]] = {}
        self._train_ref: dict[str, float] = {}
        self._eval: dict[str, list[float]] = {}
        self._last_mode = None
        self._streak = 0

    def check(self, step: int) -> Any:
        if step < self.parameters["start_step"]:
            return None
        mode = self._mode(step)
        names = self._loss_names(step)
        if mode == "TRAIN":
            if self._last_mode == "EVAL":
                self._train = {}
            self._last_mode = mode
            for name in names:
                self._train.setdefault(name, []).append(float(np.mean(self._value(name, step))))
            return None
        if mode != "EVAL":
            return None
        if self._last_mode != "EVAL":  # a new validation pass: freeze the train reference
            self._train_ref = {n: float(np.mean(v)) for n, v in self._train.items() if v}
            self._eval = {}
        self._last_mode = mode
        gaps = {}
        for name in names:
            if name not in self._train_ref:
                continue
            self._eval.setdefault(name, []).append(float(np.mean(self._value(name, step))))
            train_loss, eval_loss = self._train_ref[name], float(np.mean(self._eval[name]))
            gaps[name] = ((eval_loss - train_loss) / max(abs(train_loss), 1e-12), train_loss, eval_loss)
        if not gaps:
            return None
        name, (gap, train_loss, eval_loss) = max(gaps.items(), key=lambda kv: kv[1][0])
        self._streak = self._streak + 1 if gap > self.parameters["ratio_threshold"] else 0
        if self._streak >= self.parameters["patience"]:
            return {"tensor": name, "ratio": gap, "mean_train_loss": train_loss, "mean_eval_loss": eval_loss}
        return False


class VanishingGradient(TensorRule):
    """Fires when the mean absolute value of a saved gradient tensor falls below ``threshold``.

    A bias whose gradient vanishes while its layer's weight gradient does not is not counted: the learning signal
    reaches that layer, and the bias is cancelled by a normalisation after it (in EfficientNet's linear
    bottlenecks every ``_bn2.bias`` feeds, through linear layers only, a BatchNorm that subtracts the batch mean,
    so its gradient is zero by construction). When the rule fires for other tensors, such biases are listed under
    ``cancelled_biases`` in the evidence.

    Parameters (AWS's): ``threshold`` (1e-7).
    """

    defaults = {"threshold": 0.0000001}
    description = "Detects if the gradients become extremely small or drop to zero."
    recommendation = ("Check the initialisation and activations (e.g. use ReLU, batch normalisation, residual "
                      "connections) and that the learning signal reaches the layers.")

    def validate(self, p: dict[str, Any]) -> None:
        _positive(p, "threshold", allow_zero=True)

    def check(self, step: int) -> Any:
        names = self._names_at(step, regex="^gradient")
        if not names:
            return None
        means = {name: float(np.mean(np.abs(self._value(name, step)))) for name in names}
        small = {n: v for n, v in means.items() if v < self.parameters["threshold"]}
        cancelled = sorted(n for n in small if n.endswith("bias") and
                           means.get(n[: -len("bias")] + "weight", 0.0) >= self.parameters["threshold"])
        for name in cancelled:
            del small[name]
        return {"tensors": small, "cancelled_biases": cancelled} if small else False


class ExplodingTensor(TensorRule):
    """Fires when a saved tensor holds NaN (or, unless ``only_nan``, infinite) values.

    Parameters (AWS's): ``collection_names`` (comma-separated; default all), ``tensor_regex``, ``only_nan``
    (``False``).
    """

    defaults = {"collection_names": None, "tensor_regex": None, "only_nan": False}
    description = "Detects if tensors emitted during training have non-finite values, either infinite or NaN."
    recommendation = "Lower the learning rate, clip gradients, or check the inputs and the loss for invalid values."

    def check(self, step: int) -> Any:
        names: set[str] = set()
        collections = [c.strip() for c in str(self.parameters["collection_names"] or "").split(",") if c.strip()]
        if collections:
            for c in collections:
                names |= set(self._names_at(step, collection=c))
        if self.parameters["tensor_regex"]:
            names |= set(self._names_at(step, regex=self.parameters["tensor_regex"]))
        if not collections and not self.parameters["tensor_regex"]:
            names = set(self._names_at(step))
        if not names:
            return None
        bad = {}
        for name in sorted(names):
            value = self._value(name, step)
            if not np.issubdtype(value.dtype, np.floating):
                continue
            nan = int(np.isnan(value).sum())
            inf = 0 if self.parameters["only_nan"] else int(np.isinf(value).sum())
            if nan or inf:
                bad[name] = {"nan": nan, "inf": inf}
        return {"tensors": bad} if bad else False


class PoorWeightInitialization(TensorRule):
    """Fires when the weights look badly initialised during the first ``steps`` steps.

    AWS's rule compares the variance of activation inputs across layers. When ``activation_inputs_regex``
    matches saved tensors, those are used; otherwise the weight tensors are. It fires when the largest
    per-layer variance is more than ``threshold`` times the smallest, or when a layer's values span less
    than ``distribution_range`` (e.g. all zeros or a constant). ``patience`` steps at the start are skipped.

    Parameters (AWS's): ``activation_inputs_regex``, ``threshold`` (10.0), ``distribution_range`` (0.001),
    ``patience`` (5), ``steps`` (10).
    """

    defaults = {"activation_inputs_regex": None, "threshold": 10.0, "distribution_range": 0.001, "patience": 5,
                "steps": 10}
    description = ("Detects if the model parameters have been poorly initialised: variance across layers differs "
                   "too much, or a layer's values are (nearly) constant.")
    recommendation = ("Use a standard initialisation (Kaiming/Xavier, or the pretrained weights) and check "
                      "that no layer starts constant.")

    def validate(self, p: dict[str, Any]) -> None:
        _positive(p, "threshold", "distribution_range", allow_zero=True)
        _positive(p, "patience", "steps", allow_zero=True)

    def check(self, step: int) -> Any:
        if self._mode(step) not in ("TRAIN", "GLOBAL"):
            return None
        mode_step = self.base_trial.mode_step(step) if self._mode(step) == "TRAIN" else step
        if mode_step > self.parameters["steps"]:
            return None
        regex = self.parameters["activation_inputs_regex"] or r"^(?!gradient).*weight$"
        names = self._names_at(step, regex=regex)
        if not names:
            return None
        stats = {}
        for name in names:
            value = self._value(name, step).astype(np.float64)
            stats[name] = (float(np.var(value)), float(np.max(value) - np.min(value)) if value.size else 0.0)
        flat = {n: r for n, (v, r) in stats.items() if r < self.parameters["distribution_range"]}
        variances = [v for v, _ in stats.values() if v > 0]
        ratio = max(variances) / min(variances) if len(variances) > 1 else 1.0
        if mode_step < min(self.parameters["patience"], self.parameters["steps"]) and not flat:
            # early steps only judge constant layers; variance ratios need a few updates to settle
            return False
        if flat or ratio > self.parameters["threshold"]:
            return {"variance_ratio": ratio, "constant_layers": flat,
                    "variances": {n: v for n, (v, _) in stats.items()}}
        return False


class WeightUpdateRatio(TensorRule):
    """Fires when weight updates are too large or too small relative to the weights.

    For each trained weight tensor the ratio ``||w_t - w_prev|| / (||w_prev|| + epsilon)`` is taken between the
    current saved train step and the previous saved one (or the one ``num_steps`` before, when given and saved);
    it fires above ``large_threshold`` or below ``small_threshold``. Weights without saved gradients (a frozen
    backbone) are left out when the trial holds gradients at all.

    Parameters (AWS's): ``num_steps`` (``None``), ``large_threshold`` (10), ``small_threshold`` (1e-8),
    ``epsilon`` (1e-9).
    """

    defaults = {"num_steps": None, "large_threshold": 10.0, "small_threshold": 0.00000001, "epsilon": 0.000000001}
    description = "Keeps track of the ratio of updates to weights during training and detects if it gets too large or too small."
    recommendation = ("A large ratio: lower the learning rate. A tiny ratio: the weights are not training; raise "
                      "the learning rate or check that the optimizer holds these parameters.")

    def validate(self, p: dict[str, Any]) -> None:
        if p["num_steps"] is not None and (not isinstance(p["num_steps"], int) or p["num_steps"] < 1):
            raise ConfigError(f"rule parameter num_steps must be None or an integer >= 1; got {p['num_steps']!r}")
        _positive(p, "large_threshold", "small_threshold", "epsilon", allow_zero=True)
        self._history: dict[str, dict[int, np.ndarray]] = {}

    def check(self, step: int) -> Any:
        if self._mode(step) not in ("TRAIN", "GLOBAL"):
            return None
        names = self._names_at(step, regex=r"^(?!gradient).*weight$")
        trained = {n[len("gradient/"):] for n in self.base_trial.tensor_names(regex="^gradient/")}
        if trained:  # frozen weights (no saved gradient) never update; judging them would always fire
            names = [n for n in names if n in trained]
        ratios = {}
        for name in names:
            current = self._value(name, step).astype(np.float64)
            history = self._history.setdefault(name, {})
            previous = None
            if self.parameters["num_steps"] is not None:
                previous = history.get(step - self.parameters["num_steps"])
            elif history:
                previous = history[max(history)]
            history[step] = current
            if len(history) > 64:
                del history[min(history)]
            if previous is None or previous.shape != current.shape:
                continue
            diff = current - previous  # plain sums: np.linalg.norm goes through BLAS threads, slow on busy CPUs
            ratios[name] = float(np.sqrt(np.sum(diff * diff)) /
                                 (np.sqrt(np.sum(previous * previous)) + self.parameters["epsilon"]))
        if not ratios:
            return None
        bad = {n: r for n, r in ratios.items()
               if r > self.parameters["large_threshold"] or r < self.parameters["small_threshold"]}
        return {"ratios": bad} if bad else False


class ClassImbalance(TensorRule):
    """Fires on a strong class imbalance in the training labels, or on classes the model mostly gets wrong.

    Labels and predictions are the loss's inputs by default. Once at least ``samples`` labels have been seen,
    the rule fires when the most frequent training class occurs more than ``threshold_imbalance`` times as often
    as the least frequent one, or when, within a validation pass, some class seen at least five times is
    mispredicted at a rate above ``threshold_misprediction``. (Mispredictions are judged on validation
    predictions, which reflect the model as trained so far, not on the first training steps of an untrained
    model.) Predictions with a class axis are reduced with argmax (``argmax=True`` forces it).

    Parameters (AWS's): ``threshold_imbalance`` (10), ``threshold_misprediction`` (0.7), ``samples`` (500),
    ``argmax`` (``False``), ``labels_regex`` (``CrossEntropyLoss_input_1``), ``predictions_regex``
    (``CrossEntropyLoss_input_0``).
    """

    defaults = {"threshold_imbalance": 10.0, "threshold_misprediction": 0.7, "samples": 500, "argmax": False,
                "labels_regex": "CrossEntropyLoss_input_1", "predictions_regex": "CrossEntropyLoss_input_0"}
    description = "Measures class imbalance in the training labels and mispredictions per class."
    recommendation = "Rebalance the data (oversample rare breeds, class weights in the loss) or collect more images."

    def validate(self, p: dict[str, Any]) -> None:
        _positive(p, "threshold_imbalance", "threshold_misprediction", allow_zero=True)
        if not isinstance(p["samples"], int) or p["samples"] < 1:
            raise ConfigError(f"rule parameter samples must be an integer >= 1; got {p['samples']!r}")
        self._counts: dict[int, int] = {}
        self._seen = 0
        self._block: list[tuple[np.ndarray, np.ndarray]] = []
        self._last_mode: str | None = None

    def check(self, step: int) -> Any:
        labels = self._names_at(step, regex=self.parameters["labels_regex"])
        preds = self._names_at(step, regex=self.parameters["predictions_regex"])
        if not labels or not preds:
            return None
        y = self._value(labels[0], step).reshape(-1).astype(np.int64)
        p = self._value(preds[0], step)
        if self.parameters["argmax"] or p.ndim > 1:
            p = np.argmax(p.reshape(len(y), -1), axis=1)
        p = p.reshape(-1).astype(np.int64)
        if p.shape != y.shape:
            return None
        mode = self._mode(step)
        self._seen += len(y)
        if mode == "EVAL":
            if self._last_mode != "EVAL":
                self._block = []
            self._block.append((y, p))
        else:
            for c, n in zip(*np.unique(y, return_counts=True)):
                self._counts[int(c)] = self._counts.get(int(c), 0) + int(n)
        self._last_mode = mode
        if self._seen < self.parameters["samples"]:
            return None
        evidence: dict[str, Any] = {"samples": self._seen}
        fired = False
        if self._counts:
            most = max(self._counts, key=self._counts.__getitem__)
            least = min(self._counts, key=self._counts.__getitem__)
            ratio = self._counts[most] / self._counts[least]
            evidence.update(imbalance_ratio=float(ratio), most_frequent=most, least_frequent=least)
            fired = ratio > self.parameters["threshold_imbalance"]
        if mode == "EVAL" and self._block:
            y_all = np.concatenate([b[0] for b in self._block])
            p_all = np.concatenate([b[1] for b in self._block])
            mispredicted = {}
            for c, n in zip(*np.unique(y_all, return_counts=True)):
                if n >= 5:
                    rate = float(np.mean(p_all[y_all == c] != c))
                    if rate > self.parameters["threshold_misprediction"]:
                        mispredicted[int(c)] = rate
            if mispredicted:
                evidence["mispredicted_classes"] = dict(list(mispredicted.items())[:20])
                fired = True
        return evidence if fired else False

"""The training-side pieces: smdebug hook, in-process rules, and (from :mod:`.profiling`) system monitor, step
timer and ``torch.profiler``.

The training entry point (both backends) calls :func:`make_callbacks`, which reads the job's configuration the
way SageMaker hands it over (``SMDEBUG_CONFIG_FILE_PATH``, ``SMPROFILER_CONFIG_PATH``) plus dogclf's rule list
(``DOGCLF_DEBUG``), and returns callbacks that write everything under the job's output data folder::

    <output_data_dir>/tensors/                  smdebug trial (unless the hook config names another LocalPath)
    <output_data_dir>/debug/debughookconfig.json  the hook configuration in effect
    <output_data_dir>/debug/steps.json          per-step timings (data loading vs compute)
    <output_data_dir>/debug/system.json         system-monitor samples
    <output_data_dir>/debug/meta.json           run facts (start times, cores, workers, GPU)
    <output_data_dir>/debug/trace.json          torch.profiler Chrome trace of the profiled steps
    <output_data_dir>/debug/top_operators.json  the profiled steps' most expensive operators
    <output_data_dir>/debug/rules.json          findings of the rules evaluated during training
    <output_data_dir>/debug/trial.json          which trial folder is this job's own (:mod:`.resume`)

so a report can be built afterwards from the job folder alone (:func:`dogclf.debug.build_report`). A job killed and
started again continues all of them from its last checkpoint (:mod:`.resume`): the trial, the step timings and the
system samples end up as an uninterrupted run's.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from dogclf._extras import require
from dogclf.errors import ConfigError, OutputExistsError
from dogclf.training.callbacks import Callback, StepInfo, TrainingContext

from ._io import write_json
from .config import DebuggerConfig, ProfilerConfig, RuleConfig
from .profiling import StepTimer, SystemMonitor, TorchProfilerCallback
from .resume import check_fresh, kept_tensor_names, prepare_trial

__all__ = [
    "DEBUG_ENV",
    "HYPERPARAMETER",
    "decode_settings",
    "encode_settings",
    "HookCallback",
    "RuleCallback",
    "StepTimer",
    "SystemMonitor",
    "TorchProfilerCallback",
    "make_callbacks",
]

logger = logging.getLogger(__name__)

DEBUG_ENV = "DOGCLF_DEBUG"
"""Environment variable carrying the rules to evaluate in-process (JSON from :meth:`DebuggerConfig.rules_json`)."""

DEFAULT_HOOK_CONFIG = "/opt/ml/input/config/debughookconfig.json"


class HookCallback(Callback):
    """Saves the configured tensor collections with smdebug's PyTorch ``Hook``.

    Args:
        hook_config: smdebug's JSON hook configuration (``debughookconfig.json`` content).
        out_dir: Where the trial is written (``LocalPath``).
        config_path: Where to write the effective configuration smdebug reads.

    A job resumed from a checkpoint (``ctx.state["resumed_from"]``) continues its own trial at the checkpoint's
    step (see :mod:`.resume`).

    Raises:
        OutputExistsError: ``out_dir`` already holds files that are not this job's trial (smdebug would fail with a
            misleading ``prepared_collections`` error).
    """

    def __init__(self, hook_config: dict[str, Any], out_dir: Path, config_path: Path,
                 frozen_weights: str = "once") -> None:
        if frozen_weights not in ("once", "always"):
            raise ConfigError(f"frozen_weights must be 'once' or 'always'; got {frozen_weights!r}")
        self.hook_config = dict(hook_config)
        self.out_dir = Path(out_dir)
        self.config_path = Path(config_path)
        self.frozen_weights = frozen_weights
        self.hook: Any = None
        self._mode: str | None = None

    def on_train_begin(self, ctx: TrainingContext) -> None:
        """Create the hook (continuing this job's trial when it resumes) and register the model and the loss."""
        resumed = ctx.state.get("resumed_from")
        steps = (resumed or {}).get("steps") or {}
        train, evals = int(steps.get("train", 0)), int(steps.get("eval", 0))
        kept = prepare_trial(self.out_dir, self.config_path.parent, train + evals if resumed else None)
        self.hook_config["LocalPath"] = str(self.out_dir)
        params = dict(self.hook_config.get("HookParameters") or {})
        if ctx.state.get("world_size", 1) > 1 and params.get("include_workers", "one") != "one":
            # In a job of several processes only rank 0 runs callbacks: its tensors are the trial (worker_0).
            logger.warning("include_workers=%r: dogclf saves the tensors of rank 0 only", params["include_workers"])
            self.hook_config["HookParameters"] = {**params, "include_workers": "one"}
        write_json(self.config_path, self.hook_config)
        Hook = require("debug", "smdebug.pytorch", "Debugger hook").Hook  # on SageMaker: the job's requirements.txt

        try:
            self.hook = Hook.create_from_json_file(str(self.config_path))
        except AttributeError as exc:  # smdebug's symptom of an existing out_dir, should a race create one
            if "prepared_collections" in str(exc):
                raise OutputExistsError(f"Debugger output folder {str(self.out_dir)!r} already exists") from exc
            raise
        if resumed:
            self._continue_at(self.hook, train, evals, kept)
        if self.frozen_weights == "once" and hasattr(self.hook, "_log_params"):
            self._save_frozen_once(self.hook, kept_tensor_names(self.out_dir) if kept else set())
        self.hook.register_module(ctx.model)
        if ctx.loss_fn is not None:
            self.hook.register_loss(ctx.loss_fn)
        ctx.state["smdebug_hook"] = self.hook
        ctx.state["tensor_dir"] = str(self.out_dir)

    @staticmethod
    def _continue_at(hook: Any, train: int, evals: int, kept: int) -> None:
        """Number the hook's next steps after a checkpoint's ``train`` and ``evals`` steps (each step is one
        forward pass of the registered module), as smdebug's own restore from a saved state does."""
        from smdebug import modes

        hook.step = hook.init_step = train + evals - 1
        hook.mode_steps.update({modes.GLOBAL: train + evals - 1, modes.TRAIN: train - 1, modes.EVAL: evals - 1})
        if kept:  # the trial's collections file lists what the kept steps saved; keep it rather than a shorter one
            hook.exported_collections = True

    @staticmethod
    def _save_frozen_once(hook: Any, saved_before: set[str] | None = None) -> None:
        """Save parameters that do not train (a frozen backbone) at their first save step only.

        smdebug saves every matching parameter at every save step; frozen ones never change, and on a ResNet
        they are nearly all of the bytes written. smdebug 1.0.34 (the last release) saves them in
        ``Hook._log_params``, which this replaces for this hook only, with the same tensor names.
        """
        saved: set[str] = set(saved_before or ())

        def log_params(module: Any) -> None:
            prefix = module._get_name()
            for name, param in module.named_parameters():
                tensor_name = f"{prefix}_{name}"
                if not param.requires_grad:
                    if tensor_name in saved:
                        continue
                    if not hook._is_tensor_saved_for_step(tensor_name):
                        continue
                    saved.add(tensor_name)
                hook._save_for_tensor(tensor_name=tensor_name, tensor_value=param.data)

        hook._log_params = log_params

    def on_step_begin(self, ctx: TrainingContext, mode: str, step: int) -> None:
        """Switch the hook's mode (TRAIN/EVAL) when the loop switches."""
        if self.hook is not None and mode != self._mode:
            from smdebug import modes

            self.hook.set_mode(modes.TRAIN if mode == "train" else modes.EVAL)
            self._mode = mode

    def on_epoch_end(self, ctx: TrainingContext, epoch: int, metrics: dict[str, float]) -> None:
        """Write out the epoch's last step before the checkpoint is taken (smdebug closes a step's files only at
        the next step), so a job resumed from that checkpoint finds every step before it complete."""
        if self.hook is not None and getattr(self.hook, "writer", None) is not None:
            self.hook._close_writers()

    def on_train_end(self, ctx: TrainingContext, metrics: dict[str, float]) -> None:
        """Flush and close the trial (marks the training as ended for readers)."""
        if self.hook is not None:
            self.hook.close()
            _mark_training_end(self.out_dir)


def _mark_training_end(out_dir: Path) -> None:
    marker = out_dir / "training_job_end.ts"
    if not marker.exists():
        marker.write_text(str(time.time()))


class RuleCallback(Callback):
    """Evaluates tensor rules on the trial being written, every ``interval`` train steps.

    Rules see only finished steps; a rule configured with ``stop_training=True`` that fires sets
    ``ctx.stop_training``. At the end the remaining steps are evaluated, the profiler rules run on the recorded
    timings, and all findings go to ``rules.json``.

    Args:
        rules: Tensor rules to evaluate.
        profiler_rules: Profiler rules to evaluate at the end.
        interval: Train steps between evaluations.
        tensor_dir: The trial folder the hook writes.
        debug_dir: The ``debug/`` folder of the job's output.
    """

    def __init__(self, rules: tuple[RuleConfig, ...], profiler_rules: tuple[RuleConfig, ...], interval: int,
                 tensor_dir: Path | None, debug_dir: Path) -> None:
        self.rules = rules
        self.profiler_rules = profiler_rules
        self.interval = interval
        self.tensor_dir = Path(tensor_dir) if tensor_dir else None
        self.debug_dir = Path(debug_dir)
        self._trial: Any = None
        self._built: list[tuple[RuleConfig, Any]] = []
        self._next_step = 0
        self._train_steps = 0
        self.stopped_by: str | None = None

    def on_step_end(self, ctx: TrainingContext, info: StepInfo) -> None:
        """Every ``interval`` train steps, evaluate the steps finished since the last time."""
        if info.mode != "train" or not self.rules or self.tensor_dir is None:
            return
        self._train_steps += 1
        if self._train_steps % self.interval:
            return
        hook = ctx.state.get("smdebug_hook")
        limit = getattr(hook, "step", None)
        self._evaluate(ctx, limit)

    def _evaluate(self, ctx: TrainingContext | None, limit: int | None) -> None:
        from .rules import build_rule
        from .trial import has_tensors

        if self._trial is None:
            if not has_tensors(self.tensor_dir):
                return
            create_trial = require("debug", "smdebug.trials", "Debugger rule evaluation").create_trial

            self._trial = create_trial(str(self.tensor_dir))
            self._trial._training_end_delay_refresh = 0  # local files are complete once the hook has closed
            self._built = [(c, build_rule(c, self._trial)) for c in self.rules]
        from smdebug.analysis.utils import no_refresh
        from smdebug.exceptions import StepUnavailable, TensorUnavailable, TensorUnavailableForStep

        # One refresh per evaluation: smdebug's Rule.invoke() re-lists the trial's index folder on every call,
        # which costs more than a training step; invoke_at_step() on a frozen view gives the same verdicts.
        self._trial.maybe_refresh()
        steps = [s for s in self._trial.steps(show_incomplete_steps=limit is None)
                 if s >= self._next_step and (limit is None or s < limit)]
        cache: dict[tuple[str, int], Any] = {}  # each tensor is read once per evaluation, not once per rule
        for _, rule in self._built:
            rule.value_cache = cache
        with no_refresh([self._trial]):
            for step in steps:
                for config, rule in self._built:
                    try:
                        fired = rule.invoke_at_step(step)
                    except (StepUnavailable, TensorUnavailable, TensorUnavailableForStep) as exc:
                        logger.debug("rule %s skipped step %s: %s", config.name, step, exc)
                        continue
                    if fired and config.stop_training and ctx is not None and not ctx.stop_training:
                        ctx.stop_training = True
                        ctx.stop_reason = f"rule {config.name} triggered at step {step}"
                        self.stopped_by = ctx.stop_reason
                        logger.warning("stopping training: %s (%s)", ctx.stop_reason, rule.evidence)
                self._next_step = step + 1

    def on_train_end(self, ctx: TrainingContext, metrics: dict[str, float]) -> None:
        """Evaluate the rest of the run and write ``rules.json``."""
        from .report import load_profile
        from .rules import evaluate_profile

        findings: list[dict[str, Any]] = []
        if self.rules and self.tensor_dir is not None:
            try:
                self._evaluate(None, None)
            except Exception as exc:  # noqa: BLE001 - a rule bug must not fail the training job
                logger.warning("evaluating tensor rules failed: %s: %s", type(exc).__name__, exc)
            findings += [rule.finding().to_dict() for _, rule in self._built]
        if self.profiler_rules:
            try:
                findings += [f.to_dict() for f in evaluate_profile(load_profile(self.debug_dir), self.profiler_rules)]
            except Exception as exc:  # noqa: BLE001
                logger.warning("evaluating profiler rules failed: %s: %s", type(exc).__name__, exc)
        write_json(self.debug_dir / "rules.json", {"stopped_by": self.stopped_by, "findings": findings})


def _read_json_file(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the {what} at {os.fspath(path)!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"the {what} at {os.fspath(path)!r} must hold a JSON object")
    return data


def _sanitize_profiler_env(profiler_path: Path, debug_dir: Path, data: dict[str, Any]) -> None:
    """Keep smdebug's own profiler (broken on torch 2.x) off: point it at a copy that disables it."""
    if data.get("DisableProfiler") is True:
        return
    safe = dict(data, DisableProfiler=True)
    target = write_json(debug_dir / "smdebug-profilerconfig.json", safe)
    os.environ["SMPROFILER_CONFIG_PATH"] = str(target)


HYPERPARAMETER = "dogclf-debug"
"""Hyperparameter that carries the same settings as ``DOGCLF_DEBUG`` (used on SageMaker, whose environment values
are limited to 512 characters; hyperparameters allow 2500)."""

_ENCODED = "z1:"


def encode_settings(settings: dict[str, Any]) -> str:
    """Pack debugger settings into a short ASCII string (zlib + URL-safe base64), safe on any command line."""
    import base64
    import zlib

    raw = json.dumps(settings, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return _ENCODED + base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode("ascii")


def decode_settings(text: str) -> dict[str, Any]:
    """Inverse of :func:`encode_settings`; plain JSON is accepted too.

    Raises:
        ConfigError: the text is neither.
    """
    import base64
    import binascii
    import zlib

    try:
        if text.startswith(_ENCODED):
            data = json.loads(zlib.decompress(base64.urlsafe_b64decode(text[len(_ENCODED):].encode("ascii"))))
        else:
            data = json.loads(text)
    except (ValueError, binascii.Error, zlib.error) as exc:
        raise ConfigError(f"{DEBUG_ENV} / {HYPERPARAMETER} is not valid JSON or packed settings: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{DEBUG_ENV} / {HYPERPARAMETER} must hold a JSON object; got {type(data).__name__}")
    return data


def make_callbacks(hyperparameters: dict[str, Any], output_data_dir: Path) -> list[Callback]:
    """The callbacks the training entry point attaches for Debugger tensors, rules and profiling.

    Reads the hook configuration from ``SMDEBUG_CONFIG_FILE_PATH`` (SageMaker's ``debughookconfig.json``), the
    profiler configuration from ``SMPROFILER_CONFIG_PATH`` and the in-process rules from ``DOGCLF_DEBUG`` (or the
    ``dogclf-debug`` hyperparameter, see :func:`encode_settings`), whose ``hook`` and ``profiler`` entries stand in
    for the files where the platform writes none (SageMaker accounts without Debugger); returns an empty list when
    nothing is set.

    Args:
        hyperparameters: The job's hyperparameters (``num_workers`` and ``batch_size`` feed the profiler rules).
        output_data_dir: The job's output data folder; tensors and profiling data are written below it.

    Returns:
        Callbacks in the order they must run: hook, step timer, system monitor, ``torch.profiler``, rules.

    Raises:
        ConfigError: a configuration file is unreadable, or a rule in ``DOGCLF_DEBUG`` is unknown or has bad
            parameters.
        OutputExistsError: the tensor folder already holds files that are not this job's own trial.
    """
    output_data_dir = Path(output_data_dir)
    debug_dir = output_data_dir / "debug"
    callbacks: list[Callback] = []

    hook_path = os.environ.get("SMDEBUG_CONFIG_FILE_PATH") or (
        DEFAULT_HOOK_CONFIG if Path(DEFAULT_HOOK_CONFIG).is_file() else None)
    profiler_path = os.environ.get("SMPROFILER_CONFIG_PATH")
    hp = hyperparameters or {}
    packed = os.environ.get(DEBUG_ENV) or hp.get(HYPERPARAMETER) or hp.get(HYPERPARAMETER.replace("-", "_"))
    settings = decode_settings(str(packed)) if packed else None

    profiler: ProfilerConfig | None = None
    profiler_data = None
    if profiler_path and Path(profiler_path).is_file():
        profiler_data = _read_json_file(profiler_path, "profiler configuration")
        _sanitize_profiler_env(Path(profiler_path), debug_dir, profiler_data)
    if settings and isinstance(settings.get("profiler"), dict):
        profiler_data = settings["profiler"]  # dogclf's own settings win over the platform's file
    if profiler_data is not None:
        try:
            profiler = ProfilerConfig.from_json(profiler_data)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid profiler configuration {profiler_data!r:.200}: {exc}") from exc

    tensor_dir: Path | None = None
    hook_config = None
    if hook_path and Path(hook_path).is_file():
        hook_config = _read_json_file(hook_path, "Debugger hook configuration")
    elif settings and isinstance(settings.get("hook"), dict):
        hook_config = dict(settings["hook"])
    if hook_config is not None:
        local = hook_config.get("LocalPath")
        tensor_dir = Path(local) if local else output_data_dir / "tensors"
        check_fresh(tensor_dir, debug_dir)
        frozen = (settings or {}).get("frozen_weights", "once")
        callbacks.append(HookCallback(hook_config, tensor_dir, debug_dir / "debughookconfig.json", frozen))

    if settings is not None:
        from .rules import validate_rules

        defaults = DebuggerConfig()
        rules = validate_rules(settings.get("rules", defaults.rules), "tensor")
        profiler_rules = validate_rules(settings.get("profiler_rules", defaults.profiler_rules), "profiler")
        try:
            interval = int(settings.get("rule_interval", defaults.rule_interval))
        except (TypeError, ValueError):
            interval = 0
        if interval < 1:
            raise ConfigError(f"rule_interval must be an integer >= 1; got {settings.get('rule_interval')!r}")
    elif tensor_dir is not None or profiler is not None:
        defaults = DebuggerConfig()
        rules, profiler_rules, interval = defaults.rules, defaults.profiler_rules, defaults.rule_interval
    else:
        return []

    if profiler is None or profiler.enabled:
        callbacks.append(StepTimer(debug_dir))
    if profiler is not None and profiler.enabled:
        callbacks.append(SystemMonitor(debug_dir, profiler.system_monitor_interval_millis))
        if profiler.profile_num_steps > 0:
            callbacks.append(TorchProfilerCallback(debug_dir, profiler.profile_start_step, profiler.profile_num_steps))
    if tensor_dir is None:
        rules = ()
    if profiler is None:
        profiler_rules = ()
    callbacks.append(RuleCallback(tuple(rules), tuple(profiler_rules), interval, tensor_dir, debug_dir))
    logger.info("debugger callbacks: %s", ", ".join(type(c).__name__ for c in callbacks))
    return callbacks


"""SageMaker backend: hyperparameter tuning as a SageMaker hyperparameter-tuning job.

:class:`~dogclf.hpo.HPOExperiment` calls :meth:`SageMakerBackend.tune <dogclf.backends.sagemaker.SageMakerBackend.tune>`
with the experiment's state; this module turns it into a ``sagemaker.tuner.HyperparameterTuner`` over the PyTorch
estimator the training capability builds for the same spec (:func:`build_tuner`): the search space as
``ContinuousParameter`` / ``IntegerParameter`` / ``CategoricalParameter`` ranges with their scaling types, the
objective metric and its regex among the metric definitions, the strategy, ``max_jobs``, ``max_parallel_jobs`` and
``early_stopping_type``. The tuning job is named after the experiment, so running the experiment again attaches
to it instead of starting another; its training jobs become the experiment's trials through
``ListTrainingJobsForHyperParameterTuningJob`` (:func:`list_trials`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import TYPE_CHECKING, Any

from dogclf._contract import wire_value
from dogclf.backends.sagemaker.distribution import check_tuned_batch_size, distribution_from_hyperparameters
from dogclf.backends.sagemaker.session import error_cause
from dogclf.backends.sagemaker.training import _session, build_estimator, channel_inputs
from dogclf.errors import BackendError, ConfigError

if TYPE_CHECKING:
    from dogclf.backends.sagemaker import SageMakerBackend


__all__ = ["tune", "build_tuner", "parameter_ranges", "list_trials", "trial_from_summary", "state_from_tuning_job",
           "STATUS_MAP"]

logger = logging.getLogger(__name__)

STATUS_MAP = {"InProgress": "InProgress", "Stopping": "InProgress", "Completed": "Completed", "Failed": "Failed",
              "Stopped": "Stopped"}
"""SageMaker training-job status -> trial status."""

_SCALING = {"linear": "Linear", "log": "Logarithmic"}


def parameter_ranges(space: Any) -> dict[str, Any]:
    """The search space as the SageMaker SDK's parameter ranges (``{name: ContinuousParameter(...), ...}``).

    Names are the hyperparameters' wire names (``batch-size``); ``scale="log"`` maps to
    ``scaling_type="Logarithmic"``, ``"linear"`` to ``"Linear"``; categorical values are sent as strings, as
    SageMaker passes every hyperparameter.
    """
    from sagemaker.parameter import (
        CategoricalParameter,
        ContinuousParameter,
        IntegerParameter,
    )

    from dogclf.hpo.space import Categorical, Continuous, Integer
    from dogclf.training import TrainingJobSpec

    wire = TrainingJobSpec.tunable()  # the ranges carry the entry point's option names, as the jobs receive them
    out: dict[str, Any] = {}
    for python, r in space.items():
        name = wire.get(python, python)
        if isinstance(r, Continuous):
            out[name] = ContinuousParameter(r.low, r.high, scaling_type=_SCALING[r.scale])
        elif isinstance(r, Integer):
            out[name] = IntegerParameter(r.low, r.high, scaling_type=_SCALING[r.scale])
        elif isinstance(r, Categorical):
            out[name] = CategoricalParameter([wire_value(v) for v in r.values])
        else:  # pragma: no cover - SearchSpace admits only the three
            raise ConfigError(f"range {name!r} of type {type(r).__name__} has no SageMaker equivalent")
    return out


def build_tuner(backend: SageMakerBackend, spec: Any, state: Any) -> Any:
    """The ``HyperparameterTuner`` for an experiment, without starting it.

    Args:
        backend: The :class:`~dogclf.backends.sagemaker.SageMakerBackend`.
        spec: The base ``TrainingJobSpec``; its hyperparameters (minus the tuned ones) become the static ones.
        state: The experiment's :class:`~dogclf.hpo.ExperimentState`.

    Raises:
        ConfigError: a strategy SageMaker does not run, or a pruning rule other than the default median rule; a
            distributed spec whose tuned ``batch_size`` values the world size does not divide.
    """
    from sagemaker.tuner import HyperparameterTuner

    strategy = state.strategy
    if not strategy.sagemaker_name:
        raise ConfigError(f"strategy {strategy!r} has no SageMaker equivalent; use 'bayesian', 'random' or 'grid'")
    objective = state.objective
    check_tuned_batch_size(spec, state.space)
    # The tuned names are set per training job; the estimator carries only the static ones.
    estimator = build_estimator(backend, spec, tuned=list(state.space))
    definitions = [dict(d) for d in (getattr(spec, "metric_definitions", None) or [])]
    if objective.metric not in {d["Name"] for d in definitions}:
        definitions.append(objective.metric_definition())
    else:
        definitions = [objective.metric_definition() if d["Name"] == objective.metric else d for d in definitions]
    grid = strategy.sagemaker_name == "Grid"
    return HyperparameterTuner(
        estimator=estimator,
        objective_metric_name=objective.metric,
        hyperparameter_ranges=parameter_ranges(state.space),
        metric_definitions=definitions,
        strategy=strategy.sagemaker_name,
        objective_type="Minimize" if objective.direction == "minimize" else "Maximize",
        # The SDK would send None for a grid (the API wants a number): the grid's size, or fewer if asked.
        max_jobs=min(state.max_trials, strategy.max_trials(state.space) or state.max_trials),
        max_parallel_jobs=state.max_parallel,
        early_stopping_type="Off" if grid or state.early_stopping is None else "Auto",
        random_seed=state.seed,
    )


def _value(text: Any, rng: Any) -> Any:
    from dogclf.hpo.space import Categorical, Integer

    text = str(text)
    try:
        text = json.loads(text) if text.startswith('"') else text  # framework estimators JSON-encode values
    except ValueError:
        pass
    if isinstance(rng, Categorical):
        for v in rng.values:
            if wire_value(v) == str(text):
                return v
        return text
    try:
        return int(float(text)) if isinstance(rng, Integer) else float(text)
    except ValueError:
        return text


def _timestamp(value: Any) -> float | None:
    if value is None:
        return None
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value)


def trial_from_summary(summary: dict[str, Any], number: int, space: Any) -> Any:
    """One ``TrainingJobSummaries`` entry of ``ListTrainingJobsForHyperParameterTuningJob`` as a trial record.

    Args:
        summary: The entry (``TrainingJobName``, ``TrainingJobStatus``, ``TunedHyperParameters``,
            ``FinalHyperParameterTuningJobObjectiveMetric``, ``CreationTime``, ``TrainingStartTime``,
            ``TrainingEndTime``, ``FailureReason``).
        number: The trial's number.
        space: The experiment's search space (turns the string hyperparameters back into typed values).
    """
    from dogclf.hpo.trial import Trial
    from dogclf.training import TrainingJobSpec

    wire = TrainingJobSpec.tunable()
    tuned = summary.get("TunedHyperParameters") or {}
    params = {name: _value(tuned[wire.get(name, name)], rng) for name, rng in space.items()
              if wire.get(name, name) in tuned}
    final = summary.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
    value = final.get("Value")
    objective = float(value) if value is not None and math.isfinite(float(value)) else None
    started, ended = _timestamp(summary.get("TrainingStartTime")), _timestamp(summary.get("TrainingEndTime"))
    status = STATUS_MAP.get(summary.get("TrainingJobStatus", ""), "Failed")
    return Trial(
        number=number, params=params, job_name=summary["TrainingJobName"], status=status, objective=objective,
        metrics={final["MetricName"]: objective} if objective is not None and final.get("MetricName") else {},
        failure_reason=summary.get("FailureReason"), created=_timestamp(summary.get("CreationTime")), ended=ended,
        duration_s=(ended - started) if started is not None and ended is not None else None,
    )


def _job_number(name: str) -> int | None:
    m = re.search(r"-(\d{3})-[0-9a-f]{8}$", name)
    return int(m.group(1)) - 1 if m else None


def list_trials(client: Any, tuning_job_name: str, space: Any) -> list[Any]:
    """Every training job of a tuning job as trial records, in creation order (all pages).

    Args:
        client: A boto3 ``sagemaker`` client.
        tuning_job_name: The tuning job.
        space: The experiment's search space.
    """
    summaries: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"HyperParameterTuningJobName": tuning_job_name, "MaxResults": 100}
    while True:
        page = client.list_training_jobs_for_hyper_parameter_tuning_job(**kwargs)
        summaries.extend(page.get("TrainingJobSummaries", []))
        token = page.get("NextToken")
        if not token:
            break
        kwargs["NextToken"] = token
    summaries.sort(key=lambda s: (_timestamp(s.get("CreationTime")) or 0.0, s["TrainingJobName"]))
    trials = []
    for i, s in enumerate(summaries):
        number = _job_number(s["TrainingJobName"])
        trials.append(trial_from_summary(s, number if number is not None else i, space))
    trials.sort(key=lambda t: t.number)
    return trials


def tune(backend: SageMakerBackend, spec: Any, *, state: Any = None, launch: bool = True, wait: bool = True,
         **kwargs: Any) -> Any:
    """Start (or attach to) the experiment's SageMaker tuning job and copy its training jobs into the state.

    Args:
        backend: The :class:`~dogclf.backends.sagemaker.SageMakerBackend`.
        spec: The base ``TrainingJobSpec``; local channel folders are uploaded to the backend's bucket.
        state: The experiment's :class:`~dogclf.hpo.ExperimentState`.
        launch: Create the tuning job when the state has none yet; ``False`` only refreshes the trials.
        wait: Block until the tuning job has ended.

    Returns:
        ``state``, its ``trials`` replaced by the tuning job's training jobs and
        ``backend_state["tuning_job_name"]`` set.

    Raises:
        ConfigError: no state, unknown arguments, no IAM role, or a strategy SageMaker lacks.
        BackendError: the tuning job's training jobs could not be listed (``AccessDenied``, throttling, ...); the
            message carries the cause. The state keeps its earlier trials and is saved with the job's status.
    """
    if state is None:
        raise ConfigError("SageMakerBackend.tune needs state= (an ExperimentState); use dogclf.hpo.HPOExperiment")
    if kwargs:
        raise ConfigError(f"SageMakerBackend.tune got unknown arguments {sorted(kwargs)}")
    session = _session(backend)
    name = state.backend_state.get("tuning_job_name")
    if name is None and launch:
        tuner = build_tuner(backend, spec, state)
        inputs = channel_inputs(backend, spec, state.name, session)  # local folders are uploaded first
        tuner.fit(inputs=inputs, job_name=state.name, wait=False)
        name = tuner.latest_tuning_job.name
        state.backend_state["tuning_job_name"] = name
        state.save()
        logger.info("started SageMaker tuning job %s (%d jobs, %d in parallel)", name, state.max_trials,
                    state.max_parallel)
    if name is None:
        return state
    if wait:
        session.wait_for_tuning_job(name)
    client = session.sagemaker_client
    description = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    state.backend_state["status"] = description.get("HyperParameterTuningJobStatus")
    best = description.get("BestTrainingJob") or {}
    if best.get("TrainingJobName"):
        state.backend_state["best_training_job"] = best["TrainingJobName"]
    try:
        state.trials = list_trials(client, name, state.space)
    except Exception as exc:  # botocore errors: the cause goes to the caller, never "no trial yet"
        state.save()  # what was learnt (the status) is kept; the trials stay as they were
        raise BackendError(f"could not list the training jobs of SageMaker tuning job {name!r} (status "
                           f"{state.backend_state.get('status')}), so its trials are unknown here: "
                           f"{error_cause(exc)}") from exc
    state.save()
    return state


def _decode(text: Any) -> Any:
    """A hyperparameter value as SageMaker stores it (a string, JSON-encoded by framework estimators) -> Python."""
    value: Any = str(text)
    try:
        value = json.loads(value)
    except ValueError:
        pass
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "false"):
            return low == "true"
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                continue
    return value


def state_from_tuning_job(backend: SageMakerBackend, name: str) -> Any:
    """Rebuild an experiment's state from a SageMaker tuning job's description (``DescribeHyperParameterTuningJob``),
    for tuning jobs started elsewhere (another machine, the console, the SDK): the ranges become the search space,
    the objective and its metric regex the objective, the static hyperparameters, channels and instance type the
    base training spec. Its trials are filled in by :func:`tune` (``launch=False``).

    Raises:
        ConfigError: the tuning job uses something dogclf cannot express (e.g. several training definitions).
    """
    from dogclf.hpo.objective import Objective
    from dogclf.hpo.pruning import MedianStopping
    from dogclf.hpo.space import Categorical, Continuous, Integer, SearchSpace
    from dogclf.hpo.state import ExperimentState
    from dogclf.hpo.strategies import RandomStrategy, get_strategy
    from dogclf.training import METRIC_DEFINITIONS, TrainingJobSpec

    client = _session(backend).sagemaker_client
    desc = client.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    cfg = desc["HyperParameterTuningJobConfig"]
    job = desc.get("TrainingJobDefinition")
    if job is None:
        raise ConfigError(f"tuning job {name!r} has several training job definitions; dogclf attaches to tuning "
                          f"jobs of one estimator")
    ranges = cfg.get("ParameterRanges") or {}
    space: dict[str, Any] = {}
    for r in ranges.get("ContinuousParameterRanges", []):
        scale = "log" if r.get("ScalingType") == "Logarithmic" else "linear"
        space[r["Name"]] = Continuous(float(r["MinValue"]), float(r["MaxValue"]), scale=scale)
    for r in ranges.get("IntegerParameterRanges", []):
        scale = "log" if r.get("ScalingType") == "Logarithmic" else "linear"
        space[r["Name"]] = Integer(int(r["MinValue"]), int(r["MaxValue"]), scale=scale)
    for r in ranges.get("CategoricalParameterRanges", []):
        space[r["Name"]] = Categorical([_decode(v) for v in r["Values"]])
    target = cfg["HyperParameterTuningJobObjective"]
    definitions = (job.get("AlgorithmSpecification") or {}).get("MetricDefinitions") or [dict(d) for d in
                                                                                        METRIC_DEFINITIONS]
    regex = next((d["Regex"] for d in definitions if d["Name"] == target["MetricName"]), None)
    objective = Objective(target["MetricName"], regex, target["Type"].lower())
    try:
        strategy = get_strategy(cfg["Strategy"])
    except ConfigError:
        logger.warning("tuning job %s uses strategy %r; continuing it locally would search at random", name,
                       cfg["Strategy"])
        strategy = RandomStrategy()
    distribution = distribution_from_hyperparameters(job.get("StaticHyperParameters") or {})
    static = {k: _decode(v) for k, v in (job.get("StaticHyperParameters") or {}).items()
              if not k.startswith("sagemaker_")}
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job.get("InputDataConfig", [])
                if "S3DataSource" in c.get("DataSource", {})}
    resources = job.get("HyperParameterTuningResourceConfig") or job.get("ResourceConfig") or {}
    spec = TrainingJobSpec.from_hyperparameters(
        static, channels, instance_type=resources.get("InstanceType", "ml.c5.2xlarge"),
        instance_count=int(resources.get("InstanceCount", 1)), metric_definitions=definitions,
        distribution=distribution)
    limits = cfg["ResourceLimits"]
    return ExperimentState(
        name=name, backend=getattr(backend, "name", "sagemaker"), space=SearchSpace(space), objective=objective,
        strategy=strategy, max_trials=int(limits.get("MaxNumberOfTrainingJobs") or 1),
        max_parallel=int(limits.get("MaxParallelTrainingJobs") or 1),
        early_stopping=MedianStopping() if cfg.get("TrainingJobEarlyStoppingType") == "Auto" else None,
        seed=int(cfg.get("RandomSeed", 0)),
        base_spec=spec.to_dict(),
        created=_timestamp(desc.get("CreationTime")) or 0.0,
        backend_state={"tuning_job_name": name},
    )

"""SageMaker backend: a job's :class:`~dogclf.training.Distribution` as the PyTorch estimator's ``torch_distributed``.

SageMaker runs ``torchrun`` on every instance of a job with ``distribution={"torch_distributed": {"enabled":
True}}`` (the SDK sends the hyperparameter ``sagemaker_torch_distributed_enabled``); the container's toolkit starts
one process per GPU (``--nproc_per_node``), or ``sagemaker_mpi_num_of_processes_per_host`` of them when that
hyperparameter is set (what an explicit ``processes_per_host`` sends). What the SageMaker Python SDK 2.257 accepts
for it (``sagemaker.fw_utils.validate_torch_distributed_distribution``):

* GPU instances (``ml.p*``, ``ml.g*``) and Trainium (``ml.trn*``, not used here: the entry point trains on CUDA
  or the CPU); not CPU instances;
* a full framework version from its list (``2.5.1``, not the alias ``2.5``: the same container image), Python 3.

:func:`check_distribution` checks a spec against that and the instance type's GPUs before anything is sent,
:func:`estimator_kwargs` gives the estimator's arguments, :func:`distribution_from_hyperparameters` reads a job's
choice back (a tuning job started elsewhere).
"""

from __future__ import annotations

import json
from typing import Any

from dogclf.errors import ConfigError
from dogclf.training.distributed import Distribution, check_global_batch

__all__ = ["GPUS_PER_INSTANCE", "check_distribution", "check_tuned_batch_size", "estimator_kwargs",
           "distribution_from_hyperparameters", "torch_distributed_version"]

GPUS_PER_INSTANCE: dict[str, int] = {
    **{f"ml.p3.{s}": n for s, n in (("2xlarge", 1), ("8xlarge", 4), ("16xlarge", 8))},
    "ml.p3dn.24xlarge": 8, "ml.p4d.24xlarge": 8, "ml.p4de.24xlarge": 8,
    "ml.p5.48xlarge": 8, "ml.p5e.48xlarge": 8, "ml.p5en.48xlarge": 8,
    **{f"ml.g4dn.{s}": 1 for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge")}, "ml.g4dn.12xlarge": 4,
    **{f"ml.{family}.{s}": 1 for family in ("g5", "g6", "g6e") for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge",
                                                                         "16xlarge")},
    **{f"ml.{family}.{s}": n for family in ("g5", "g6", "g6e") for s, n in (("12xlarge", 4), ("24xlarge", 4),
                                                                           ("48xlarge", 8))},
}
"""NVIDIA GPUs of the SageMaker training instance types a PyTorch 2.5 job can use (several on the multi-GPU ones:
``ml.g5.12xlarge`` has 4 A10G, ``ml.p4d.24xlarge`` 8 A100)."""

_PROCESSES_PER_HOST = "sagemaker_mpi_num_of_processes_per_host"


def _is_gpu_instance(instance_type: str) -> bool:
    family = instance_type.split(".")[1] if instance_type.startswith("ml.") else instance_type
    return family.startswith(("p", "g")) or instance_type == "local_gpu"


def check_distribution(spec: Any) -> tuple[int, int] | None:
    """``(processes per instance, world size)`` of a spec's distribution on SageMaker, checked before anything is
    sent; ``None`` for a job of one process.

    Raises:
        ConfigError: a distribution on a CPU instance type (SageMaker's torch_distributed runs on GPU instances),
            more processes per instance than its GPUs, an instance type whose GPUs are unknown with
            ``processes_per_host=None``, or a global batch the world size does not divide.
    """
    distribution = spec.distribution
    if distribution is None:
        return None
    instance = spec.instance_type
    if not _is_gpu_instance(instance):
        raise ConfigError(f"distribution on instance_type {instance!r}: SageMaker's torch_distributed launcher runs "
                          "on GPU instances (ml.g5.12xlarge, ml.p4d.24xlarge, ...); the CPU instances have no "
                          "launcher for it (locally, LocalBackend(processes=N) runs it on the CPU)")
    gpus = GPUS_PER_INSTANCE.get(instance)
    per_host = distribution.processes_per_host or gpus
    if per_host is None:
        raise ConfigError(f"instance_type {instance!r} has an unknown number of GPUs: set "
                          "Distribution(processes_per_host=N), one process per GPU")
    if gpus is not None and per_host > gpus:
        raise ConfigError(f"processes_per_host {per_host} on instance_type {instance!r}, which has {gpus} GPU(s): "
                          "each process trains on a GPU of its own")
    world = spec.instance_count * per_host
    check_global_batch(spec.training.batch_size, world, f" ({spec.instance_count} x {instance}, {per_host} "
                                                        "process(es) each)")
    return per_host, world


def check_tuned_batch_size(spec: Any, space: Any) -> None:
    """A tuning job of a distributed spec: every ``batch_size`` the space can give must split over the processes.

    Raises:
        ConfigError: a categorical value the world size does not divide, or a numeric range for ``batch_size``.
    """
    placement = check_distribution(spec)
    if placement is None or "batch_size" not in space:
        return
    world = placement[1]
    values = getattr(space["batch_size"], "values", None)
    if values is None:
        raise ConfigError(f"batch_size of a job of {world} processes is tuned over a range: use "
                          f"Categorical([...]) of multiples of {world}")
    for value in values:
        check_global_batch(int(value), world, " (a tuned batch_size)")


def torch_distributed_version(framework_version: str) -> str:
    """The full framework version SDK 2.257 accepts for torch_distributed (``"2.5"`` -> ``"2.5.1"``, the same
    container image), from the SDK's own alias table."""
    from sagemaker import image_uris

    aliases = image_uris.config_for_framework("pytorch")["training"].get("version_aliases", {})
    return aliases.get(framework_version, framework_version)


def estimator_kwargs(spec: Any, framework_version: str) -> dict[str, Any]:
    """The ``PyTorch`` estimator's arguments for the spec's distribution (``{}`` without one):
    ``distribution={"torch_distributed": {"enabled": True}}``, the full framework version, and
    ``sagemaker_mpi_num_of_processes_per_host`` among the hyperparameters when ``processes_per_host`` is set."""
    if check_distribution(spec) is None:
        return {}
    kwargs: dict[str, Any] = {"distribution": {"torch_distributed": {"enabled": True}},
                              "framework_version": torch_distributed_version(framework_version)}
    if spec.distribution.processes_per_host is not None:
        kwargs["hyperparameters"] = {_PROCESSES_PER_HOST: str(spec.distribution.processes_per_host)}
    return kwargs


def distribution_from_hyperparameters(hyperparameters: dict[str, Any]) -> Distribution | None:
    """A job's :class:`~dogclf.training.Distribution` from the hyperparameters SageMaker stores for it (values as
    the SDK JSON-encodes them), ``None`` when torch_distributed is off."""
    def value(key: str) -> Any:
        text = hyperparameters.get(key)
        try:
            return json.loads(text) if isinstance(text, str) else text
        except ValueError:
            return text

    enabled = value("sagemaker_torch_distributed_enabled")
    if not (enabled is True or str(enabled).lower() == "true"):
        return None
    per_host = value(_PROCESSES_PER_HOST)
    return Distribution(processes_per_host=int(per_host) if per_host not in (None, "") else None)

"""Local backend: data-parallel jobs, started as SageMaker's PyTorch container starts them.

A local job's process (:mod:`.training`) reads the job through the sagemaker-training toolkit's ``Environment``
and, like the container's training module, picks the toolkit's runner (:func:`toolkit_runner`): the entry point
as one process, or, when the job's hyperparameters enable ``torch_distributed``
(``sagemaker_torch_distributed_enabled``, what SageMaker's ``distribution={"torch_distributed": {"enabled":
True}}`` sends), the toolkit's ``TorchDistributedRunner``, which runs ``torchrun --nnodes 1 --nproc_per_node N
dogclf/training/train.py --lr ...`` (N from ``sagemaker_mpi_num_of_processes_per_host``).
:func:`job_processes` checks a spec against this machine, :func:`distributed_layout` lays out the job folder.

The job folder's ``bin/torchrun``, first on the job's ``PATH``, is this module's ``--torchrun`` mode: PyTorch's
own launcher (:mod:`torch.distributed.run`, run in-process with the interpreter of the job) with what a job on a
shared machine needs on top:

* a ``--standalone`` rendezvous on one host: a free port, so that several local jobs run at once (SageMaker's
  one-node command relies on the fixed default port 29500, alone on its instance);
* when a worker fails, torchrun stops the others (none is orphaned) and this writes the reason to
  ``output/failure`` (SageMaker's ``FailureReason``): which rank died and how (``kill -9`` leaves no message of
  its own), ahead of what the other ranks then reported.

torchrun starts each worker in a session of its own, out of reach of the job's process group; each worker dies
with torchrun (:func:`dogclf.training.distributed.start`), which is in the job's group.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from dogclf._io import atomic_write
from dogclf.errors import ConfigError
from dogclf.training.distributed import check_global_batch

__all__ = ["job_processes", "resource_config", "distributed_layout", "toolkit_runner", "torchrun", "failure_reason"]

HOST = "algo-1"
"""The host name SageMaker gives the first (here: only) instance of a job."""


def job_processes(processes: int | None, spec: Any) -> int | None:
    """The training processes of a local job, checked before anything runs; ``None`` for a job of one plain
    process (no ``spec.distribution`` and no backend ``processes``).

    Args:
        processes: The backend's ``processes`` (used where ``spec.distribution.processes_per_host`` is ``None``).
        spec: The :class:`~dogclf.training.TrainingJobSpec`.

    Raises:
        ConfigError: several instances, a global batch the processes do not divide, ``batchnorm="sync"`` or
            ``device="cuda"`` without a GPU for each process.
    """
    if spec.instance_count != 1:
        raise ConfigError(f"the local backend runs one instance; spec.instance_count is {spec.instance_count} (for "
                          "several processes on this machine use Distribution(processes_per_host=N) or "
                          "LocalBackend(processes=N))")
    distribution = spec.distribution
    if distribution is None and processes is None:
        return None
    n = (distribution.processes_per_host if distribution is not None else None) or processes or 1
    check_global_batch(spec.training.batch_size, n, f" ({n} local processes)")
    training = spec.training
    if n > 1 and (training.batchnorm == "sync" or training.device == "cuda"):
        gpus = 0
        if training.device != "cpu":
            import torch

            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus < n:
            what = f"batchnorm {training.batchnorm!r}" if training.batchnorm == "sync" else "device 'cuda'"
            raise ConfigError(f"{what} with {n} local processes needs a GPU for each ({gpus} available, device "
                              f"{training.device!r}): use batchnorm='frozen' or 'local' on the CPU")
    return n


def resource_config(instance_type: str = "local") -> dict[str, Any]:
    """``resourceconfig.json`` of a one-instance job, as SageMaker writes it (hosts ``algo-1``...)."""
    return {"current_host": HOST, "current_instance_type": instance_type, "current_group_name": "homogeneousCluster",
            "hosts": [HOST], "instance_groups": [{"instance_group_name": "homogeneousCluster",
                                                  "instance_type": instance_type, "hosts": [HOST]}],
            "network_interface_name": "lo"}


def distributed_layout(base: Path, processes: int, hyperparameters: dict[str, str], env: dict[str, str]) -> None:
    """Make a job folder run ``processes`` processes: the hyperparameters SageMaker's PyTorch estimator sends for
    ``torch_distributed`` (plus the processes per host), ``bin/torchrun`` first on ``PATH``, and CPU threads
    shared between the processes unless the caller chose (``OMP_NUM_THREADS``)."""
    hyperparameters.update({"sagemaker_torch_distributed_enabled": "true",
                            "sagemaker_instance_type": json.dumps("local"),
                            "sagemaker_mpi_num_of_processes_per_host": json.dumps(processes)})
    script = base / "bin" / "torchrun"
    atomic_write(script, f'#!/bin/sh\nexec "{sys.executable}" -u -m dogclf.backends.local.launch --torchrun "$@"\n')
    script.chmod(0o755)
    env["PATH"] = f"{script.parent}{os.pathsep}{env.get('PATH', '')}"
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    env.setdefault("OMP_NUM_THREADS", str(max(1, cpus // processes)))


def toolkit_runner(env: Any) -> Any:
    """The sagemaker-training runner the PyTorch container picks for a job's ``Environment``: torchrun when the
    job enables ``torch_distributed`` (for this instance's group), else one process."""
    from sagemaker_training import runner

    if env.additional_framework_parameters.get("sagemaker_torch_distributed_enabled") and \
            env.current_instance_group in env.distribution_instance_groups:
        return runner.TorchDistributedRunnerType
    return runner.ProcessRunnerType


def failure_reason(failures: dict[int, Any], world: int, written: str | None) -> str | None:
    """Why a job of ``world`` processes failed, from torchrun's failures (rank -> ``ProcessFailure``) and the
    reason a rank wrote (``written``); ``None`` when that reason says it all (no rank was killed)."""
    killed = [(rank, f) for rank, f in sorted(failures.items()) if f.exitcode < 0]
    # SIGTERM is how torchrun stops the others once one failed: another signal is the cause where there is one.
    killed = [(rank, f) for rank, f in killed if f.signal_name() != "SIGTERM"] or killed
    if not killed:
        if written:
            return None
        return "; ".join(f"rank {rank} of {world} (pid {f.pid}) exited with status {f.exitcode}"
                         for rank, f in sorted(failures.items())) or "torchrun failed"
    reason = "; ".join(f"rank {rank} of {world} (pid {f.pid}) was killed by {f.signal_name()}" for rank, f in killed)
    reason += "; torchrun stopped the job's other processes"
    return f"{reason} (then {written})" if written else reason


def torchrun(argv: list[str]) -> int:
    """``torchrun ARGS`` for a local job (see the module docs); returns the exit status."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = list(argv)
    if not {"--standalone", "--master_addr", "--master-addr"} & set(args):
        args.insert(0, "--standalone")
    config = parse_args(args)
    try:
        run(config)
    except ChildFailedError as exc:
        print(exc, file=sys.stderr, flush=True)
        try:
            world = int(config.nproc_per_node) * int(str(config.nnodes).split(":")[-1])
        except ValueError:
            world = len(exc.failures)
        path = Path(os.environ.get("SM_OUTPUT_DIR") or Path(os.environ.get("SAGEMAKER_BASE_DIR", ".")) / "output")
        path = path / "failure"
        written = path.read_text(encoding="utf-8").strip() if path.is_file() else None
        reason = failure_reason(exc.failures, world, written)
        if reason is not None:
            atomic_write(path, reason[:1024])
        return 1
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["--torchrun"]:
        print("usage: python -m dogclf.backends.local.launch --torchrun TORCHRUN_ARGS", file=sys.stderr)
        sys.exit(64)
    sys.exit(torchrun(sys.argv[2:]))

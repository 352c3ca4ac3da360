"""Data-parallel training: one job spread over processes with PyTorch's DistributedDataParallel, started by torchrun.

A job asks for it with :class:`Distribution` (``TrainingJobSpec(..., distribution=Distribution())``). The backend
launches the entry point once per process with ``torchrun`` (on SageMaker through
``distribution={"torch_distributed": {"enabled": True}}``, locally through the same toolkit runner), which sets
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. The entry
point calls :func:`start`, which reads them, checks the job fits (the global batch divides evenly), picks the
device (``cuda:LOCAL_RANK`` with NCCL, or the CPU with gloo) and joins the process group; the returned
:class:`Ranks` is all the training code needs to know about the others. Alone (no ``WORLD_SIZE``, or 1) it is a
process of its own and every operation is the identity, so a one-process job runs exactly as before.

Why N processes give the result of one process with the same global batch size and seed:

* **One global order.** Every rank draws the epoch's permutation from the same seeded generator; global batch
  ``k`` is ``order[k*B:(k+1)*B]`` as in one process, and :meth:`Ranks.share` gives each rank a contiguous part of
  it (``B/N`` images; the last, short batch split as evenly as it goes). Random augmentation is drawn for the
  whole global batch and each rank keeps its part, so every image gets the flip it would get alone.
* **One gradient.** Each rank's mean loss is scaled by ``count * N / B`` before ``backward``; DDP averages the
  gradients over the N ranks, which makes the sum of per-image losses divided by the global batch size: the
  gradient of one process. A rank with no image in a short last batch runs its share on one image with weight 0,
  so every rank takes part in every all-reduce.
* **BatchNorm.** Layers that train normalise with batch statistics, which a rank only knows for its part:
  ``batchnorm="sync"`` (``auto`` with several CUDA processes) uses ``torch.nn.SyncBatchNorm`` (statistics of the
  global batch; CUDA only), ``"frozen"`` keeps every BatchNorm layer in eval mode (running statistics, never updated; the same on
  any number of processes, on the CPU too; ``auto`` with pretrained weights when the batch BatchNorm sees is under
  32), ``"local"`` (``auto`` on the CPU otherwise) lets each rank use its own part's.
* **Metrics** are sums (loss times images, correct predictions, images) reduced over the ranks, train and
  validation/test alike (each rank evaluates a contiguous part of the split).
* **Writing.** Only rank 0 publishes metrics, writes checkpoints, the artifact, the feature cache and runs the
  callbacks (Debugger tensors and profiling are rank 0's: smdebug's ``worker_0``, its default
  ``include_workers="one"``). A checkpoint carries every rank's random state, so a resumed job continues as if
  uninterrupted.

Differences that remain are float rounding (summation order in the all-reduce), dropout (each rank draws its own
masks) and ``batchnorm="local"``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from dogclf.errors import ConfigError

__all__ = ["Distribution", "Ranks", "Share", "check_global_batch", "check_job_distribution",
           "start", "stop"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distribution:
    """How a training job is spread over processes: PyTorch DistributedDataParallel, launched by torchrun.

    The job's world size is ``instance_count * processes_per_host``; ``batch_size`` stays the global batch size
    (each process takes ``batch_size / world size`` images of every batch), so it must divide evenly.

    Attributes:
        processes_per_host: Training processes on each instance (each with a GPU of its own on CUDA). ``None``
            lets the host decide: one per GPU of the instance type on SageMaker; the local backend's
            ``processes`` (default 1) locally.

    Raises:
        ConfigError: ``processes_per_host`` is not an int >= 1 or ``None``.

    Example:
        >>> Distribution(processes_per_host=2).world_size(instance_count=2)
        4
        >>> Distribution().world_size(instance_count=2) is None   # decided by the instance type
        True
    """

    processes_per_host: int | None = None

    def __post_init__(self) -> None:
        value = self.processes_per_host
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"processes_per_host must be an int >= 1 (or None: one per GPU of the instance), "
                              f"got {value!r}")

    def world_size(self, instance_count: int = 1, per_host: int | None = None) -> int | None:
        """Processes in all: ``instance_count`` times ``processes_per_host`` (or ``per_host``, what the host
        offers, when that is ``None``); ``None`` when neither is known."""
        n = self.processes_per_host or per_host
        return instance_count * n if n else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (:meth:`coerce` reads it back)."""
        return {"processes_per_host": self.processes_per_host}

    @classmethod
    def coerce(cls, value: Any) -> Distribution | None:
        """A :class:`Distribution` from itself, a dict of its fields, or ``None`` (a job of one process).

        Raises:
            ConfigError: anything else, or an unknown field.
        """
        if value is None or isinstance(value, Distribution):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"processes_per_host"})
            if unknown:
                raise ConfigError(f"unknown distribution field(s) {unknown}; known: 'processes_per_host'")
            return cls(**value)
        raise ConfigError(f"distribution must be a dogclf.training.Distribution, a dict of its fields or None, got "
                          f"{type(value).__name__}: {value!r:.80}")


def check_global_batch(batch_size: int, world_size: int, where: str = "") -> None:
    """Raise :class:`ConfigError` unless the global ``batch_size`` splits evenly over ``world_size`` processes."""
    if world_size > 1 and batch_size % world_size:
        raise ConfigError(f"batch_size (--batch-size) {batch_size} is not divisible by the world size {world_size}"
                          f"{where}: every process takes an equal part of each global batch; use a multiple of "
                          f"{world_size}")


def check_job_distribution(distribution: Distribution | None, instance_count: int, training: Any) -> None:
    """The checks of a job's distribution that need no backend (the backends check what the host adds).

    Raises:
        ConfigError: several instances without a distribution (each would train the whole model on the whole
            data), a global batch the known world size does not divide, or ``batchnorm="sync"`` with
            ``device="cpu"`` and several processes (``torch.nn.SyncBatchNorm`` runs on GPUs only).
    """
    if distribution is None:
        if instance_count > 1:
            raise ConfigError(f"instance_count {instance_count} needs distribution=Distribution(...): without it "
                              "every instance would train the whole model on the whole data")
        return
    world = distribution.world_size(instance_count)
    if world is None:
        return
    check_global_batch(training.batch_size, world, f" ({instance_count} instance(s) x "
                                                   f"{distribution.processes_per_host} process(es))")
    if world > 1 and training.batchnorm == "sync" and training.device == "cpu":
        raise ConfigError("batchnorm 'sync' with device 'cpu' cannot run: torch.nn.SyncBatchNorm needs GPUs; use "
                          "batchnorm='frozen' (the same result on any number of processes) or 'local'")


@dataclass(frozen=True)
class Share:
    """A rank's part of one global batch: ``positions`` in it, how many of them are real images (``count``; 0 when
    the rank only keeps step with one image of weight 0) and the factor on the rank's mean loss that makes DDP's
    averaged gradient the global batch's."""

    positions: slice
    count: int
    scale: float

    def scale_loss(self, loss: Any) -> Any:
        """``loss`` times :attr:`scale` (unchanged in a job of one process)."""
        return loss if self.scale == 1.0 else loss * self.scale


class _Silent:
    """The metrics publisher of ranks other than 0: events are computed everywhere, published once."""

    def publish(self, metrics: dict[str, float], epoch: int | None = None) -> dict[str, Any]:
        return {**({"epoch": int(epoch)} if epoch is not None else {}), **{k: float(v) for k, v in metrics.items()}}

    def finish(self, document: dict[str, Any]) -> None:
        return None


class Ranks:
    """This process's place in a job and the collective operations training needs (identities when alone).

    Made by :func:`start`; ``Ranks()`` is a job of one process on the CPU.

    Attributes:
        rank, world_size: This process's global rank and the number of processes.
        local_rank, local_world_size: The same on this host.
        device: The torch device this process trains on.
        batchnorm: The BatchNorm policy in effect: ``"sync"``, ``"local"`` or ``"frozen"``.
        backend: The process-group backend (``"gloo"``, ``"nccl"``), ``None`` when alone.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, local_world_size: int = 1,
                 device: Any = "cpu", batchnorm: str = "local", backend: str | None = None) -> None:
        import torch

        self.rank, self.world_size = rank, world_size
        self.local_rank, self.local_world_size = local_rank, local_world_size
        self.device = torch.device(device)
        self.batchnorm, self.backend = batchnorm, backend

    def __repr__(self) -> str:
        return (f"Ranks(rank={self.rank}, world_size={self.world_size}, device={str(self.device)!r}, "
                f"backend={self.backend!r}, batchnorm={self.batchnorm!r})")

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes."""
        return self.rank == 0

    # -- data ------------------------------------------------------------------------------------------------------
    def span(self, n: int) -> tuple[int, int]:
        """``(start, stop)`` of this rank's contiguous part of ``n`` items (parts differ by at most one)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def share(self, n: int) -> Share:
        """This rank's part of a global batch of ``n`` images (see the module docs)."""
        start, stop = self.span(n)
        if stop == start:
            return Share(slice(0, 1), 0, 0.0)
        count = stop - start
        return Share(slice(start, stop), count, 1.0 if self.world_size == 1 else count * self.world_size / n)

    def workers(self, per_machine: int) -> int:
        """DataLoader workers for this process when ``per_machine`` suits one process on the whole machine."""
        return per_machine // self.local_world_size

    # -- modules ---------------------------------------------------------------------------------------------------
    def prepare(self, module: Any) -> Any:
        """Convert ``module``'s BatchNorm layers to ``SyncBatchNorm`` when the policy is ``"sync"`` (several
        processes); returns the module. Says so when BatchNorm layers that train see only this rank's images."""
        if self.world_size == 1:
            return module
        import torch
        from torch.nn.modules.batchnorm import _BatchNorm

        training = any(p.requires_grad for m in module.modules() if isinstance(m, _BatchNorm) for p in m.parameters())
        if self.batchnorm == "sync":
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        elif self.batchnorm == "local" and training and self.is_main:
            logger.warning("batchnorm 'local' with %d processes: BatchNorm layers that train normalise with the "
                           "statistics of each process's part of the batch, so results differ from one process "
                           "(SyncBatchNorm needs GPUs; batchnorm='frozen' gives the same result on any number of "
                           "processes)", self.world_size)
        return module

    def wrap(self, module: Any) -> Any:
        """``module`` in ``DistributedDataParallel`` (the module itself when alone): what the train steps call."""
        if self.world_size == 1:
            return module
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        # Buffers (BatchNorm running statistics) go from rank 0 to the others before each forward only where
        # ranks update them differently ("local"); torch 2.14 renamed the option.
        sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters \
            else "broadcast_buffers"
        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                       **{sync: self.batchnorm == "local"})

    # -- collectives -----------------------------------------------------------------------------------------------
    def sum(self, *values: float) -> tuple[float, ...]:
        """Each value summed over the ranks (float64)."""
        if self.world_size == 1:
            return tuple(float(v) for v in values)
        import torch
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return tuple(t.cpu().tolist())

    def all(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank."""
        return self.sum(0.0 if flag else 1.0)[0] == 0.0

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on some rank (a callback on rank 0 stopping training stops every rank)."""
        return self.sum(1.0 if flag else 0.0)[0] > 0.0

    def gather_rows(self, rows: Any, n: int) -> Any:
        """Every rank's ``rows`` (its :meth:`span` of ``n``) stacked in rank order: the ``n`` rows of all ranks."""
        if self.world_size == 1:
            return rows
        import torch
        import torch.distributed as dist

        spans = [Ranks(r, self.world_size).span(n) for r in range(self.world_size)]
        longest = max(stop - start for start, stop in spans)
        padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=self.device)
        padded[:len(rows)] = rows.to(self.device)
        parts = [torch.empty_like(padded) for _ in spans]
        dist.all_gather(parts, padded)
        return torch.cat([p[:stop - start] for p, (start, stop) in zip(parts, spans)]).cpu()

    def gather_objects(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (picklable objects; small ones: random states)."""
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def on_main(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on rank 0 only (``None`` elsewhere): the one writer of a job's files."""
        return fn(*args, **kwargs) if self.is_main else None

    def publisher(self, make: Callable[[], Any]) -> Any:
        """The metrics publisher ``make()`` builds, on rank 0; one that publishes nothing elsewhere."""
        return make() if self.is_main else _Silent()

    def rng_for_rank(self, checkpoint: Mapping[str, Any]) -> Any:
        """This rank's random state in a checkpoint (rank 0's when it was written by fewer processes)."""
        states = checkpoint.get("rank_rng") or [checkpoint["rng"]]
        if len(states) != self.world_size:
            logger.warning("checkpoint written by %d process(es), resumed by %d: ranks without a saved random "
                           "state continue from rank 0's", len(states), self.world_size)
        return states[self.rank] if self.rank < len(states) else states[0]

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()


def _int_env(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text in (None, ""):
        return default
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"environment variable {name}={text!r} is not an integer (torchrun sets it)") from None
    return value


def _device(training: Any, local_rank: int, local_world: int, world: int) -> Any:
    import torch

    want = training.device
    gpus = torch.cuda.device_count() if want in ("auto", "cuda") and torch.cuda.is_available() else 0
    if world == 1:
        if want == "cuda" and not gpus:
            raise ConfigError("device 'cuda' was requested but CUDA is not available")
        return torch.device("cuda" if gpus else "cpu")
    if gpus >= local_world:
        return torch.device("cuda", local_rank)
    if want == "cuda":
        raise ConfigError(f"device 'cuda' was requested for {local_world} processes on this host, but "
                          f"{gpus} GPU(s) are available: each process needs one")
    return torch.device("cpu")


class _RankLog(logging.Filter):
    """Prefixes records with the rank; ranks other than 0 keep warnings, errors, this module's own lines and
    records logged with ``extra={"all_ranks": True}`` (what each rank did itself, e.g. its backbone passes)."""

    def __init__(self, rank: int, world: int) -> None:
        super().__init__()
        self.prefix, self.rank = f"[rank {rank}/{world}] ", rank

    def filter(self, record: logging.LogRecord) -> bool:
        if self.rank and record.levelno < logging.WARNING and record.name != __name__ \
                and not getattr(record, "all_ranks", False):
            return False
        if not getattr(record, "dogclf_rank", False):
            record.msg, record.dogclf_rank = self.prefix + str(record.msg), True
        return True


def _die_with_torchrun() -> None:
    """torchrun starts each worker in a session of its own: should torchrun itself be killed (SIGKILL, the OOM
    killer, a local job's caller gone), its workers would live on. Each kills itself and its session (its
    DataLoader workers) once its parent, torchrun, is gone (:func:`dogclf._process.die_with_parent`)."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        from dogclf._process import die_with_parent

        die_with_parent(os.getppid())


def start(training: Any, *, pretrained: bool = False) -> Ranks:
    """Join the job's processes as torchrun describes them (``RANK``, ``WORLD_SIZE``, ...); alone without them.

    Checks first, before any work: the global batch divides by the world size, the device and the BatchNorm
    policy can run. Then it picks the device (``cuda:LOCAL_RANK`` when the host has a GPU per process, else the
    CPU), joins the process group (NCCL on CUDA, gloo on the CPU) and prefixes log lines with the rank.
    ``pretrained`` (whether the model starts from pretrained weights) decides ``batchnorm="auto"``
    (:func:`~dogclf.training.optim.resolve_batchnorm`).

    Raises:
        ConfigError: a batch size the world size does not divide, ``device="cuda"`` without a GPU per process,
            ``batchnorm="sync"`` on the CPU with several processes.
    """
    world = _int_env("WORLD_SIZE", 1)
    rank, local_rank = _int_env("RANK", 0), _int_env("LOCAL_RANK", 0)
    local_world = _int_env("LOCAL_WORLD_SIZE", world)
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < local_world:
        raise ConfigError(f"torchrun's environment is inconsistent: RANK={rank}, WORLD_SIZE={world}, "
                          f"LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_world}")
    check_global_batch(training.batch_size, world)
    device = _device(training, local_rank, local_world, world)
    from dogclf.training.optim import resolve_batchnorm

    batchnorm = resolve_batchnorm(training.batchnorm, pretrained=pretrained, batch_size=training.batch_size,
                                  world_size=world, cuda=device.type == "cuda")
    if world == 1:
        return Ranks(device=device, batchnorm=batchnorm)

    import torch
    import torch.distributed as dist

    _die_with_torchrun()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(minutes=30))
    for handler in logging.getLogger().handlers:
        handler.addFilter(_RankLog(rank, world))
    ranks = Ranks(rank, world, local_rank, local_world, device, batchnorm, backend)
    logger.info("rank %d of %d (local %d of %d), pid %d, %s on %s, batchnorm %s, %s", rank, world, local_rank,
                local_world, os.getpid(), backend, device, batchnorm,
                f"{training.batch_size // world} of every {training.batch_size} images")
    return ranks


def stop() -> None:
    """Leave the process group, if this process joined one (the entry point's last step, also on failure)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch without distributed support
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

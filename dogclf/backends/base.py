"""The :class:`Backend` protocol and the job descriptions every backend shares.

A backend is where work runs: ``local`` runs training jobs as processes on this machine and serves endpoints
from a local HTTP server; ``sagemaker`` runs the same entry point and inference handler on AWS SageMaker. Only
the SageMaker backend knows AWS request shapes; user code talks to the protocol.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from dogclf._extras import require

if TYPE_CHECKING:
    from dogclf.training import TrainingJobSpec

__all__ = ["Backend", "PackageBackend"]


@runtime_checkable
class Backend(Protocol):
    """What dogclf needs from a place that runs jobs.

    A third-party backend is any object with these members, registered in the ``dogclf.backends`` entry-point
    group (see :func:`dogclf.backends.get_backend`). The built-ins are :class:`~dogclf.backends.local.LocalBackend`
    and :class:`~dogclf.backends.sagemaker.SageMakerBackend`.

    Optional members, used where present:

    * ``attach(job_name)``: an earlier job's result, read back by name;
    * ``tune(spec, state=..., launch=..., wait=...)``: a tuning service of its own (SageMaker's); without it
      :class:`~dogclf.hpo.HPOExperiment` runs the trials as jobs;
    * ``trial_pool(spec, space, size)``: reused workers for an experiment's trial jobs, or ``None``;
    * ``fetch_output(result, dest=None)``: a finished job's output data folder (metrics, tensors, profiling) as a
      local folder (without it, the result's ``output_dir`` must be one);
    * ``debugger_tensors(result)``: where the platform's own Debugger hook wrote a job's tensors;
    * ``attach_endpoint(name, labels=None)``: a handle on an endpoint that already runs;
    * ``delivers_debugger_config``: ``True`` when the spec's ``debugger_hook_config`` / ``profiler_config``
      reach the job as ``debughookconfig.json`` / ``profilerconfig.json``; otherwise
      :class:`~dogclf.debug.DebugTrainer` packs them into a hyperparameter;
    * ``resumes_jobs``: ``True`` when a job started again under the name of one that did not complete continues
      from that job's checkpoints (the local backend); the trial runner then restarts an interrupted trial under
      its own name, and otherwise as ``<name>-r<attempt>``.

    Attributes:
        name: The name the backend is registered under (``"local"``, ``"sagemaker"``).
    """

    name: str

    def train(self, spec: TrainingJobSpec, **kwargs: Any) -> Any:
        """Run one training job of the shared training entry point; return its
        :class:`~dogclf.training.TrainingJobResult` (or, with ``wait=False``, a handle with ``status``,
        ``metric_history``, ``wait()`` and ``stop()``). A spec with a ``distribution`` runs the entry point once
        per process under ``torchrun``; a backend that cannot raises :class:`~dogclf.errors.ConfigError` before
        anything runs."""
        ...

    def deploy(self, artifact: Any, **kwargs: Any) -> Any:
        """Serve a model artifact through the shared inference handler and return an endpoint handle."""
        ...



class PackageBackend:
    """Base for a backend laid out as a package with one module per capability, imported on first use.

    The package named by :attr:`capability_package` holds ``training`` (functions ``train(backend, spec, **kw)``
    and ``attach(backend, job_name)``) and ``serving`` (``deploy(backend, artifact, **kw)``). The built-in
    ``local`` and ``sagemaker`` backends are built this way; a plug-in may be too, or implement :class:`Backend`
    directly.
    """

    capability_package: ClassVar[str]
    """Dotted name of the package holding the capability modules (the backend's own package)."""
    extras: ClassVar[Mapping[str, tuple[tuple[str, str], ...]]] = {}
    """Optional modules each capability needs, as ``{"train": (("local", "sagemaker_training"),), ...}`` (keys: the
    capability functions' names, ``train``, ``attach``, ``deploy``, ``tune``, ...); checked with
    :func:`dogclf._extras.require` before it runs."""

    def _capability(self, module: str, function: str) -> Any:
        for extra, name in self.extras.get(function, ()):
            require(extra, name, f"{getattr(self, 'name', type(self).__name__)} backend's {function}")
        return getattr(importlib.import_module(f"{self.capability_package}.{module}"), function)

    def train(self, spec: Any, **kwargs: Any) -> Any:
        """Run one training job of the shared entry point (``<package>.training.train``)."""
        return self._capability("training", "train")(self, spec, **kwargs)

    def attach(self, job_name: str) -> Any:
        """The result of an earlier training job, read back by name (``<package>.training.attach``)."""
        return self._capability("training", "attach")(self, job_name)

    def deploy(self, artifact: Any, **kwargs: Any) -> Any:
        """Serve a model artifact through the shared inference handler (``<package>.serving.deploy``)."""
        return self._capability("serving", "deploy")(self, artifact, **kwargs)

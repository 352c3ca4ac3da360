"""The exceptions dogclf raises.

Every error dogclf raises on purpose derives from :class:`DogclfError`, so one ``except DogclfError`` catches them
all. Each subclass also derives from the built-in exception a Python user would expect for that kind of problem
(:class:`ValueError` for bad values, :class:`KeyError` for unknown names, :class:`FileNotFoundError` for missing
paths, ...), so code written against the built-ins keeps working.

Messages name the offending value and what was expected instead, e.g.::

    >>> from dogclf.labels import get_labels
    >>> get_labels("dogimages-134")
    Traceback (most recent call last):
    ...
    dogclf.errors.UnknownLabelSetError: unknown label set 'dogimages-134'; did you mean 'dogimages-133'?; ...
"""

from __future__ import annotations

__all__ = [
    "InvalidRequestError",
    "EndpointError",
    "DogclfError",
    "ConfigError",
    "NotFoundError",
    "UnknownBreedError",
    "UnknownLabelSetError",
    "UnknownBackendError",
    "DuplicateError",
    "NotFittedError",
    "BackendError",
    "BackendLoadError",
    "PluginLoadError",
    "JobError",
    "DataError",
    "DataNotFoundError",
    "DatasetLayoutError",
    "CorruptImageError",
    "UnsafeArchiveError",
    "ChecksumMismatchError",
    "ArtifactError",
    "UnknownRuleError",
    "OutputExistsError",
    "EmptyTrialError",
    "InvalidURIError",
    "DownloadError",
    "LabelMismatchError",
    "MissingExtraError",
    "UnknownBackboneError",
    "UnknownWeightsError",
    "WeightsUnavailableError",
    "DuplicateImagesError",
    "RuntimeExportError",
    "AgreementError",
]


class DogclfError(Exception):
    """Root of every exception dogclf raises on purpose."""


class ConfigError(DogclfError, ValueError):
    """A configuration value is invalid: out of range, of the wrong type, or not one of the allowed choices."""


class NotFoundError(DogclfError, KeyError):
    """A name was looked up and is not known.

    :class:`KeyError` renders its argument with ``repr``, which wraps a message in quotes; this class renders
    the message as written.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownBreedError(NotFoundError):
    """A breed name or index is not part of the label set it was looked up in."""


class UnknownLabelSetError(NotFoundError):
    """No label set is registered under the requested name."""


class UnknownBackendError(NotFoundError):
    """No backend is registered under the requested name in the ``dogclf.backends`` entry-point group."""


class DuplicateError(DogclfError, ValueError):
    """Something that must be unique (a breed in a label set, a registered name) was given twice."""


class NotFittedError(DogclfError, ValueError, AttributeError):
    """A result attribute (one ending in ``_``) was read before ``fit``/``run``/``deploy`` produced it."""


class BackendError(DogclfError, RuntimeError):
    """A backend could not do what was asked of it."""


class PluginLoadError(DogclfError, ImportError):
    """A plug-in (an entry point of a ``dogclf.*`` group, or a lazily loaded built-in) failed to import or load."""


class MissingExtraError(DogclfError, ImportError):
    """An optional dependency is not installed; the message names the ``pip install "dogclf[extra]"`` that brings it.

    Args:
        message: What needs the module and how to install it.
        extra: The extra that brings the module (``"debug"``, ``"sagemaker"``, ...).
        module: The module that failed to import (also :attr:`ImportError.name`).
    """

    def __init__(self, message: str, *, extra: str, module: str) -> None:
        super().__init__(message, name=module)
        self.extra = extra
        self.module = module


class BackendLoadError(BackendError, PluginLoadError):
    """A backend is registered but its entry point failed to import or does not implement :class:`Backend`."""


class JobError(BackendError):
    """A training, tuning or deployment job ended badly.

    Args:
        message: What went wrong, in words.
        job_id: The job's name or id on its backend.
        status: The job's final status as the backend reports it (``"Failed"``, ``"Stopped"``, ...).
        reason: The failure reason the backend gave, if any.
    """

    def __init__(self, message: str, *, job_id: str | None = None, status: str | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        parts = [str(self.args[0])]
        details = [f"{k}={v!r}" for k, v in (("job_id", self.job_id), ("status", self.status)) if v is not None]
        if details:
            parts.append(f"({', '.join(details)})")
        if self.reason:
            parts.append(f"reason: {self.reason}")
        return " ".join(parts)


class DataError(DogclfError, ValueError):
    """A dataset is not usable as it is."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset path, URL or S3 prefix does not exist."""


class DatasetLayoutError(DataError):
    """A dataset's folders are not laid out as ``train|valid|test/NNN.Breed/*.jpg`` (or its classes disagree)."""


class CorruptImageError(DataError):
    """One or more images cannot be decoded. ``paths`` lists the files (when they are files).

    ``code`` says why, in the words the inference handler answers with: ``"corrupt_image"`` (truncated or
    damaged), ``"unsupported_image"`` (not an image), ``"empty_image"``, ``"image_too_large"`` (over the pixel
    limit) or ``"animated_image"`` (refused where one still frame is expected).
    """

    def __init__(self, message: str, paths: list[str] | tuple[str, ...] = (), *, code: str = "corrupt_image") -> None:
        super().__init__(message)
        self.paths = tuple(paths)
        self.code = code


class UnsafeArchiveError(DataError):
    """An archive holds members that would escape the target folder, links, or more data than allowed."""


class ChecksumMismatchError(DataError):
    """A downloaded or staged file's checksum differs from the expected one."""


class ArtifactError(DogclfError, ValueError):
    """A model artifact (folder, checkpoint or ``model.tar.gz``) is missing parts, corrupt or unsafe."""


class RuntimeExportError(ArtifactError):
    """A model could not be made ready for an inference runtime (``onnx``, ``onnx-int8``): the export or the
    quantization failed, or the artifact lacks what it needs (e.g. calibration images for ``onnx-int8``)."""


class AgreementError(RuntimeExportError):
    """An exported model's predictions differ too much from the eager fp32 model's, so it is refused.

    Args:
        message: The measured agreement against the threshold, and what to do.
        runtime: The runtime refused (``"onnx"`` or ``"onnx-int8"``).
        top1_agreement: Fraction of images whose top-1 breed matches the eager model's.
        threshold: The smallest agreement accepted.
        max_abs_logit_diff: The largest absolute logit difference seen.
        images: How many images were compared.
    """

    def __init__(self, message: str, *, runtime: str, top1_agreement: float, threshold: float,
                 max_abs_logit_diff: float, images: int) -> None:
        super().__init__(message)
        self.runtime = runtime
        self.top1_agreement = top1_agreement
        self.threshold = threshold
        self.max_abs_logit_diff = max_abs_logit_diff
        self.images = images


class UnknownRuleError(NotFoundError):
    """No Debugger rule is registered under the requested name (see :func:`dogclf.debug.list_rules`)."""


class OutputExistsError(DogclfError, FileExistsError):
    """An output folder that must be fresh (e.g. a Debugger tensor folder) already holds files."""


class EmptyTrialError(DataNotFoundError):
    """A Debugger trial path holds no saved tensors (wrong path, or the job saved nothing)."""


class InvalidURIError(ConfigError):
    """A URL or ``s3://`` URI is malformed: an unsupported scheme, or an S3 URI without a bucket."""


class DownloadError(DataError, ConnectionError):
    """A download failed for good (HTTP error status, or the connection kept dropping after all retries)."""


class LabelMismatchError(DatasetLayoutError):
    """A dataset's classes differ from the label set it was expected to have."""


class UnknownBackboneError(NotFoundError, ConfigError):
    """No backbone is registered under the requested name (see :func:`dogclf.models.backbones.list_models`)."""


class UnknownWeightsError(NotFoundError, ConfigError):
    """A backbone has no pretrained weights under the requested name; the message lists its weights."""


class WeightsUnavailableError(ArtifactError, FileNotFoundError):
    """Pretrained weights cannot be had here (no network for a download, the weights package not installed); the
    message says what to install or where to put the file."""


class DuplicateImagesError(DataError):
    """A dataset holds the same photo more than once where that is refused (by default: in two splits).

    ``groups`` lists the duplicate groups, each a list of paths."""

    def __init__(self, message: str, groups: list[list[str]] | None = None) -> None:
        super().__init__(message)
        self.groups = groups or []


class InvalidRequestError(DogclfError, ValueError):
    """An inference request cannot be served as sent: bad body, content type, image, array or ``k``.

    Endpoints answer it with a 4xx status and a JSON body ``{"error": code, "message": message}``.

    Args:
        message: What is wrong with the request, naming the bad value and what was expected.
        code: A short machine-readable name of the problem (``"corrupt_image"``, ``"bad_k"``, ...).
        status_code: The HTTP status an endpoint answers with (400, 406, 413 or 415).
    """

    def __init__(self, message: str, *, code: str = "bad_request", status_code: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status_code = status_code


class EndpointError(BackendError):
    """An endpoint answered a request with an error, or could not be reached or started.

    Args:
        message: What went wrong.
        status_code: The HTTP status the endpoint answered with, if it answered.
        code: The endpoint's machine-readable error name (``"corrupt_image"``, ...), if it gave one.
    """

    def __init__(self, message: str, *, status_code: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code

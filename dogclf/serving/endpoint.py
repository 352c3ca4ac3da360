"""Endpoint handles: what :meth:`EndpointDeployer.deploy <dogclf.serving.EndpointDeployer.deploy>` returns.

Every handle speaks one method, :meth:`Endpoint.invoke` (bytes in, bytes out, the handler's content types), and
is a context manager whose exit deletes the endpoint. :class:`LocalEndpoint` runs the local server
(:mod:`dogclf.serving.server`) in a child process; :class:`InProcessEndpoint` calls the handler functions directly
(no server); the SageMaker handle lives in :mod:`dogclf.backends.sagemaker.serving`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

from dogclf._extras import require
from dogclf._faults import failpoint
from dogclf.errors import EndpointError, InvalidRequestError

__all__ = ["CostWarning", "Endpoint", "LocalEndpoint", "InProcessEndpoint", "raise_for_error", "new_endpoint_name"]

logger = logging.getLogger(__name__)


class CostWarning(UserWarning):
    """A paid resource (a SageMaker endpoint) is still running although nothing refers to its handle any more."""


def new_endpoint_name(prefix: str = "dogclf") -> str:
    """A fresh endpoint name: ``<prefix>-YYYYmmdd-HHMMSS-<6 hex>`` (SageMaker allows 63 characters)."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"[:63]


def raise_for_error(status: int, body: bytes, where: str) -> None:
    """Turn an endpoint's error answer into an exception.

    Raises:
        InvalidRequestError: a 4xx answer (with the endpoint's ``code`` and message).
        EndpointError: any other non-2xx answer.
    """
    if 200 <= status < 300:
        return
    text = body.decode("utf-8", "replace")
    code, message = None, text.strip()[:500]
    try:
        doc = json.loads(text.splitlines()[0] if text else "{}")
        if isinstance(doc, dict):
            code, message = doc.get("error"), str(doc.get("message", message))
    except ValueError:
        pass
    if 400 <= status < 500:
        raise InvalidRequestError(f"{where} refused the request ({status}): {message}",
                                  code=code or "bad_request", status_code=status)
    raise EndpointError(f"{where} failed ({status}): {message}", status_code=status, code=code)


class Endpoint:
    """Base class of endpoint handles.

    Attributes:
        name: The endpoint's name.
        backend: ``"local"``, ``"sagemaker"`` or ``"in-process"``.
    """

    name: str = ""
    backend: str = ""

    def invoke(self, body: bytes, content_type: str, *, accept: str = "application/json",
               k: int | None = None) -> tuple[bytes, str]:
        """Send one request; returns ``(response body, response content type)``.

        Args:
            body: The request body (see :mod:`dogclf.serving.handler` for the formats).
            content_type: Its content type.
            accept: The wanted response type.
            k: How many breeds to return (default: the handler's, 5).

        Raises:
            InvalidRequestError: the endpoint refused the request (4xx).
            EndpointError: the endpoint failed, or was deleted.
        """
        raise NotImplementedError

    @property
    def deleted(self) -> bool:
        """Whether :meth:`delete` has run."""
        return bool(getattr(self, "_deleted", False))

    def delete(self) -> None:
        """Stop the endpoint and free what it holds; calling it again does nothing."""
        raise NotImplementedError

    def _check_live(self) -> None:
        if self.deleted:
            raise EndpointError(f"endpoint {self.name!r} was deleted")

    def __enter__(self) -> Endpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.delete()

    def __repr__(self) -> str:
        state = "deleted" if self.deleted else "live"
        return f"{type(self).__name__}(name={self.name!r}, {state})"


class InProcessEndpoint(Endpoint):
    """Serve an artifact inside this process through the handler functions, without a server.

    Args:
        artifact: An artifact folder, a ``model.tar.gz`` or a built :class:`~dogclf.models.ResNetBreedModel`.
        name: A name for logs.
        runtime: The inference runtime (``"torch"``, ``"onnx"`` or ``"onnx-int8"``); an ONNX runtime the artifact
            lacks is exported on first use (into an artifact folder, so once).
        calibration: Training photos to calibrate ``onnx-int8`` with when the artifact has none recorded.
        intra_op_threads: Threads of one ONNX Runtime forward pass (``None``: as many as torch uses).

    The model is loaded on first use (or by :meth:`load`).
    """

    backend = "in-process"

    def __init__(self, artifact: Any, name: str = "in-process", *, runtime: str = "torch", calibration: Any = None,
                 intra_op_threads: int | None = None) -> None:
        from dogclf.serving.runtimes import check_runtime

        self.artifact = artifact
        self.name = name
        self.runtime = check_runtime(runtime)
        self.calibration = calibration
        self.intra_op_threads = intra_op_threads
        self._model: Any = None
        self._lock = threading.Lock()

    def load(self) -> Any:
        """Load the model (once) and return the :class:`~dogclf.serving.handler.ServedModel`.

        Raises:
            ArtifactError: the artifact is not usable (:class:`~dogclf.errors.AgreementError` and
                :class:`~dogclf.errors.RuntimeExportError` when its ONNX export is refused or fails).
            MissingExtraError: an ONNX runtime without its packages installed.
        """
        from dogclf.serving import handler
        from dogclf.serving.export import ensure_runtime
        from dogclf.serving.package import resolve_model_dir

        with self._lock:
            if self._model is None:
                self._check_live()
                with tempfile.TemporaryDirectory(prefix="dogclf-inproc-") as tmp:
                    model_dir = resolve_model_dir(self.artifact, tmp)
                    ensure_runtime(model_dir, self.runtime, calibration=self.calibration)
                    self._model = handler.load_model(model_dir, self.runtime,
                                                     intra_op_threads=self.intra_op_threads)
            return self._model

    @property
    def model(self) -> Any:
        """The loaded :class:`~dogclf.serving.handler.ServedModel`."""
        return self.load()

    def invoke(self, body: bytes, content_type: str, *, accept: str = "application/json",
               k: int | None = None) -> tuple[bytes, str]:
        """Run ``input_fn``, ``predict_fn`` and ``output_fn`` on one request; see :meth:`Endpoint.invoke`."""
        from dogclf.serving import handler
        from dogclf.serving.server import _Context

        model = self.load()
        data = handler.input_fn(body, content_type, _Context({}, model, k))
        return handler.output_fn(handler.predict_fn(data, model), accept)

    def delete(self) -> None:
        """Drop the loaded model; idempotent."""
        self._model = None
        self._deleted = True


def _stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    except ProcessLookupError:  # pragma: no cover - exited between poll and signal
        pass


def _cleanup(proc: subprocess.Popen[bytes] | None, workdir: Path | None, remove: bool) -> None:
    if proc is not None:
        _stop_process(proc)
    if remove and workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


class LocalEndpoint(Endpoint):
    """The local endpoint server, run in a child process.

    Args:
        artifact: An artifact folder, a ``model.tar.gz`` or a built :class:`~dogclf.models.ResNetBreedModel`.
        config: A :class:`~dogclf.serving.server.ServerConfig` (host, port, batching, limits, workers).
        name: Endpoint name; a fresh one by default.
        workdir: Folder for the unpacked model and the server log; a temporary folder (removed on
            :meth:`delete`) by default.
        startup_timeout_s: How long :meth:`start` waits for ``/ping``.
        calibration: Training photos to calibrate an ``onnx-int8`` runtime with when the artifact has none recorded.

    :meth:`start` (called by :class:`~dogclf.serving.EndpointDeployer`) binds the socket here, so the port is known
    before the child starts, and waits until ``GET /ping`` answers. The child is stopped by :meth:`delete`, by the
    context manager's exit, when the handle is garbage-collected, and at interpreter exit. If the deploying process
    itself dies (even by ``SIGKILL``), the server notices within a second, stops, and removes its temporary folder.

    Attributes:
        url: ``http://host:port`` once started.
        labels: The served model's :class:`~dogclf.labels.BreedLabels` once started.
        log_path: The server's log file.
    """

    backend = "local"

    def __init__(self, artifact: Any, config: Any = None, *, name: str | None = None,
                 workdir: str | os.PathLike[str] | None = None, startup_timeout_s: float = 120.0,
                 calibration: Any = None) -> None:
        self.artifact = artifact
        self.config = config
        self.calibration = calibration
        self.name = name or new_endpoint_name()
        self.workdir = Path(workdir) if workdir is not None else None
        self.startup_timeout_s = startup_timeout_s
        self.url: str | None = None
        self.labels: Any = None
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._local = threading.local()

    @property
    def pid(self) -> int | None:
        """The server process id once started."""
        return self._proc.pid if self._proc is not None else None

    @property
    def is_running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _exit_status(self) -> str | None:
        """How the server process ended (``"was killed by SIGKILL"``, ``"exited with status 1"``), or None while
        it runs."""
        if self._proc is None or self._proc.poll() is None:
            return None
        code = self._proc.returncode
        if code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with status {code}"

    def _check_server(self, cause: BaseException | None = None) -> None:
        ended = self._exit_status()
        if ended is not None:
            raise EndpointError(f"local endpoint {self.name!r} is not running: its server process {self.pid} "
                                f"{ended}; delete() it and deploy again. Its log ends:\n{self._log_tail()}") from cause

    def start(self) -> LocalEndpoint:
        """Start the server process and wait for ``/ping``; returns ``self``.

        Raises:
            EndpointError: the process exited or did not answer ``/ping`` in time (the message carries the end
                of its log).
            ArtifactError: the artifact is not usable (:class:`~dogclf.errors.AgreementError` and
                :class:`~dogclf.errors.RuntimeExportError` when the configured ONNX runtime's export is refused or
                fails; it is made here, before the server starts).
            MissingExtraError: an ONNX runtime without its packages installed.
        """
        from dogclf.labels import BreedLabels
        from dogclf.serving.export import ensure_runtime
        from dogclf.serving.package import resolve_model_dir
        from dogclf.serving.server import ServerConfig

        self._check_live()
        if self._proc is not None:
            return self
        config = self.config or ServerConfig()
        remove = self.workdir is None
        workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-")) if remove else self.workdir
        assert workdir is not None
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            model_dir = resolve_model_dir(self.artifact, workdir)
            ensure_runtime(model_dir, config.runtime, calibration=self.calibration)
            self.labels = BreedLabels.load(model_dir / "labels.json")
            family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((config.host, config.port))
                sock.listen(256)
                sock.set_inheritable(True)
                host, port = sock.getsockname()[:2]
                self.log_path = workdir / "server.log"
                env = {**os.environ, "PYTHONUNBUFFERED": "1"}
                cmd = [sys.executable, "-m", "dogclf.serving.server", str(model_dir), "--fd", str(sock.fileno()),
                       "--config", json.dumps(config.to_dict()), "--parent-pid", str(os.getpid())]
                if remove:
                    cmd += ["--remove-when-orphaned", str(workdir)]
                with open(self.log_path, "ab") as log:
                    self._proc = subprocess.Popen(cmd, pass_fds=(sock.fileno(),), stdout=log,
                                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                                  start_new_session=True)
            finally:
                sock.close()
        except BaseException:
            if remove:
                shutil.rmtree(workdir, ignore_errors=True)
            raise
        self._finalizer = weakref.finalize(self, _cleanup, self._proc, workdir, remove)
        failpoint("serving.endpoint.spawned")
        url_host = f"[{host}]" if family == socket.AF_INET6 else host
        self.url = f"http://{url_host}:{port}"
        try:
            self._wait_ready()
        except BaseException:
            self.delete()
            raise
        logger.info("local endpoint %s serving %s at %s (pid %d)", self.name, model_dir, self.url, self._proc.pid)
        return self

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text("utf-8", "replace").splitlines()[-lines:])  # type: ignore
        except (OSError, TypeError):
            return ""

    def _wait_ready(self) -> None:
        requests = require("serve", "requests", "local endpoint client")

        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise EndpointError(f"local endpoint {self.name!r} exited with status {self._proc.returncode} "
                                    f"while starting; its log ends:\n{self._log_tail()}")
            try:
                if requests.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise EndpointError(f"local endpoint {self.name!r} did not answer /ping within "
                                    f"{self.startup_timeout_s} s; its log ends:\n{self._log_tail()}")
            time.sleep(0.1)

    def _session(self) -> Any:
        requests = require("serve", "requests", "local endpoint client")

        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def ping(self) -> bool:
        """Whether ``GET /ping`` answers 200."""
        requests = require("serve", "requests", "local endpoint client")

        if self.url is None or self.deleted or not self.is_running:
            return False
        try:
            return self._session().get(f"{self.url}/ping", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def stats(self) -> dict[str, Any]:
        """The server's counters: requests, 4xx/5xx errors, forward passes (``batches``), ``images``, and the
        requests ``queued`` for a forward pass now."""
        self._check_live()
        return self._session().get(f"{self.url}/stats", timeout=10).json()

    def invoke(self, body: bytes, content_type: str, *, accept: str = "application/json",
               k: int | None = None, timeout: float = 120.0) -> tuple[bytes, str]:
        """``POST /invocations``; see :meth:`Endpoint.invoke`. ``timeout`` bounds the HTTP call in seconds.

        If the server process has ended (crashed, or killed), or ends while answering, the call raises
        :class:`~dogclf.errors.EndpointError` saying how it ended, with the end of its log; :attr:`is_running`
        is then False, and :meth:`delete` cleans up what is left.
        """
        requests = require("serve", "requests", "local endpoint client")

        self._check_live()
        if self.url is None:
            raise EndpointError(f"local endpoint {self.name!r} was not started")
        self._check_server()
        params = {"k": str(k)} if k is not None else None
        try:
            response = self._session().post(f"{self.url}/invocations", data=body, params=params, timeout=timeout,
                                            headers={"Content-Type": content_type, "Accept": accept})
        except requests.RequestException as exc:
            if self._proc is not None:
                try:  # a connection cut by the server's death: report the death, not just the reset
                    self._proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    pass
            self._check_server(exc)
            raise EndpointError(f"local endpoint {self.name!r} at {self.url} could not be reached: {exc}") from exc
        raise_for_error(response.status_code, response.content, f"local endpoint {self.name!r}")
        return response.content, response.headers.get("content-type", "")

    def delete(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and remove the temporary folder; idempotent."""
        if self.deleted:
            return
        self._deleted = True
        if self._finalizer is not None:
            self._finalizer()
        logger.info("local endpoint %s stopped", self.name)

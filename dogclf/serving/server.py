"""The local endpoint: an HTTP server speaking the SageMaker inference-container contract.

``GET /ping`` answers 200 once the model is loaded; ``POST /invocations`` runs the shared handler
(:mod:`dogclf.serving.handler`) on the request. It is a Starlette app served by uvicorn, bound to 127.0.0.1 unless
told otherwise. Decoding and preprocessing run on a pool of worker threads; the network runs on one inference thread
fed by a :class:`DynamicBatcher`, which merges the images of concurrent requests into one forward pass (up to
``max_batch_size`` images, waiting at most ``max_delay_ms`` for more after the first arrives). Bodies over
``max_request_bytes`` get 413, requests running longer than ``request_timeout_s`` get 504, bad requests a 4xx JSON
error; the server keeps serving either way. How many breeds to answer with, ``k``, is the ``?k=3`` query string
(SageMaker's ``X-Amzn-SageMaker-Custom-Attributes: k=3`` header and a JSON body's ``"k"`` work too, as on SageMaker).

Run it as ``python -m dogclf.serving.server MODEL_DIR [--port 8080] [--max-batch-size 8] ...``;
:class:`~dogclf.serving.EndpointDeployer` starts it in a separate process for you.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from dogclf._extras import require
from dogclf.errors import ConfigError, InvalidRequestError
from dogclf.serving.batching import DynamicBatcher
from dogclf.serving.runtimes import check_runtime, plan_threads

__all__ = ["ServerConfig", "DynamicBatcher", "create_app", "serve", "main"]  # DynamicBatcher: from .batching

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    """How the local endpoint serves, validated on creation.

    Attributes:
        host: Interface to bind; ``127.0.0.1`` keeps the endpoint private to this machine.
        port: TCP port; ``0`` picks a free one.
        max_batch_size: Most images one forward pass takes when merging concurrent requests.
        max_delay_ms: How long the batcher waits for more requests after the first one arrives.
        batching: ``False`` runs every request alone (same as ``max_batch_size=1``).
        max_request_bytes: Larger bodies are refused with 413 (SageMaker real-time endpoints allow 6 MB).
        request_timeout_s: Requests taking longer get 504.
        runtime: The inference runtime: ``"torch"`` (eager PyTorch), ``"onnx"`` or ``"onnx-int8"`` (the artifact's
            exported model in ONNX Runtime; see :mod:`dogclf.serving.runtimes`).
        workers: Threads that decode, preprocess and serialise requests; ``None`` lets the server choose for the
            machine it runs on (:func:`~dogclf.serving.runtimes.plan_threads`).
        intra_op_threads: Threads one forward pass uses; ``None`` lets the server choose (torch keeps its own
            default, one per core).
        log_level: uvicorn's log level.

    Raises:
        ConfigError: a value is out of range; the message names it.
    """

    host: str = "127.0.0.1"
    port: int = 0
    max_batch_size: int = 8
    max_delay_ms: float = 10.0
    batching: bool = True
    max_request_bytes: int = 6 * 1024 * 1024
    request_timeout_s: float = 60.0
    runtime: str = "torch"
    workers: int | None = None
    intra_op_threads: int | None = None
    log_level: str = "warning"

    def __post_init__(self) -> None:
        def positive_int(name: str, allow_zero: bool = False) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
                raise ConfigError(f"{name} must be an int >= {0 if allow_zero else 1}, got {value!r}")

        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"host must be a non-empty str such as '127.0.0.1', got {self.host!r}")
        positive_int("port", allow_zero=True)
        if self.port > 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        for name in ("max_batch_size", "max_request_bytes"):
            positive_int(name)
        for name in ("workers", "intra_op_threads"):
            if getattr(self, name) is not None:
                positive_int(name)
        check_runtime(self.runtime)
        for name in ("max_delay_ms", "request_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != value:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if self.request_timeout_s <= 0:
            raise ConfigError(f"request_timeout_s must be > 0, got {self.request_timeout_s!r}")
        if not isinstance(self.batching, bool):
            raise ConfigError(f"batching must be True or False, got {self.batching!r}")
        levels = ("critical", "error", "warning", "info", "debug", "trace")
        if self.log_level not in levels:
            raise ConfigError(f"unknown log_level {self.log_level!r}; choose one of {', '.join(levels)}")

    @property
    def effective_batch_size(self) -> int:
        """``max_batch_size`` with batching on, else 1."""
        return self.max_batch_size if self.batching else 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what the server process receives)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`~dogclf.errors.ConfigError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown server options {unknown}; expected some of {sorted(known)}")
        return cls(**data)


class _RequestProcessor:
    """Stand-in for the model server's request processor: ``get_request_properties()`` returns the headers."""

    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = headers

    def get_request_properties(self) -> dict[str, str]:
        return self._headers


class _Context:
    """The part of the SageMaker model-server context the handler reads (``request_processor[0]``), plus what
    dogclf's own servers add: the model being served and the request's ``k`` (``None``: not given)."""

    def __init__(self, headers: dict[str, str], served_model: Any = None, k: int | None = None) -> None:
        self.request_processor = [_RequestProcessor(headers)]
        self.served_model = served_model
        self.k = k


def _error(status: int, code: str, message: str) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": code, "message": message}, status_code=status)


def create_app(model: Any, config: ServerConfig | None = None) -> Any:
    """Build the Starlette app serving ``model``.

    Args:
        model: A :class:`~dogclf.serving.handler.ServedModel` (from :func:`~dogclf.serving.handler.model_fn`).
        config: Serving options; defaults to :class:`ServerConfig`'s.

    Returns:
        A Starlette application with ``GET /ping`` and ``POST /invocations`` (plus ``GET /stats``: batches run,
        images seen, requests served, refused and queued for a forward pass, and the runtime, workers and
        intra-op threads serving them).
    """
    from contextlib import asynccontextmanager

    require("serve", "starlette", "local endpoint server")
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from dogclf.serving import handler

    config = config or ServerConfig()
    runtime = getattr(model, "runtime", "torch")
    intra_op_threads, workers = plan_threads(runtime, intra_op_threads=config.intra_op_threads, workers=config.workers)
    batcher = DynamicBatcher(model, config.effective_batch_size, config.max_delay_ms / 1000.0)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dogclf-worker")
    stats = {"requests": 0, "errors_4xx": 0, "errors_5xx": 0}
    intra_op_threads = getattr(model.module, "intra_op_threads", None) or intra_op_threads  # what the session has
    if intra_op_threads is None:
        import torch

        intra_op_threads = torch.get_num_threads()
    serving = {"runtime": runtime, "workers": workers, "intra_op_threads": intra_op_threads}

    async def ping(request: Request) -> Response:
        return JSONResponse({"status": "healthy", "breeds": model.num_classes})

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > config.max_request_bytes:
            raise handler.request_error(f"the body is {length} bytes, over the limit of {config.max_request_bytes}",
                                        "payload_too_large", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_request_bytes:
                raise handler.request_error(f"the body is over the limit of {config.max_request_bytes} bytes",
                                            "payload_too_large", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def handle(request: Request) -> Response:
        loop = asyncio.get_running_loop()
        body = await read_body(request)
        headers = {key.lower(): value for key, value in request.headers.items()}
        query_k = request.query_params.get("k")
        k = handler.parse_k(query_k, "query parameter k") if query_k is not None else None
        content_type = headers.get("content-type")
        data = await loop.run_in_executor(pool, handler.input_fn, body, content_type,
                                          _Context(headers, model, k))
        output = await batcher.submit(data)
        payload, media_type = await loop.run_in_executor(pool, handler.output_fn, output, headers.get("accept"))
        return Response(payload, media_type=media_type)

    async def invocations(request: Request) -> Response:
        stats["requests"] += 1
        try:
            return await asyncio.wait_for(handle(request), config.request_timeout_s)
        except InvalidRequestError as exc:
            stats["errors_4xx"] += 1
            return _error(exc.status_code, exc.code, str(exc))
        except asyncio.TimeoutError:
            stats["errors_5xx"] += 1
            return _error(504, "timeout", f"the request took longer than {config.request_timeout_s} s")
        except ClientDisconnect:
            stats["errors_4xx"] += 1
            return _error(400, "client_disconnected", "the client went away before the body was read")
        except Exception as exc:  # noqa: BLE001 - a real server fault: log it, answer 500, keep serving
            stats["errors_5xx"] += 1
            logger.exception("internal error serving a request")
            return _error(500, "internal_error", f"{type(exc).__name__}: {exc}")

    async def get_stats(request: Request) -> Response:
        return JSONResponse({**stats, "batches": batcher.batches, "images": batcher.images,
                             "queued": batcher.queued, **serving})

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        batcher.start()
        await batcher.warm_up()
        try:
            yield
        finally:
            await batcher.stop()
            pool.shutdown(wait=False, cancel_futures=True)

    return Starlette(routes=[
        Route("/ping", ping, methods=["GET"]),
        Route("/invocations", invocations, methods=["POST"]),
        Route("/stats", get_stats, methods=["GET"]),
    ], lifespan=lifespan)


def serve(model_dir: str | os.PathLike[str], config: ServerConfig | None = None, *,
          sock: socket.socket | None = None) -> None:
    """Load the artifact in ``model_dir`` and serve it until interrupted (SIGINT/SIGTERM stop it gracefully).

    The ``onnx`` runtimes serve the artifact's exported model (:func:`dogclf.serving.export.export_runtimes` makes
    it; :class:`~dogclf.serving.EndpointDeployer` does so before starting the server); the server never exports.

    Args:
        model_dir: An unpacked artifact folder.
        config: Serving options.
        sock: An already bound and listening socket to serve on (``config.host``/``port`` are then ignored).
    """
    import torch

    uvicorn = require("serve", "uvicorn", "local endpoint server")
    from dogclf.serving import handler

    config = config or ServerConfig()
    intra_op_threads, workers = plan_threads(config.runtime, intra_op_threads=config.intra_op_threads,
                                             workers=config.workers)
    if config.runtime == "torch" and intra_op_threads is not None:
        torch.set_num_threads(intra_op_threads)
    model = handler.load_model(model_dir, config.runtime, intra_op_threads=intra_op_threads)
    app = create_app(model, replace(config, intra_op_threads=intra_op_threads, workers=workers))
    uv_config = uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                               access_log=False, timeout_graceful_shutdown=5, lifespan="on")
    server = uvicorn.Server(uv_config)
    server.run(sockets=[sock] if sock is not None else None)


def _watch_parent(parent_pid: int, interval_s: float = 1.0) -> None:
    """Stop this server gracefully (SIGTERM to itself) once ``parent_pid`` has exited, so a crashed or killed
    client process leaves no orphaned server behind."""
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        logger.warning("parent process %d is gone; stopping the server", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="dogclf-parent-watch", daemon=True).start()


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``python -m dogclf.serving.server MODEL_DIR [options]``."""
    parser = argparse.ArgumentParser(prog="python -m dogclf.serving.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="unpacked model artifact folder")
    parser.add_argument("--config", default=None, help="ServerConfig as a JSON object")
    parser.add_argument("--fd", type=int, default=None, help="serve on this inherited listening socket")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="stop when this process (the one that started the server) is gone")
    parser.add_argument("--remove-when-orphaned", default=None, metavar="DIR",
                        help="with --parent-pid: remove this folder (the endpoint's temporary one) when stopping "
                             "because that process is gone")
    for f in fields(ServerConfig):
        if f.name in ("host", "log_level", "runtime"):
            parser.add_argument(f"--{f.name.replace('_', '-')}", default=None)
        elif f.name == "batching":
            parser.add_argument("--no-batching", dest="batching", action="store_false", default=None)
        else:
            number = float if f.name in ("max_delay_ms", "request_timeout_s") else int
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=number, default=None)
    args = parser.parse_args(argv)
    options = json.loads(args.config) if args.config else {}
    options.update({f.name: getattr(args, f.name) for f in fields(ServerConfig) if getattr(args, f.name) is not None})
    config = ServerConfig.from_dict(options)
    logging.basicConfig(level=config.log_level.upper() if config.log_level != "trace" else "DEBUG",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # from here on, a SIGTERM (SystemExit) still runs the clean-up below
        if args.parent_pid is not None:
            _watch_parent(args.parent_pid)
        sock = socket.socket(fileno=args.fd) if args.fd is not None else None
        serve(args.model_dir, config, sock=sock)
    finally:
        if args.remove_when_orphaned and args.parent_pid is not None and os.getppid() != args.parent_pid:
            import shutil

            # the process that would have removed it is gone (killed): nothing else will
            shutil.rmtree(args.remove_when_orphaned, ignore_errors=True)
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a process
    # SIGTERM (from delete(), or from the parent watch) ends the process through SystemExit, so main()'s clean-up
    # runs even while the model is still loading; uvicorn handles it gracefully while serving, then re-raises it.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    raise SystemExit(main())

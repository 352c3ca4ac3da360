"""Test helpers for serving: tiny artifacts, synthetic photos and an in-thread server.

Used by dogclf's own tests and benchmarks; handy for users testing code built on :mod:`dogclf.serving`.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["make_artifact", "synthetic_photo", "running_app"]


def make_artifact(path: str | os.PathLike[str], labels: Sequence[str] | str = ("Beagle", "Pug", "Golden_retriever"),
                  *, backbone: str = "resnet18", seed: int = 0) -> Path:
    """Write a randomly initialised model artifact (no downloads) and return its folder.

    Args:
        path: The artifact folder to write.
        labels: Breed names, or a registered label-set name such as ``"dogimages-133"``.
        backbone: A registered backbone (:func:`~dogclf.models.backbones.list_models`).
        seed: Seed for the random weights (the same seed writes the same model).
    """
    import torch

    from dogclf.models import BreedModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BreedModel(labels if isinstance(labels, str) else list(labels), backbone=backbone,
                           weights=None).build()
    return model.save(path)


def synthetic_photo(width: int = 64, height: int = 48, *, mode: str = "RGB", fmt: str = "JPEG", seed: int = 0,
                    **save: Any) -> bytes:
    """Encode a small random-pattern image.

    Args:
        width: Width in pixels.
        height: Height in pixels.
        mode: A Pillow mode (``"RGB"``, ``"RGBA"``, ``"L"``, ``"P"``, ``"CMYK"``, ``"I;16"``, ...).
        fmt: A Pillow format (``"JPEG"``, ``"PNG"``, ``"GIF"``, ...).
        seed: Seed of the pattern.
        **save: Extra options for :meth:`PIL.Image.Image.save` (``exif=...``, ``quality=...``).
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb[..., 0] = (xx * 255 // max(1, width - 1)).astype(np.uint8)  # a gradient: orientation is visible
    image = Image.fromarray(rgb, "RGB")
    if mode == "I;16":
        gray = (xx * 65535 // max(1, width - 1)).astype(np.uint16)
        image = Image.fromarray(gray)  # mode I;16
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    elif mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


@contextmanager
def running_app(app: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve a Starlette app (e.g. from :func:`dogclf.serving.server.create_app`) with uvicorn on a thread of this
    process for the duration of the ``with`` block; yields its base URL. Always stops the server."""
    import socket

    from dogclf._extras import require

    uvicorn = require("serve", "uvicorn", "test server")

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the in-thread server did not start")
            time.sleep(0.02)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()

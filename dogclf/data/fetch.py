"""Resumable HTTP(S) downloads: streamed to disk, resumed with ``Range`` requests, checked against a sha256."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from dogclf._extras import require
from dogclf.errors import (
    ChecksumMismatchError,
    ConfigError,
    DataNotFoundError,
    DownloadError,
    InvalidURIError,
)

__all__ = ["download", "sha256_file", "ProgressCallback"]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, "int | None"], None]
"""``progress(phase, done, total)``: ``phase`` names the step (``"download"``, ``"extract"``, ``"validate"``,
``"upload"``, ...), ``done`` and ``total`` count bytes or files; ``total`` is None when unknown."""

_CHUNK = 1024 * 1024


def sha256_file(path: str | os.PathLike[str], chunk_size: int = _CHUNK) -> str:
    """The hex sha256 of a file's contents, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def _check_sha(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower()):
        raise ConfigError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return sha256.lower()


def download(url: str, dest: str | os.PathLike[str], *, sha256: str | None = None,
             progress: ProgressCallback | None = None, retries: int = 5, timeout: float = 60.0,
             chunk_size: int = _CHUNK, session: object | None = None) -> Path:
    """Download ``url`` to ``dest``, resuming an earlier partial download, and check its sha256.

    Bytes stream to ``dest + ".part"``; ``dest`` appears (by rename) only when the download is complete and, when
    ``sha256`` is given, verified. A ``.part`` file left by an interrupted run is resumed with an HTTP ``Range``
    request (guarded by ``If-Range`` with the ``ETag``/``Last-Modified`` seen first, so a changed file restarts
    from zero); a server that ignores ``Range`` makes it start over. A connection that drops mid-stream is
    resumed the same way, up to ``retries`` times, with a short back-off.

    If ``dest`` already exists and matches ``sha256`` (or no ``sha256`` is given), nothing is downloaded.

    Args:
        url: An ``http://`` or ``https://`` URL.
        dest: File to write.
        sha256: Expected hex sha256 of the whole file.
        progress: Called as ``progress("download", bytes_done, bytes_total_or_None)`` after each chunk.
        retries: How many times a dropped connection is resumed before giving up.
        timeout: Seconds to wait for the server to connect or send the next bytes.
        chunk_size: Bytes read per chunk.
        session: A :class:`requests.Session` to use (a new one by default).

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        InvalidURIError: ``url`` is not http(s).
        DataNotFoundError: the server answers 404 or 410.
        DownloadError: another HTTP error, or the connection failed more than ``retries`` times.
        ChecksumMismatchError: the complete file's sha256 differs from ``sha256``; the bad file is deleted.
    """
    requests = require("http", "requests", "dataset download")

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidURIError(f"download URL must be http(s)://host/..., got {url!r}")
    sha256 = _check_sha(sha256)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        if sha256 is None or sha256_file(dest) == sha256:
            log.info("%s already downloaded to %s", url, dest)
            return dest
        log.warning("%s exists but its sha256 differs from %s; downloading again", dest, sha256)
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    meta_path = dest.with_name(dest.name + ".part.json")
    validator = None
    if part.is_file():
        # resume only a partial download of the same URL; its ETag/Last-Modified (if any) guards the resume
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
        if meta.get("url") == url:
            validator = meta.get("validator")
            log.info("resuming %s from %d bytes", url, part.stat().st_size)
        else:
            part.unlink()

    own_session = session is None
    http = requests.Session() if own_session else session
    failures = 0
    try:
        while True:
            have = part.stat().st_size if part.is_file() else 0
            headers = {"Accept-Encoding": "identity"}
            if have:
                headers["Range"] = f"bytes={have}-"
                if validator:
                    headers["If-Range"] = validator
            try:
                with http.get(url, headers=headers, stream=True, timeout=timeout) as resp:
                    if resp.status_code in (404, 410):
                        raise DataNotFoundError(f"{url!r} not found (HTTP {resp.status_code})")
                    if resp.status_code == 416 and have:
                        # our partial file is at least as long as the resource: restart cleanly
                        log.warning("server refused range %d- for %s; restarting", have, url)
                        part.unlink()
                        continue
                    if resp.status_code not in (200, 206):
                        raise DownloadError(f"downloading {url!r} failed: HTTP {resp.status_code} {resp.reason}")
                    if resp.status_code == 200 and have:
                        log.info("server ignored the range request for %s; starting over", url)
                        have = 0
                    total = _total(resp, have)
                    new_validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
                    if resp.status_code == 200:
                        validator = new_validator
                        meta_path.write_text(json.dumps({"url": url, "validator": validator}))
                    mode = "ab" if resp.status_code == 206 else "wb"
                    done = have if resp.status_code == 206 else 0
                    with open(part, mode) as out:
                        for chunk in resp.iter_content(chunk_size):
                            out.write(chunk)
                            done += len(chunk)
                            if progress is not None:
                                progress("download", done, total)
                    if total is not None and done < total:
                        raise requests.exceptions.ChunkedEncodingError(
                            f"connection closed after {done} of {total} bytes")
                    break
            except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.Timeout) as exc:
                failures += 1
                got = part.stat().st_size if part.is_file() else 0
                if failures > retries:
                    raise DownloadError(
                        f"downloading {url!r} failed after {retries} retries ({got} bytes kept in {str(part)!r} "
                        f"for the next attempt): {exc}") from None
                log.warning("download of %s interrupted at %d bytes (%s); resuming (%d/%d)", url, got, exc,
                            failures, retries)
                time.sleep(min(0.2 * 2 ** (failures - 1), 5.0))
    finally:
        if own_session:
            http.close()

    if sha256 is not None:
        actual = sha256_file(part)
        if actual != sha256:
            part.unlink()
            meta_path.unlink(missing_ok=True)
            raise ChecksumMismatchError(
                f"download of {url!r} has sha256 {actual}, expected {sha256}; the file was deleted")
    os.replace(part, dest)
    meta_path.unlink(missing_ok=True)
    log.info("downloaded %s to %s (%d bytes)", url, dest, dest.stat().st_size)
    return dest


def _total(resp, have: int) -> int | None:
    if resp.status_code == 206:
        rng = resp.headers.get("Content-Range", "")
        if "/" in rng and not rng.endswith("/*"):
            try:
                return int(rng.rsplit("/", 1)[1])
            except ValueError:
                return None
        length = resp.headers.get("Content-Length")
        return have + int(length) if length and length.isdigit() else None
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None

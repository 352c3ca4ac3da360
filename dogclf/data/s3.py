"""S3 transfers for staging: concurrent, multipart for large files, skipping objects already in place."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dogclf._extras import require
from dogclf._faults import failpoint
from dogclf.errors import BackendError, DataNotFoundError, InvalidURIError

__all__ = ["S3Location", "parse_s3_uri", "make_client", "list_objects", "expected_etag", "upload_files",
           "download_prefix", "UploadStats"]

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix (without leading or trailing ``/``)."""

    bucket: str
    prefix: str = ""

    @property
    def uri(self) -> str:
        """``s3://bucket/prefix``."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def key(self, relpath: str) -> str:
        """The object key of a path relative to the prefix."""
        return f"{self.prefix}/{relpath}" if self.prefix else relpath

    def child(self, relpath: str) -> S3Location:
        """The location of a sub-prefix."""
        return S3Location(self.bucket, self.key(relpath.strip("/")))


def parse_s3_uri(uri: str) -> S3Location:
    """Split ``s3://bucket/some/prefix/`` into bucket and prefix.

    Raises:
        InvalidURIError: not an ``s3://`` URI, no bucket, or a bucket name S3 would refuse.
    """
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise InvalidURIError(f"expected an s3://bucket/prefix URI, got {uri!r}")
    rest = uri[5:]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise InvalidURIError(f"S3 URI {uri!r} has no bucket; expected s3://bucket/prefix")
    if not 3 <= len(bucket) <= 63 or not all(c.islower() or c.isdigit() or c in ".-" for c in bucket) \
            or not bucket[0].isalnum() or not bucket[-1].isalnum():
        raise InvalidURIError(
            f"S3 URI {uri!r}: {bucket!r} is not a valid bucket name (3-63 lower-case letters, digits, '.', '-')")
    prefix = "/".join(p for p in prefix.split("/") if p)
    if any(p in (".", "..") for p in prefix.split("/")):
        raise InvalidURIError(f"S3 URI {uri!r} has '.' or '..' in its prefix")
    return S3Location(bucket, prefix)


_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()


def make_client(workers: int = 16, region: str | None = None) -> Any:
    """A boto3 S3 client whose connection pool fits ``workers`` concurrent transfers.

    The endpoint, credentials and region come from the usual places (``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ...).
    Clients are thread-safe and slow to create (~0.1 s), so one is kept per pool size, region and environment.
    """
    boto3 = require("s3", "boto3", "S3 staging")
    from botocore.config import Config

    env = tuple(os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE",
                                            "AWS_ACCESS_KEY_ID", "AWS_DEFAULT_REGION", "AWS_REGION"))
    key = (workers, region, env, os.getpid())
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            config = Config(max_pool_connections=max(10, workers + 4),
                            retries={"max_attempts": 8, "mode": "adaptive"})
            client = _clients[key] = boto3.session.Session(region_name=region).client("s3", config=config)
        return client


def _client_error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def check_bucket(client: Any, loc: S3Location) -> None:
    """Raise :class:`DataNotFoundError` naming the bucket when it does not exist or cannot be reached."""
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=loc.bucket)
    except ClientError as exc:
        code = _client_error_code(exc)
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise DataNotFoundError(f"S3 bucket {loc.bucket!r} of {loc.uri!r} does not exist") from None
        raise BackendError(f"cannot access S3 bucket {loc.bucket!r} of {loc.uri!r}: {exc}") from None


def list_objects(client: Any, loc: S3Location) -> dict[str, tuple[int, str]]:
    """``{key: (size, etag)}`` of every object under the prefix (one request per 1,000 objects)."""
    prefix = f"{loc.prefix}/" if loc.prefix else ""
    out: dict[str, tuple[int, str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
        for obj in page.get("Contents", ()):
            out[obj["Key"]] = (int(obj["Size"]), obj.get("ETag", "").strip('"'))
    return out


def has_objects(uri: str) -> bool:
    """Whether anything is stored under the ``s3://`` prefix ``uri`` (one ``ListObjectsV2`` of one key).

    Raises:
        BackendError: the bucket cannot be listed (missing, no access); the message names the URI.
    """
    loc = parse_s3_uri(uri)
    prefix = f"{loc.prefix}/" if loc.prefix else ""
    try:
        listing = make_client().list_objects_v2(Bucket=loc.bucket, Prefix=prefix, MaxKeys=1)
    except Exception as exc:  # noqa: BLE001 - botocore's errors: say which URI
        raise BackendError(f"cannot list {uri!r}: {type(exc).__name__}: {exc}") from exc
    return bool(listing.get("KeyCount") or listing.get("Contents"))


def _adjusted_chunksize(chunksize: int, size: int) -> int:
    from s3transfer.utils import ChunksizeAdjuster

    return ChunksizeAdjuster().adjust_chunksize(chunksize, size)


def expected_etag(path: Path, size: int, md5: str, threshold: int, chunksize: int) -> str:
    """The ETag S3 gives ``path`` when uploaded by :func:`upload_files` with these multipart settings.

    A single-part upload's ETag is the MD5 of the bytes (``md5``, already known from the manifest); a multipart
    upload's is the MD5 of the parts' MD5s followed by ``-<number of parts>``, computed here by reading the file.
    (Buckets encrypted with SSE-KMS use other ETags; the sha256 kept in object metadata covers them.)
    """
    if size < threshold:
        return md5
    part = _adjusted_chunksize(chunksize, size)
    digests = []
    with open(path, "rb") as f:
        while chunk := f.read(part):
            digests.append(hashlib.md5(chunk, usedforsecurity=False).digest())
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


@dataclass
class UploadStats:
    """What :func:`upload_files` did."""

    uploaded: int = 0
    skipped: int = 0
    bytes_uploaded: int = 0
    checked_by_head: int = 0


def upload_files(client: Any, loc: S3Location, files: Sequence[tuple[Path, str, int, str, str]], *,
                 workers: int = 16, multipart_threshold: int = 8 * MIB, multipart_chunksize: int = 8 * MIB,
                 existing: dict[str, tuple[int, str]] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> UploadStats:
    """Upload files under ``loc`` concurrently, skipping those already there with the same content.

    ``files`` holds ``(local path, relpath, size, sha256, md5)`` tuples. An object is skipped when it exists with
    the same size and the ETag this upload would produce (see :func:`expected_etag`); when only the size matches
    (another tool, other part sizes, SSE-KMS) its ``sha256`` metadata is read with a HEAD request and compared.
    Everything else goes through one s3transfer :class:`~s3transfer.manager.TransferManager` with
    ``max_concurrency=workers``: many small files in parallel, and multipart uploads with parallel parts for files
    above ``multipart_threshold``. Each object gets its sha256 in ``x-amz-meta-sha256``. If the run is interrupted,
    finished objects are skipped by the next run, so it resumes where it stopped.

    Returns:
        Counts of uploaded and skipped files and bytes sent.
    """
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    if existing is None:
        existing = list_objects(client, loc)
    stats = UploadStats()
    todo = []
    maybe = []
    for path, rel, size, sha, md5 in files:
        key = loc.key(rel)
        have = existing.get(key)
        if have is None or have[0] != size:
            todo.append((path, key, size, sha))
        elif have[1] == expected_etag(path, size, md5, multipart_threshold, multipart_chunksize):
            stats.skipped += 1
        else:
            maybe.append((path, key, size, sha))
    if maybe:
        def head_sha(key: str) -> str | None:
            try:
                return client.head_object(Bucket=loc.bucket, Key=key).get("Metadata", {}).get("sha256")
            except Exception:  # noqa: BLE001 - any failure means "not known to be the same": upload it
                return None

        with ThreadPoolExecutor(max_workers=workers) as pool:
            shas = list(pool.map(lambda item: head_sha(item[1]), maybe))
        stats.checked_by_head = len(maybe)
        for item, remote_sha in zip(maybe, shas):
            if remote_sha == item[3]:
                stats.skipped += 1
            else:
                todo.append(item)
    total = stats.skipped + len(todo)
    done = stats.skipped
    if progress is not None:
        progress(done, total)
    if not todo:
        return stats
    config = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunksize,
                            max_concurrency=workers, use_threads=True)
    # The manager as a context manager cancels in-flight transfers on error (its shutdown(cancel=True) is broken
    # in s3transfer 0.19: it passes the message as the exception type).
    # At most a few transfers per worker are queued at a time, so memory stays flat for any number of files and an
    # interruption (an exception, Ctrl-C) stops within a few files; what finished is skipped by the next run.
    window = max(4, 4 * workers)
    with create_transfer_manager(client, config) as manager:
        pending: deque = deque()

        def finish_one() -> None:
            nonlocal done
            future, size = pending.popleft()
            future.result()
            stats.uploaded += 1
            stats.bytes_uploaded += size
            failpoint("data.s3.upload.done")
            done += 1
            if progress is not None:
                progress(done, total)

        for path, key, size, sha in todo:
            if len(pending) >= window:
                finish_one()
            extra = {"Metadata": {"sha256": sha}, "ContentType": _content_type(path)}
            pending.append((manager.upload(str(path), loc.bucket, key, extra_args=extra), size))
        while pending:
            finish_one()
    return stats


def _content_type(path: Path) -> str:
    return {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".json": "application/json"}.get(
        path.suffix.lower(), "application/octet-stream")


def download_prefix(client: Any, loc: S3Location, dest: Path, *, workers: int = 16,
                    progress: Callable[[int, int], None] | None = None) -> int:
    """Download every object under ``loc`` to ``dest``, keeping the key layout below the prefix.

    Returns:
        The number of objects downloaded.

    Raises:
        DataNotFoundError: the prefix holds no objects.
        InvalidURIError: an object key would land outside ``dest`` (``..`` components).
    """
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    objects = list_objects(client, loc)
    if not objects:
        raise DataNotFoundError(f"S3 prefix {loc.uri!r} holds no objects")
    strip = len(loc.prefix) + 1 if loc.prefix else 0
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with create_transfer_manager(client, TransferConfig(max_concurrency=workers, use_threads=True)) as manager:
        futures = []
        for key in sorted(objects):
            rel = key[strip:]
            if not rel or rel.endswith("/"):
                continue
            target = dest / rel
            if ".." in rel.split("/") or not target.resolve().is_relative_to(root):
                raise InvalidURIError(f"S3 object {key!r} under {loc.uri!r} would be written outside {str(dest)!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            futures.append(manager.download(loc.bucket, key, str(target)))
        for i, future in enumerate(futures, 1):
            future.result()
            if progress is not None:
                progress(i, len(futures))
    return len(futures)


def put_bytes(client: Any, loc: S3Location, relpath: str, data: bytes, content_type: str) -> None:
    """Write one small object (the manifest, the label file)."""
    client.put_object(Bucket=loc.bucket, Key=loc.key(relpath), Body=data, ContentType=content_type,
                      Metadata={"sha256": hashlib.sha256(data).hexdigest()})


def get_bytes(client: Any, loc: S3Location, relpath: str) -> bytes | None:
    """Read one object, or None if it does not exist."""
    from botocore.exceptions import ClientError

    try:
        return client.get_object(Bucket=loc.bucket, Key=loc.key(relpath))["Body"].read()
    except ClientError as exc:
        code = _client_error_code(exc)
        if code == "NoSuchBucket":
            raise DataNotFoundError(f"S3 bucket {loc.bucket!r} of {loc.uri!r} does not exist") from None
        if code in ("NoSuchKey", "404", "NotFound"):
            return None
        raise


def ensure_dir(path: str | os.PathLike[str]) -> Path:
    """Create a folder (and parents) and return it."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p

"""The :class:`DatasetStager`: one call from a zip, URL, folder or S3 prefix to validated splits on disk or in S3."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dogclf._faults import failpoint
from dogclf._io import atomic_write, exchange_paths
from dogclf.data._staging_config import (
    DEFAULT_URL,
    LABELS_NAME,
    StagedDataset,
    StagerConfig,
    _join,
)
from dogclf.data._work import work_folder
from dogclf.data.archive import safe_extract, zip_fingerprint
from dogclf.data.duplicates import apply_policies
from dogclf.data.fetch import ProgressCallback, download, sha256_file
from dogclf.data.manifest import MANIFEST_NAME, Manifest, ManifestEntry
from dogclf.data.s3 import S3Location, parse_s3_uri
from dogclf.data.validate import (
    check_files,
    find_dataset_root,
    match_labels,
    scan_layout,
)
from dogclf.errors import (
    ChecksumMismatchError,
    ConfigError,
    CorruptImageError,
    DataError,
    DataNotFoundError,
    NotFittedError,
)
from dogclf.labels import BreedLabels

__all__ = ["DatasetStager", "StagerConfig", "StagedDataset", "DEFAULT_URL", "LABELS_NAME"]

log = logging.getLogger(__name__)


def _tree_fingerprint(root: Path, splits: Sequence[str]) -> str:
    """Cheap fingerprint of a folder dataset: relative paths, sizes and modification times of the split trees."""
    h = hashlib.sha256()
    for split in splits:
        base = root / split
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for fname in sorted(filenames):
                st = os.stat(os.path.join(dirpath, fname))
                rel = os.path.relpath(os.path.join(dirpath, fname), root)
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()

class DatasetStager:
    """Stage an image-classification dataset in the dogImages layout, validated, with a manifest.

    One :meth:`run` call gets the data (download, extract, list an S3 prefix), checks it (three splits, same
    classes, parseable ``NNN.Breed`` folders, every image decodes, the expected label set), writes a JSON
    manifest with every file's size and sha256, and puts the dataset at its target: a local folder (written
    beside it and renamed into place) or an S3 prefix (concurrent, multipart, skipping what is already there,
    with the manifest uploaded last as the mark of completion). Staging the same source to the same target again
    is a no-op.

    Args:
        source: See :class:`StagerConfig`; None stages :data:`DEFAULT_URL`.
        target: See :class:`StagerConfig`; None stages into the local backend's data folder.
        config: A ready :class:`StagerConfig` instead of ``source``/``target``/``**options``.
        progress: Called as ``progress(phase, done, total)`` while working (phases ``"download"``, ``"extract"``,
            ``"validate"``, ``"copy"``, ``"cache"``, ``"upload"``).
        s3_client: A boto3 S3 client to use (default: one made from the environment, sized for ``workers``).
        **options: Any other :class:`StagerConfig` field (``labels``, ``sha256``, ``on_corrupt``, ...).

    After :meth:`run`, the results are in :attr:`result_` (the :class:`StagedDataset`), :attr:`manifest_`,
    :attr:`labels_`, :attr:`counts_` and :attr:`skipped_`; reading them earlier raises
    :class:`~dogclf.errors.NotFittedError`.

    Example:
        >>> import tempfile, os
        >>> from dogclf.data import make_synthetic_dataset
        >>> tmp = tempfile.mkdtemp()
        >>> src = make_synthetic_dataset(os.path.join(tmp, "src"), n_classes=2, per_class=1, image_size=16)
        >>> staged = DatasetStager(src, os.path.join(tmp, "staged")).run()
        >>> sorted(staged.channels), staged.n_images
        (['test', 'train', 'valid'], 6)
    """

    def __init__(self, source: str | os.PathLike[str] | None = None, target: str | os.PathLike[str] | None = None,
                 *, config: StagerConfig | None = None, progress: ProgressCallback | None = None,
                 s3_client: Any = None, **options: Any) -> None:
        if config is not None and (source is not None or target is not None or options):
            raise ConfigError("pass either config= or source/target/options, not both")
        self.config = config if config is not None else StagerConfig(source=source, target=target, **options)
        self.progress = progress
        self.s3_client = s3_client

    def __repr__(self) -> str:
        return f"DatasetStager(source={self.config.source!r}, target={self.config.target!r})"

    # -- results ----------------------------------------------------------------------------------------------
    def _result(self) -> StagedDataset:
        try:
            return self.__dict__["_result_"]
        except KeyError:
            raise NotFittedError("DatasetStager has not run yet; call .run() first") from None

    @property
    def result_(self) -> StagedDataset:
        """The staged dataset (raises :class:`~dogclf.errors.NotFittedError` before :meth:`run`)."""
        return self._result()

    @property
    def manifest_(self) -> Manifest:
        """The manifest of the staged dataset."""
        self._result()
        return self.__dict__["_manifest_"]

    @property
    def labels_(self) -> BreedLabels:
        """The staged dataset's classes."""
        return self._result().labels

    @property
    def counts_(self) -> Mapping[str, Mapping[str, int]]:
        """Images per split and class folder."""
        return self._result().counts

    @property
    def skipped_(self) -> tuple[str, ...]:
        """Relative paths of images left out as corrupt."""
        return self._result().skipped

    # -- work -------------------------------------------------------------------------------------------------
    def stage(self) -> StagedDataset:
        """Alias of :meth:`run`."""
        return self.run()

    def run(self) -> StagedDataset:
        """Stage the dataset; see the class description.

        Returns:
            The :class:`StagedDataset`, also kept in :attr:`result_`.

        Raises:
            DataNotFoundError: the source path, URL or S3 prefix (or the target bucket) does not exist.
            InvalidURIError: a malformed URI.
            UnsafeArchiveError: the zip holds ``..``/absolute paths, links, or exceeds the size/entry limits.
            ChecksumMismatchError: the archive's sha256 differs from ``sha256``.
            DatasetLayoutError: a split is missing, classes differ between splits, folder names do not parse.
            LabelMismatchError: the classes differ from ``labels``.
            CorruptImageError: images do not decode and ``on_corrupt="fail"``; ``.paths`` lists them all.
            DownloadError: the download failed for good.
        """
        cfg = self.config
        started = time.perf_counter()
        target = cfg.resolved_target()
        target_loc = parse_s3_uri(target) if target.startswith("s3://") else None
        kind = cfg.source_kind
        client = None
        if kind == "s3" or target_loc is not None:
            client = self._client()

        # 1. A cheap look at the source, and at what the target already holds.
        source_path = None
        if kind == "path":
            source_path = Path(cfg.source).expanduser().absolute()
            if not source_path.exists():
                raise DataNotFoundError(f"dataset source {str(source_path)!r} does not exist")
        fingerprint = self._fingerprint(kind, source_path, client)
        source_uri = str(source_path) if source_path is not None else cfg.source
        source_info = {"uri": source_uri, "fingerprint": fingerprint}
        if not cfg.force and fingerprint is not None:
            done = self._already_staged(target, target_loc, client, source_info)
            if done is not None:
                manifest, existing = done
                log.info("%s is already staged at %s; nothing to do", source_uri, target)
                return self._finish(manifest, target, noop=True, started=started,
                                    stats={"files": len(manifest.files), "bytes": manifest.total_bytes,
                                           "uploaded": 0, "skipped_existing": existing, "bytes_uploaded": 0})

        if target_loc is not None:
            from dogclf.data.s3 import check_bucket

            check_bucket(client, target_loc)

        # 2. Get the data onto local disk, in a work folder next to a local target (so files move by rename).
        #    The work folder is locked while in use; those of earlier runs that were killed are removed first.
        work_parent = Path(target).parent if target_loc is None else Path(cfg.download_dir or self._downloads())
        with work_folder(work_parent, cfg.name) as work:
            data_root, owned = self._materialise(kind, source_path, client, work)
            manifest = self._validate(data_root, source_info)
            if target_loc is None:
                stats = self._write_local(manifest, data_root, owned, Path(target), work)
            else:
                stats = self._write_s3(manifest, data_root, client, target_loc, work)
        return self._finish(manifest, target, noop=False, started=started, stats=stats)

    # -- steps ------------------------------------------------------------------------------------------------
    def _client(self) -> Any:
        if self.s3_client is not None:
            return self.s3_client
        from dogclf.data.s3 import make_client

        return make_client(self.config.workers, self.config.region)  # cached per settings and environment

    def _downloads(self) -> Path:
        if self.config.download_dir:
            return Path(self.config.download_dir)
        from dogclf._paths import home

        return home() / "downloads"

    def _report(self, phase: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(phase, done, total)

    def _fingerprint(self, kind: str, source_path: Path | None, client: Any) -> str | None:
        cfg = self.config
        if kind == "url":
            # a URL's content is identified by its expected sha256 when given, else by the URL itself
            return f"url:{cfg.source}|sha256:{cfg.sha256}"
        if kind == "s3":
            from dogclf.data.s3 import list_objects

            objects = list_objects(client, parse_s3_uri(cfg.source))
            if not objects:
                raise DataNotFoundError(f"S3 prefix {cfg.source!r} holds no objects")
            h = hashlib.sha256()
            for key in sorted(objects):
                h.update(f"{key}\0{objects[key][0]}\0{objects[key][1]}\n".encode())
            return "s3:" + h.hexdigest()
        assert source_path is not None
        if source_path.is_file():
            # with an expected sha256, a different one must not pass as "already staged"
            return "zip:" + zip_fingerprint(source_path) + (f"|sha256:{cfg.sha256}" if cfg.sha256 else "")
        try:
            root = find_dataset_root(source_path, cfg.splits)
        except DataError:
            return None  # validation will report the layout problem properly
        return "tree:" + _tree_fingerprint(root, cfg.splits)

    def _already_staged(self, target: str, target_loc: S3Location | None, client: Any,
                        source_info: dict[str, Any]) -> tuple[Manifest, int] | None:
        """The target's manifest and file count, if it records this source and options and its files are intact."""
        try:
            if target_loc is None:
                path = Path(target) / MANIFEST_NAME
                if not path.is_file():
                    return None
                manifest = Manifest.load(path)
            else:
                from dogclf.data.s3 import get_bytes

                raw = get_bytes(client, target_loc, MANIFEST_NAME)
                if raw is None:
                    return None
                manifest = Manifest.from_json(raw)
        except DataNotFoundError:
            raise
        except (ConfigError, KeyError, TypeError, OSError) as exc:
            log.warning("ignoring unreadable manifest at %s: %s", target, exc)
            return None
        recorded = {k: manifest.source.get(k) for k in ("uri", "fingerprint")}
        if recorded != source_info or dict(manifest.options) != self.config.options():
            return None
        expected = {e.relpath: e.size for e in manifest.files}
        if self.config.cache_short_side:
            expected.update(manifest.source.get("cache_files", {}))
        if target_loc is None:
            root = Path(target)
            for rel, size in expected.items():
                try:
                    if (root / rel).stat().st_size != size:
                        return None
                except OSError:
                    return None
        else:
            from dogclf.data.s3 import list_objects

            objects = list_objects(client, target_loc)
            for rel, size in expected.items():
                have = objects.get(target_loc.key(rel))
                if have is None or have[0] != size:
                    return None
        return manifest, len(expected)

    def _materialise(self, kind: str, source_path: Path | None, client: Any, work: Path) -> tuple[Path, bool]:
        """A local folder holding the dataset, and whether it is ours to move files out of."""
        cfg = self.config
        if kind == "url":
            name = Path(urlsplit(cfg.source).path).name or f"{cfg.name}.zip"
            archive = download(cfg.source, self._downloads() / name, sha256=cfg.sha256, progress=self.progress,
                               retries=cfg.retries, timeout=cfg.timeout)
            return self._extract(archive, work), True
        if kind == "s3":
            from dogclf.data.s3 import download_prefix

            dest = work / "s3-source"
            download_prefix(client, parse_s3_uri(cfg.source), dest, workers=cfg.workers,
                            progress=lambda d, t: self._report("download", d, t))
            return find_dataset_root(dest, cfg.splits), True
        assert source_path is not None
        if source_path.is_file():
            if cfg.sha256 is not None:
                actual = sha256_file(source_path)
                if actual != cfg.sha256:
                    raise ChecksumMismatchError(
                        f"archive {str(source_path)!r} has sha256 {actual}, expected {cfg.sha256}")
            return self._extract(source_path, work), True
        return find_dataset_root(source_path, cfg.splits), False

    def _extract(self, archive: Path, work: Path) -> Path:
        cfg = self.config
        dest = safe_extract(archive, work / "extracted", max_bytes=cfg.max_archive_bytes,
                            max_entries=cfg.max_archive_entries, progress=lambda d, t: self._report("extract", d, t))
        return find_dataset_root(dest, cfg.splits)

    def _validate(self, data_root: Path, source_info: dict[str, Any]) -> Manifest:
        cfg = self.config
        labels, layout = scan_layout(data_root, cfg.splits)
        if cfg.labels is not None:
            match_labels(labels, cfg.labels, str(data_root))
            labels = BreedLabels(labels.names, name=cfg.labels.name)
        items = [(split, cls, path) for split in cfg.splits for cls, paths in layout[split].items() for path in paths]
        checks = check_files([p for _, _, p in items], workers=cfg.workers,
                             progress=lambda d, t: self._report("validate", d, t))
        bad = [c for c in checks if c.error]
        if bad and cfg.on_corrupt == "fail":
            listed = "; ".join(f"{c.path} ({c.error})" for c in bad[:10])
            more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
            raise CorruptImageError(
                f"{len(bad)} image(s) under {str(data_root)!r} do not decode: {listed}{more}; "
                "pass on_corrupt='skip' to stage without them", paths=[str(c.path) for c in bad])
        entries, skipped = [], []
        for (split, cls, path), check in zip(items, checks):
            rel = path.relative_to(data_root).as_posix()
            if check.error:
                log.warning("skipping corrupt image %s: %s", path, check.error)
                skipped.append(rel)
                continue
            entries.append(ManifestEntry(split, cls, rel, check.size, check.sha256, check.md5, check.phash))
        for split in cfg.splits:
            if not any(e.split == split for e in entries):
                raise CorruptImageError(f"every image of split {str(data_root / split)!r} is corrupt",
                                        paths=[str(data_root / s) for s in skipped if s.startswith(split + "/")])
        entries, duplicates = apply_policies(
            entries, cfg.splits, on_duplicate=cfg.on_duplicate, on_duplicate_in_split=cfg.on_duplicate_in_split,
            on_near_duplicate=cfg.on_near_duplicate, near_distance=cfg.near_duplicate_distance, where=str(data_root))
        return Manifest(name=cfg.name, labels=labels, files=Manifest.sorted_entries(entries), source=source_info,
                        skipped=tuple(sorted(skipped)), options=cfg.options(), duplicates=tuple(duplicates))

    def _cache(self, manifest: Manifest, data_root: Path, dest: Path) -> tuple[int, dict[str, int]]:
        from dogclf.data.cache import build_cache

        cfg = self.config
        files = [(data_root / e.relpath, str(Path(e.relpath).with_suffix(".jpg"))) for e in manifest.files]
        total = build_cache(files, dest, cfg.cache_short_side, quality=cfg.cache_quality, workers=cfg.workers,
                            progress=lambda d, t: self._report("cache", d, t))
        prefix = f"cache-{cfg.cache_short_side}"
        sizes = {f"{prefix}/{rel}": (dest / rel).stat().st_size for _, rel in files}
        return total, sizes

    def _write_local(self, manifest: Manifest, data_root: Path, owned: bool, target: Path, work: Path) -> dict:
        cfg = self.config
        stats: dict[str, Any] = {"files": len(manifest.files), "bytes": manifest.total_bytes}
        if data_root.resolve() == target.resolve():
            # staged in place: validate, then record the manifest (and the cache) beside the splits
            if any(g.action == "kept-first" for g in manifest.duplicates):
                raise DataError(f"cannot leave duplicate copies out of {str(target)!r} when staging it in place (the "
                                "source is the target, and its files are never deleted); stage to another target")
            if cfg.cache_short_side:
                cache_tmp = work / "cache"
                stats["cache_bytes"], sizes = self._cache(manifest, data_root, cache_tmp)
                manifest = _with_cache(manifest, sizes)
                final = target / f"cache-{cfg.cache_short_side}"
                shutil.rmtree(final, ignore_errors=True)
                os.replace(cache_tmp, final)
            atomic_write(target / LABELS_NAME, manifest.labels.to_json())
            manifest.save(target / MANIFEST_NAME)
            self.__dict__["_manifest_"] = manifest
            return stats
        if target.exists() and not target.is_dir():
            raise DataError(f"target {str(target)!r} exists and is not a folder")
        if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST_NAME).is_file():
            raise DataError(f"target {str(target)!r} is a non-empty folder that is not a staged dataset "
                            f"(no {MANIFEST_NAME}); refusing to replace it")
        stage = work / "dataset"
        stage.mkdir()
        rels = [e.relpath for e in manifest.files]
        for d in sorted({str(Path(r).parent) for r in rels}):
            (stage / d).mkdir(parents=True, exist_ok=True)
        if owned:
            for i, rel in enumerate(rels, 1):
                os.replace(data_root / rel, stage / rel)
            src_root = stage
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
                for i, _ in enumerate(pool.map(lambda r: shutil.copy2(data_root / r, stage / r), rels), 1):
                    if i % 256 == 0 or i == len(rels):
                        self._report("copy", i, len(rels))
            src_root = stage
        if cfg.cache_short_side:
            stats["cache_bytes"], sizes = self._cache(manifest, src_root, stage / f"cache-{cfg.cache_short_side}")
            manifest = _with_cache(manifest, sizes)
        atomic_write(stage / LABELS_NAME, manifest.labels.to_json())
        manifest.save(stage / MANIFEST_NAME)
        # swap into place: in one atomic exchange where the system has it (the old dataset, if any, ends up in the
        # work folder), else the old one is moved aside first; either way the target is never half-written
        target.parent.mkdir(parents=True, exist_ok=True)
        failpoint("data.stager.swap")
        if not target.exists():
            os.replace(stage, target)
        elif not exchange_paths(stage, target):
            old = work / f"previous-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            try:
                os.replace(stage, target)
            except BaseException:
                os.replace(old, target)
                raise
        self.__dict__["_manifest_"] = manifest
        return stats

    def _write_s3(self, manifest: Manifest, data_root: Path, client: Any, loc: S3Location, work: Path) -> dict:
        from dogclf.data.s3 import list_objects, put_bytes, upload_files

        cfg = self.config
        existing = list_objects(client, loc)
        files = [(data_root / e.relpath, e.relpath, e.size, e.sha256, e.md5) for e in manifest.files]
        stats: dict[str, Any] = {"files": len(manifest.files), "bytes": manifest.total_bytes}
        if cfg.cache_short_side:
            cache_dir = work / "cache"
            stats["cache_bytes"], sizes = self._cache(manifest, data_root, cache_dir)
            manifest = _with_cache(manifest, sizes)
            prefix = f"cache-{cfg.cache_short_side}/"
            for rel in sizes:
                path = cache_dir / rel[len(prefix):]
                data = path.read_bytes()
                files.append((path, rel, len(data), hashlib.sha256(data).hexdigest(),
                              hashlib.md5(data, usedforsecurity=False).hexdigest()))
        up = upload_files(client, loc, files, workers=cfg.workers, multipart_threshold=cfg.multipart_threshold,
                          multipart_chunksize=cfg.multipart_chunksize, existing=existing,
                          progress=lambda d, t: self._report("upload", d, t))
        known = {loc.key(f[1]) for f in files} | {loc.key(MANIFEST_NAME), loc.key(LABELS_NAME)}
        stale = [k for k in existing if k not in known]
        if stale:
            log.warning("%d objects under %s are not part of this dataset (e.g. %s); they were left alone",
                        len(stale), loc.uri, stale[0])
        # the manifest goes last: its presence marks the prefix as a complete dataset
        put_bytes(client, loc, LABELS_NAME, manifest.labels.to_json().encode(), "application/json")
        put_bytes(client, loc, MANIFEST_NAME, manifest.to_json().encode(), "application/json")
        self.__dict__["_manifest_"] = manifest
        stats.update(uploaded=up.uploaded, skipped_existing=up.skipped, bytes_uploaded=up.bytes_uploaded)
        return stats

    def _finish(self, manifest: Manifest, target: str, *, noop: bool, started: float,
                stats: dict[str, Any]) -> StagedDataset:
        cfg = self.config
        if noop:
            self.__dict__["_manifest_"] = manifest
        manifest = self.__dict__["_manifest_"]
        stats = dict(stats, seconds=time.perf_counter() - started)
        result = StagedDataset(
            uri=target,
            channels={split: _join(target, split) for split in cfg.splits},
            labels=manifest.labels,
            counts=manifest.counts,
            manifest_uri=_join(target, MANIFEST_NAME),
            skipped=manifest.skipped,
            duplicates=manifest.duplicates,
            noop=noop,
            stats=stats,
            cache_uri=_join(target, f"cache-{cfg.cache_short_side}") if cfg.cache_short_side else None,
        )
        self.__dict__["_result_"] = result
        log.info("staged %d images (%s) at %s in %.2fs%s", result.n_images, manifest.split_counts(), target,
                 stats["seconds"], " (already staged)" if noop else "")
        return result


def _with_cache(manifest: Manifest, sizes: dict[str, int]) -> Manifest:
    source = dict(manifest.source, cache_files=sizes)
    return Manifest(name=manifest.name, labels=manifest.labels, files=manifest.files, source=source,
                    skipped=manifest.skipped, options=manifest.options, created=manifest.created,
                    duplicates=manifest.duplicates)

"""Duplicate photos in a dataset: exact copies (same sha256, from the manifest) and near copies (a perceptual hash).

The same photo in ``train`` and ``test`` silently inflates test accuracy; copies within a split over-weight a photo.
:func:`find_duplicates` groups them; :func:`apply_policies` fails, warns or keeps the first copy of each group, as
:class:`~dogclf.data.DatasetStager` is told (``on_duplicate`` for exact copies across splits, refused by default;
``on_duplicate_in_split`` and ``on_near_duplicate``, reported by default).

The perceptual hash (:func:`perceptual_hash`) is a 63-bit pHash: the image in grey, resized to 32x32, its 2-D DCT,
and the signs of the 8x8 lowest frequencies (DC left out) against their median. Resized (0.25x to 1.5x) and
re-encoded copies of the dogs10 and pet_images photos stay within 10 bits of their original (8 down to 0.4x), while
distinct photos among them are at least 12 bits apart, hence the default :data:`NEAR_DUPLICATE_DISTANCE` of 10.
It catches resized and re-encoded copies, not crops; photos of plain synthetic patterns (stripes of one
orientation) are near duplicates of each other by this measure.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dogclf.errors import ConfigError, DuplicateImagesError

__all__ = ["DUPLICATE_POLICIES", "HASH_DECODE_SIZE", "NEAR_DUPLICATE_DISTANCE", "DuplicateGroup", "apply_policies",
           "find_duplicates", "hamming", "hash_image_bytes", "perceptual_hash"]

log = logging.getLogger(__name__)

DUPLICATE_POLICIES = ("fail", "warn", "keep-first")
"""What to do with a duplicate group: raise, log a warning and keep every copy, or keep only the first copy
(in split order, then path order: a ``train`` copy is kept over a ``test`` one)."""

NEAR_DUPLICATE_DISTANCE = 10
"""Default largest Hamming distance (of 63 bits) between the perceptual hashes of near duplicates."""

HASH_DECODE_SIZE = 64
"""JPEGs are hashed from a reduced-scale decode (``draft``) keeping at least this many pixels on each side (and at
most 1/8 scale): cheap for large photos, and close enough to a full decode (a coarser one moves hashes by up to
8 bits)."""

_SIZE = 32


def _dct_matrix() -> Any:
    import numpy as np

    k, n = np.arange(_SIZE)[:, None], np.arange(_SIZE)[None, :]
    return np.cos(np.pi * (2 * n + 1) * k / (2 * _SIZE))


def perceptual_hash(image: Any) -> str:
    """The 63-bit pHash of a PIL image, as 16 hex digits.

    Example:
        >>> from PIL import Image
        >>> a = Image.radial_gradient("L").resize((200, 150))
        >>> hamming(perceptual_hash(a), perceptual_hash(a.resize((90, 70)))) <= NEAR_DUPLICATE_DISTANCE
        True
    """
    import numpy as np
    from PIL import Image

    grey = np.asarray(image.convert("L").resize((_SIZE, _SIZE), Image.Resampling.BOX), dtype=np.float64)
    dct = _dct_matrix()
    low = (dct @ grey @ dct.T)[:8, :8].ravel()[1:]
    bits = low > np.median(low)
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def hash_image_bytes(data: bytes) -> str:
    """:func:`perceptual_hash` of an encoded image, decoded as :class:`~dogclf.data.DatasetStager` decodes it."""
    from dogclf.images import decode_image

    return perceptual_hash(decode_image(data, draft_size=HASH_DECODE_SIZE))


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hashes from :func:`perceptual_hash`."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


@dataclass(frozen=True)
class DuplicateGroup:
    """Files that hold the same photo.

    Attributes:
        kind: ``"exact"`` (same bytes) or ``"near"`` (perceptual hashes within the distance).
        files: Relative paths, in split order then path order; the first is the one ``keep-first`` keeps.
        splits: The splits the files are in (in split order); more than one means the photo crosses splits.
        distance: For near groups, the largest Hamming distance from the first file's hash.
        action: What was done: ``"failed"``, ``"warned"`` (all kept) or ``"kept-first"`` (the others left out).
    """

    kind: str
    files: tuple[str, ...]
    splits: tuple[str, ...]
    distance: int = 0
    action: str = "warned"

    @property
    def crosses_splits(self) -> bool:
        """Whether the copies are in more than one split."""
        return len(self.splits) > 1

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (a manifest's ``duplicates`` entry)."""
        return {"kind": self.kind, "files": list(self.files), "splits": list(self.splits), "distance": self.distance,
                "action": self.action}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DuplicateGroup:
        """Inverse of :meth:`to_dict`."""
        return cls(data["kind"], tuple(data["files"]), tuple(data["splits"]), int(data.get("distance", 0)),
                   data.get("action", "warned"))

    def describe(self) -> str:
        """One line: ``"train/001.Beagle/a.jpg = test/001.Beagle/b.jpg"`` (``~`` for near copies)."""
        sep = " = " if self.kind == "exact" else f" ~ (distance <= {self.distance}) "
        return sep.join(self.files)


def _order(entries: Sequence[Any], splits: Sequence[str]) -> list[Any]:
    rank = {s: i for i, s in enumerate(splits)}
    return sorted(entries, key=lambda e: (rank.get(e.split, len(rank)), e.relpath))


def _group(kind: str, members: list[Any], splits: Sequence[str], distance: int = 0) -> DuplicateGroup:
    present = [s for s in splits if any(e.split == s for e in members)]
    return DuplicateGroup(kind, tuple(e.relpath for e in members), tuple(present), distance)


def find_duplicates(entries: Sequence[Any], splits: Sequence[str], *,
                    near_distance: int | None = NEAR_DUPLICATE_DISTANCE) -> tuple[list[DuplicateGroup],
                                                                               list[DuplicateGroup]]:
    """Group exact and near duplicates among manifest entries.

    Args:
        entries: :class:`~dogclf.data.ManifestEntry`-like objects (``split``, ``relpath``, ``sha256``, ``phash``).
        splits: The split order (``("train", "valid", "test")``): the first copy is the earliest split's.
        near_distance: Largest Hamming distance of near duplicates; ``None`` looks for exact copies only. Pairs
            with the same sha256 are exact, never near; entries without a ``phash`` are left out.

    Returns:
        The exact groups and the near groups (the near groups over the entries as given: call it again after
        dropping exact copies to see only the near copies left).
    """
    by_sha: dict[str, list[Any]] = {}
    for e in entries:
        by_sha.setdefault(e.sha256, []).append(e)
    exact = [_group("exact", _order(m, splits), splits) for m in by_sha.values() if len(m) > 1]
    near: list[DuplicateGroup] = []
    hashed = [e for e in entries if getattr(e, "phash", "")]
    if near_distance is not None and len(hashed) > 1:
        near = _near_groups(_order(hashed, splits), splits, near_distance)
    exact.sort(key=lambda g: g.files)
    return exact, near


def _near_groups(entries: list[Any], splits: Sequence[str], limit: int) -> list[DuplicateGroup]:
    """Greedy star clusters: in order, each file not yet grouped collects the later ungrouped files within ``limit``
    bits of it (and not of the same bytes), so every member is within ``limit`` of its group's first file."""
    import numpy as np

    hashes = np.array([int(e.phash, 16) for e in entries], dtype=np.uint64)
    free = np.ones(len(entries), dtype=bool)
    groups = []
    for i in range(len(entries)):
        if not free[i]:
            continue
        free[i] = False
        dist = np.bitwise_count(hashes ^ hashes[i])
        close = np.nonzero(free & (dist <= limit))[0]
        members = [int(c) for c in close if entries[c].sha256 != entries[i].sha256]
        if members:
            free[members] = False
            far = int(dist[members].max())
            groups.append(_group("near", [entries[i], *(entries[c] for c in members)], splits, far))
    return sorted(groups, key=lambda g: g.files)


def _check_policy(name: str, value: str) -> None:
    if value not in DUPLICATE_POLICIES:
        raise ConfigError(f"{name} must be one of {DUPLICATE_POLICIES}, got {value!r}")


def _listing(groups: list[DuplicateGroup], limit: int = 10) -> str:
    more = f"; and {len(groups) - limit} more group(s)" if len(groups) > limit else ""
    return "; ".join(g.describe() for g in groups[:limit]) + more


def apply_policies(entries: Sequence[Any], splits: Sequence[str], *, on_duplicate: str = "fail",
                   on_duplicate_in_split: str = "warn", on_near_duplicate: str = "warn",
                   near_distance: int | None = NEAR_DUPLICATE_DISTANCE, where: str = "the dataset"
                   ) -> tuple[list[Any], list[DuplicateGroup]]:
    """Find duplicates and act on them: exact copies first, then near copies among what is left.

    Args:
        entries: Manifest entries (see :func:`find_duplicates`).
        splits: The split order.
        on_duplicate: Policy for exact copies in more than one split (a group that crosses splits is governed by
            this policy, all its copies).
        on_duplicate_in_split: Policy for exact copies within one split.
        on_near_duplicate: Policy for near copies (within or across splits).
        near_distance: See :func:`find_duplicates`.
        where: The dataset, for messages.

    Returns:
        The entries kept (in the order given) and every group found, with the action taken.

    Raises:
        DuplicateImagesError: a group whose policy is ``"fail"``; the message lists the paths (every failing
            group is in its ``groups``).
        ConfigError: an unknown policy.
    """
    for name, value in (("on_duplicate", on_duplicate), ("on_duplicate_in_split", on_duplicate_in_split),
                        ("on_near_duplicate", on_near_duplicate)):
        _check_policy(name, value)
    exact, _ = find_duplicates(entries, splits, near_distance=None)
    report: list[DuplicateGroup] = []
    failing: list[DuplicateGroup] = []
    dropped: set[str] = set()
    for g in exact:
        policy = on_duplicate if g.crosses_splits else on_duplicate_in_split
        report.append(_acted(g, policy, dropped, failing))
    if failing:
        raise DuplicateImagesError(
            f"{len(failing)} photo(s) in {where} are stored more than once where that is refused "
            f"({_what(failing)}): {_listing(failing)}. A photo in two splits inflates the test accuracy; remove the "
            "copies, or pass on_duplicate='keep-first' (keeps the earliest split's copy) or 'warn'",
            groups=[list(g.files) for g in failing])
    kept = [e for e in entries if e.relpath not in dropped]
    if near_distance is not None:
        _, near = find_duplicates(kept, splits, near_distance=near_distance)
        for g in near:
            report.append(_acted(g, on_near_duplicate, dropped, failing))
        if failing:
            raise DuplicateImagesError(
                f"{len(failing)} group(s) of near-duplicate photos (resized or re-encoded copies) in {where}: "
                f"{_listing(failing)}; remove them, or pass on_near_duplicate='keep-first' or 'warn'",
                groups=[list(g.files) for g in failing])
        kept = [e for e in entries if e.relpath not in dropped]
    before = {(e.split, e.cls) for e in entries}
    emptied = sorted(before - {(e.split, e.cls) for e in kept})
    if emptied:
        log.warning("leaving duplicate copies out of %s leaves no photo of %s", where,
                    ", ".join(f"{cls} in {split}" for split, cls in emptied))
    kinds: dict[tuple[str, bool, str], list[DuplicateGroup]] = {}
    for g in report:
        kinds.setdefault((g.kind, g.crosses_splits, g.action), []).append(g)
    for (kind, cross, action), groups in sorted(kinds.items()):
        what = "every copy kept" if action == "warned" else "only the first copy kept"
        log.warning("%d group(s) of %s duplicate photos %s in %s (%s): %s", len(groups), kind,
                    "across splits" if cross else "within a split", where, what, _listing(groups, 5))
    return kept, report


def _acted(group: DuplicateGroup, policy: str, dropped: set[str], failing: list[DuplicateGroup]) -> DuplicateGroup:
    action = {"fail": "failed", "warn": "warned", "keep-first": "kept-first"}[policy]
    done = DuplicateGroup(group.kind, group.files, group.splits, group.distance, action)
    if policy == "fail":
        failing.append(done)
    elif policy == "keep-first":
        dropped.update(group.files[1:])
    return done


def _what(groups: list[DuplicateGroup]) -> str:
    cross = sum(g.crosses_splits for g in groups)
    parts = [f"{cross} across splits"] if cross else []
    if len(groups) - cross:
        parts.append(f"{len(groups) - cross} within a split")
    return ", ".join(parts)

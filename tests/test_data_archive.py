"""Safe zip extraction: zip-slip, absolute paths, links, zip bombs, one-folder-deep datasets."""

from __future__ import annotations

import os
import stat
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dogclf.data.archive import check_archive, safe_extract, zip_fingerprint
from dogclf.errors import DataError, DataNotFoundError, UnsafeArchiveError


def _zip(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            if isinstance(data, zipfile.ZipInfo):
                zf.writestr(data, b"target")
            else:
                zf.writestr(name, data)
    return path


def _symlink_info(name):
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("name", ["../evil.jpg", "train/../../evil.jpg", "/etc/evil.jpg", "C:/evil.jpg",
                                  "..\\evil.jpg", "train/001.A/../../../x"])
def test_zip_slip_and_absolute_paths_are_refused_before_writing(tmp_path, name):
    archive = _zip(tmp_path / "bad.zip", [("train/001.A/ok.jpg", b"x"), (name, b"evil")])
    with pytest.raises(UnsafeArchiveError) as err:
        safe_extract(archive, tmp_path / "out")
    assert str(archive) in str(err.value) and repr(name) in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["bad.zip"]  # nothing written, not even a temp folder
    assert not (tmp_path.parent / "evil.jpg").exists()


def test_symlinks_are_refused(tmp_path):
    archive = _zip(tmp_path / "link.zip", [("train/001.A/ok.jpg", b"x"),
                                          ("train/001.A/link.jpg", _symlink_info("train/001.A/link.jpg"))])
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_size_and_entry_limits_stop_zip_bombs(tmp_path):
    archive = _zip(tmp_path / "bomb.zip", [(f"f{i}.bin", b"\0" * 1_000_000) for i in range(5)])
    assert os.path.getsize(archive) < 50_000  # highly compressed
    assert check_archive(archive) == (5, 5_000_000)
    with pytest.raises(UnsafeArchiveError, match="max_bytes"):
        safe_extract(archive, tmp_path / "out", max_bytes=4_000_000)
    with pytest.raises(UnsafeArchiveError, match="5 members.*max_entries"):
        safe_extract(archive, tmp_path / "out", max_entries=4)
    assert not (tmp_path / "out").exists()
    safe_extract(archive, tmp_path / "out", max_bytes=5_000_000, max_entries=5)
    assert sorted(os.listdir(tmp_path / "out")) == [f"f{i}.bin" for i in range(5)]


def test_headers_that_understate_sizes_still_cannot_inflate_past_the_limit(tmp_path):
    archive = _zip(tmp_path / "liar.zip", [("big.bin", b"\0" * 2_000_000)])
    raw = bytearray(archive.read_bytes())
    # rewrite the central directory's uncompressed size (offset 24 of the record) to claim 10 bytes
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 24:cd + 28] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(raw))
    assert check_archive(archive, max_bytes=1000)[1] == 10
    with pytest.raises((UnsafeArchiveError, DataError)):
        safe_extract(archive, tmp_path / "out", max_bytes=1000)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("members", [[("a", b"1"), ("a/b", b"2")], [("a/b", b"2"), ("a", b"1")],
                                     [("x.jpg", b"1"), ("x.jpg", b"2")]])
def test_conflicting_members_are_refused_cleanly(tmp_path, members):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        archive = _zip(tmp_path / "c.zip", members)
    with pytest.raises(UnsafeArchiveError, match="c.zip"):
        safe_extract(archive, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["c.zip"]


def test_not_a_zip_missing_archive_and_existing_target(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"definitely not a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        safe_extract(tmp_path / "x.zip", tmp_path / "out")
    with pytest.raises(DataNotFoundError, match="missing.zip"):
        safe_extract(tmp_path / "missing.zip", tmp_path / "out")
    good = _zip(tmp_path / "g.zip", [("a.txt", b"a")])
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match="already exists"):
        safe_extract(good, tmp_path / "out")


def test_macos_resource_forks_are_dropped_and_fingerprint_tracks_content(tmp_path):
    a = _zip(tmp_path / "a.zip", [("dogImages/train/001.A/x.jpg", b"1"), ("__MACOSX/dogImages/._x.jpg", b"r")])
    out = safe_extract(a, tmp_path / "out")
    assert sorted(os.listdir(out)) == ["dogImages"]
    b = _zip(tmp_path / "b.zip", [("dogImages/train/001.A/x.jpg", b"1"), ("__MACOSX/dogImages/._x.jpg", b"r")])
    c = _zip(tmp_path / "c.zip", [("dogImages/train/001.A/x.jpg", b"2"), ("__MACOSX/dogImages/._x.jpg", b"r")])
    assert zip_fingerprint(a) == zip_fingerprint(b) != zip_fingerprint(c)


_segment = st.text(alphabet=st.sampled_from("ab._-/\\"), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(_segment, min_size=1, max_size=4, unique=True))
def test_whatever_the_member_names_nothing_lands_outside_the_target(tmp_path_factory, names):
    base = tmp_path_factory.mktemp("hyp")
    try:
        archive = _zip(base / "h.zip", [(n, b"data") for n in names])
    except (ValueError, OSError):
        return
    dest = base / "box" / "out"
    try:
        safe_extract(archive, dest)
    except DataError:
        assert not dest.exists()
    for dirpath, _, files in os.walk(base):
        for f in files:
            full = os.path.realpath(os.path.join(dirpath, f))
            assert full == str((base / "h.zip").resolve()) or full.startswith(str(dest.resolve()) + os.sep)

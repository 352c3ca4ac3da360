"""Fault injection: real processes killed with SIGKILL at named fail points (:mod:`dogclf._faults`), then the same
command again. Each case asserts what survives the kill and what the rerun gives.

Run only these with ``pytest -m faults``. The training and tuning cases are in ``test_faults_training.py`` and
``test_faults_tuning.py``.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from dogclf.data import make_synthetic_dataset
from dogclf.data.manifest import Manifest
from faultkit import assert_killed_at, assert_ok, cli, live_processes, processes_under, run, tree_digest, wait_until

pytestmark = pytest.mark.faults

STAGING = ".dogImages.staging-*"


def test_the_process_finders_see_a_process_by_its_command_line_and_by_its_folder(tmp_path):
    """The orphan checks below assert these lists are empty, so first: they are not empty while processes live."""
    import subprocess

    (tmp_path / "job").mkdir()
    by_folder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=tmp_path / "job")
    by_argument = subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(60)", str(tmp_path / "x")])
    try:
        assert sorted(processes_under(tmp_path)) == sorted([by_folder.pid, by_argument.pid])
        assert live_processes(str(tmp_path / "x")) == [by_argument.pid]
    finally:
        for proc in (by_folder, by_argument):
            proc.kill()
            proc.wait()
    assert processes_under(tmp_path) == [] and live_processes(str(tmp_path / "x")) == []


def _zip(src: Path, dest: Path) -> Path:
    return Path(shutil.make_archive(str(dest.with_suffix("")), "zip", src.parent, src.name))


def _manifest_without_time(path: Path) -> dict:
    doc = Manifest.load(path).to_dict()
    doc.pop("created")
    return doc


def _same_staged_dataset(got: Path, expected: Path) -> None:
    """Byte-identical files (manifest aside), and manifests equal but for their creation time."""
    assert tree_digest(got, exclude=["manifest.json"]) == tree_digest(expected, exclude=["manifest.json"])
    assert _manifest_without_time(got / "manifest.json") == _manifest_without_time(expected / "manifest.json")


# -- the mechanism ---------------------------------------------------------------------------------------------------
def test_a_fail_point_kills_on_its_nth_hit_and_only_where_armed():
    script = ("from dogclf._faults import failpoint\n"
              "for i in range(1, 6):\n"
              "    failpoint('elsewhere')\n"
              "    print(i, flush=True)\n"
              "    failpoint('here')\n")
    killed = run([sys.executable, "-c", script], failpoints="here@3, other@1")
    assert_killed_at(killed, "here")
    assert killed.stdout.split() == ["1", "2", "3"] and "(3)" in killed.stderr
    assert_ok(unarmed := run([sys.executable, "-c", script]))
    assert unarmed.stdout.split() == ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize("value", ["here@0", "here@x", "@2", "here@-1"])
def test_a_malformed_fail_point_is_refused(monkeypatch, value):
    from dogclf import _faults

    monkeypatch.setenv(_faults.ENV, value)
    try:
        with pytest.raises(ValueError, match="bad fail point"):
            _faults.reload()
    finally:
        monkeypatch.delenv(_faults.ENV)
        assert _faults.reload() == {}


def test_watched_writes_die_after_the_nth_mib(tmp_path):
    """``watch_writes`` is the file itself unless armed; armed, the writer dies once N MiB are written."""
    from dogclf import _faults

    with open(tmp_path / "plain", "wb") as fh:
        assert _faults.watch_writes(fh, "nowhere.armed") is fh
    target = tmp_path / "out.bin"
    script = ("import sys\nfrom dogclf._faults import watch_writes\n"
              f"with open({str(target)!r}, 'wb', buffering=0) as fh:\n"
              "    out = watch_writes(fh, 'test.write')\n"
              "    for _ in range(10):\n"
              "        out.write(b'x' * (1 << 19))\n")
    killed = run([sys.executable, "-c", script], failpoints="test.write@3")
    assert_killed_at(killed, "test.write")
    assert target.stat().st_size == 3 << 20  # the 6th half-MiB write completed the 3rd MiB, then the kill
    assert_ok(run([sys.executable, "-c", script]))
    assert target.stat().st_size == 5 << 20


def test_stale_temporaries_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    import os
    import subprocess

    from dogclf._io import remove_stale_temporaries, temporary_name

    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / f".state.pt.tmp-{gone.pid}-1"
    live = temporary_name(tmp_path / "state.pt")  # this process's own write in progress
    other = tmp_path / f".other.pt.tmp-{gone.pid}-1"  # another file's
    for path in (stale, live, other):
        path.write_bytes(b"partial")
    assert live.name.startswith(f".state.pt.tmp-{os.getpid()}-")
    assert remove_stale_temporaries(tmp_path / "state.pt") == [stale]
    assert not stale.exists() and live.exists() and other.exists()


def test_a_child_that_dies_with_its_parent_takes_its_group(tmp_path):
    """``die_with_parent``: the parent SIGKILLed, the child and the process it started are gone (no polling:
    the child waits on the parent's pidfd)."""
    import os
    import signal
    import subprocess

    from dogclf._process import group_members

    child = ("import subprocess, sys, time\nfrom dogclf._process import die_with_parent\n"
             "die_with_parent(int(sys.argv[1]))\n"
             "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
             "time.sleep(600)\n")
    parent = ("import os, subprocess, sys, time\n"
              f"p = subprocess.Popen([sys.executable, '-c', {child!r}, str(os.getpid())], start_new_session=True)\n"
              "print(p.pid, flush=True)\ntime.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    group = int(proc.stdout.readline())
    try:
        wait_until(lambda: len(group_members(group)) == 2)  # the child and its own child
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
        gone_s = wait_until(lambda: group_members(group) == [])
    finally:
        proc.kill()
        proc.stdout.close()
    print(f"FAULT die-with-parent gone_s={gone_s:.3f}")


# -- staging, local target ------------------------------------------------------------------------------------------
@pytest.fixture
def zipped(tmp_path: Path) -> tuple[Path, int]:
    src = make_synthetic_dataset(tmp_path / "src" / "dogImages", n_classes=3, per_class=4, image_size=24)
    return _zip(src.root, tmp_path / "dogImages.zip"), src.n_images()


def test_stage_killed_mid_extract_leaves_no_dataset_and_the_rerun_completes(tmp_path, zipped):
    """Killed at the 20th of 36 archive members: no target (not a partial one), one stale work folder; the rerun
    removes that folder and stages exactly what an uninterrupted run stages."""
    archive, n_images = zipped
    reference = tmp_path / "reference" / "dogImages"
    assert_ok(cli("stage", archive, reference))
    target = tmp_path / "data" / "dogImages"

    killed = cli("stage", archive, target, failpoints="data.archive.member@20")
    assert_killed_at(killed, "data.archive.member")
    assert not target.exists()  # nothing half-extracted under the real name
    (left,) = target.parent.glob(STAGING)  # the killed run's work folder, mid-extract
    assert sum(p.is_file() for p in left.rglob("*")) == 20  # 20 members written, the rest not
    assert 0 < len(list(left.rglob("*.jpg"))) < n_images

    started = time.monotonic()
    rerun = cli("stage", archive, target, "--json")
    assert_ok(rerun)
    assert json.loads(rerun.stdout)["noop"] is False
    assert f"removed {left}" in rerun.stderr  # the stale work folder, reported
    assert list(target.parent.glob(STAGING)) == []
    _same_staged_dataset(target, reference)
    print(f"FAULT stage-extract recover_s={time.monotonic() - started:.2f}")


def test_stage_killed_before_the_swap_keeps_the_previous_dataset(tmp_path, zipped):
    """A new version staged over an old one, killed with the new one complete beside the target: the target is
    still the old dataset, whole; the rerun puts the new one in place, the same as an uninterrupted run."""
    archive_v1, _ = zipped
    v2 = make_synthetic_dataset(tmp_path / "v2" / "dogImages", n_classes=3, per_class=5, image_size=24, seed=2)
    archive_v2 = _zip(v2.root, tmp_path / "v2.zip")
    reference = tmp_path / "reference" / "dogImages"
    assert_ok(cli("stage", archive_v2, reference))
    target = tmp_path / "data" / "dogImages"
    assert_ok(cli("stage", archive_v1, target))
    v1_files = tree_digest(target)

    killed = cli("stage", archive_v2, target, failpoints="data.stager.swap")
    assert_killed_at(killed, "data.stager.swap")
    assert tree_digest(target) == v1_files  # the old dataset, whole: manifest and every file
    assert len(list(target.parent.glob(STAGING))) == 1

    started = time.monotonic()
    assert_ok(cli("stage", archive_v2, target))
    assert list(target.parent.glob(STAGING)) == []
    _same_staged_dataset(target, reference)
    print(f"FAULT stage-swap recover_s={time.monotonic() - started:.2f}")


# -- staging, S3 target (moto server) -------------------------------------------------------------------------------
def _objects(client, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    from dogclf.data.s3 import S3Location, list_objects

    found = list_objects(client, S3Location(bucket, prefix))
    return {key[len(prefix) + 1:]: value for key, value in found.items()}


def test_stage_killed_mid_s3_upload_resumes_and_skips_what_was_uploaded(aws, tmp_path, monkeypatch):
    """Killed after the 5th of 72 finished uploads (others in flight): no manifest in S3 (the prefix is not a
    dataset yet), every object there is complete; the rerun uploads only the rest, and the prefix then equals an
    uninterrupted run's."""
    import hashlib
    import os

    import boto3

    monkeypatch.setenv("DOGCLF_HOME", str(tmp_path / "home"))
    client = boto3.client("s3")
    client.create_bucket(Bucket="faults")
    src = make_synthetic_dataset(tmp_path / "src", n_classes=3, per_class=8, image_size=24)
    n_images = src.n_images()
    env = dict(os.environ)
    assert_ok(cli("stage", src.root, "s3://faults/reference", env=env))

    killed = cli("stage", src.root, "s3://faults/data", failpoints="data.s3.upload.done@5", env=env)
    assert_killed_at(killed, "data.s3.upload.done")
    there = _objects(client, "faults", "data")
    assert "manifest.json" not in there and "labels.json" not in there
    assert 5 <= len(there) < n_images  # 5 finished, at most a window of others, never all
    for rel in there:  # S3 writes whole objects: no partial file
        body = client.get_object(Bucket="faults", Key=f"data/{rel}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == hashlib.sha256((src.root / rel).read_bytes()).hexdigest()
    assert len(list((tmp_path / "home" / "downloads").glob(STAGING))) == 1

    started = time.monotonic()
    rerun = cli("stage", src.root, "s3://faults/data", "--json", env=env)
    assert_ok(rerun)
    stats = json.loads(rerun.stdout)["stats"]
    assert stats["skipped_existing"] == len(there) and stats["uploaded"] == n_images - len(there)
    assert list((tmp_path / "home" / "downloads").glob(STAGING)) == []
    got, expected = _objects(client, "faults", "data"), _objects(client, "faults", "reference")
    manifest = {name: json.loads(client.get_object(Bucket="faults", Key=f"{prefix}/manifest.json")["Body"].read())
                for name, prefix in (("got", "data"), ("expected", "reference"))}
    for doc in manifest.values():
        doc.pop("created")
    assert manifest["got"] == manifest["expected"]
    got.pop("manifest.json"), expected.pop("manifest.json")
    assert got == expected  # same keys, sizes and ETags (contents)
    print(f"FAULT stage-s3 recover_s={time.monotonic() - started:.2f} resumed_from={len(there)}/{n_images}")


# -- the local endpoint ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from dogclf.serving.testing import make_artifact

    return make_artifact(tmp_path_factory.mktemp("faults-serving") / "model")


@pytest.fixture
def child_failpoints(monkeypatch):
    """Arm fail points for processes started from here on, never for this test process itself."""
    from dogclf import _faults

    _faults.reload()  # this process keeps what it read before (nothing armed)

    def arm(value: str) -> None:
        monkeypatch.setenv(_faults.ENV, value)

    yield arm
    monkeypatch.delenv(_faults.ENV, raising=False)
    assert _faults.armed() == {}


def test_endpoint_server_killed_mid_request(artifact, child_failpoints):
    """The server process dies during a request's forward pass: the client gets an EndpointError at once (not
    a hang, not a timeout) saying it was killed; the handle knows it is not running; delete() leaves no process
    and no folder; a new deployment serves the same answers."""
    import requests

    from dogclf.errors import EndpointError
    from dogclf.serving import EndpointDeployer
    from dogclf.serving.testing import synthetic_photo

    photo = synthetic_photo()
    child_failpoints("serving.batcher.forward@2")
    endpoint = EndpointDeployer(intra_op_threads=1, backend="local").deploy(artifact)
    workdir, pid = endpoint.log_path.parent, endpoint.pid
    first, _ = endpoint.invoke(photo, "image/jpeg")

    started = time.monotonic()
    with pytest.raises(EndpointError, match="killed by SIGKILL") as info:
        endpoint.invoke(photo, "image/jpeg", timeout=120)
    noticed_s = time.monotonic() - started
    assert isinstance(info.value.__cause__, requests.ConnectionError)
    assert not isinstance(info.value.__cause__, requests.Timeout)
    assert "fail point serving.batcher.forward hit" in str(info.value)  # the log's end travels with the error
    assert not endpoint.is_running and not endpoint.ping() and not endpoint.deleted
    with pytest.raises(EndpointError, match="is not running"):
        endpoint.invoke(photo, "image/jpeg")  # refused at once, without a network call
    endpoint.delete()
    assert endpoint.deleted and not workdir.exists() and live_processes(str(workdir)) == []
    assert endpoint._proc.pid == pid and endpoint._proc.returncode == -signal.SIGKILL  # reaped, by the kill

    child_failpoints("")
    with EndpointDeployer(intra_op_threads=1, backend="local").deploy(artifact) as again:
        assert again.invoke(photo, "image/jpeg")[0] == first
        workdir = again.log_path.parent
    assert not workdir.exists() and live_processes(str(workdir)) == []
    print(f"FAULT endpoint-server noticed_s={noticed_s:.2f} redeploy_s={time.monotonic() - started:.2f}")


def test_deploying_process_killed_while_the_server_starts(artifact, tmp_path):
    """The process deploying the endpoint is killed right after starting the server, before /ping: the orphaned
    server notices, stops and removes its temporary folder; no process is left."""
    import os

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    script = ("from dogclf.serving import EndpointDeployer\n"
              f"EndpointDeployer(intra_op_threads=1, backend='local').deploy({str(artifact)!r})\n")
    killed = run([sys.executable, "-c", script], failpoints="serving.endpoint.spawned",
                 env={**os.environ, "TMPDIR": str(scratch)})
    assert_killed_at(killed, "serving.endpoint.spawned")
    started = time.monotonic()
    gone_s = wait_until(lambda: live_processes(str(scratch)) == [] and not any(scratch.iterdir()))
    print(f"FAULT endpoint-deployer gone_s={gone_s:.2f} total_s={time.monotonic() - started:.2f}")


def test_delete_leaves_nothing_running(artifact):
    """delete() stops the server process and removes its folder before it returns; nothing else is left."""
    from dogclf.serving import EndpointDeployer

    endpoint = EndpointDeployer(intra_op_threads=1, backend="local").deploy(artifact)
    workdir, pid = endpoint.log_path.parent, endpoint.pid
    assert live_processes(str(workdir)) == [pid]
    endpoint.delete()
    assert live_processes(str(workdir)) == [] and not workdir.exists() and not endpoint.is_running

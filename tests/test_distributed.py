"""dogclf.training.distributed without a second process: shares of a global batch, the Distribution contract, the
checks made before any work, and the failure reasons torchrun's results turn into."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dogclf.backends.local.launch import failure_reason, job_processes
from dogclf.errors import ConfigError
from dogclf.training import Distribution, TrainingConfig, TrainingJobSpec
from dogclf.training.distributed import Ranks, check_job_distribution, start


@settings(deadline=None)  # the first example imports torch
@given(n=st.integers(1, 300), world=st.integers(1, 16))
def test_shares_split_every_global_batch_and_scale_to_its_mean(n, world):
    shares = [Ranks(rank, world).share(n) for rank in range(world)]
    real = [s for s in shares if s.count]
    # In rank order the real shares are the global batch, each image once; sizes differ by at most one.
    positions = [i for s in real for i in range(n)[s.positions]]
    assert positions == list(range(n))
    assert max(s.count for s in real) - min(s.count for s in shares) <= 1
    # DDP averages over `world` ranks: scale * (sum of a share's losses / count) / world adds up to the global mean.
    for s in real:
        assert s.scale == pytest.approx(s.count * world / n) and len(range(n)[s.positions]) == s.count
    # A rank without an image keeps step with one image of weight 0.
    assert all(s.scale == 0.0 and len(range(n)[s.positions]) == 1 for s in shares if not s.count)
    assert len(real) == min(n, world) and (world > 1 or shares[0].scale == 1.0)


@settings(deadline=None)
@given(n=st.integers(0, 200), world=st.integers(1, 9))
def test_spans_are_contiguous_parts_in_rank_order(n, world):
    spans = [Ranks(rank, world).span(n) for rank in range(world)]
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert max(b - a for a, b in spans) - min(b - a for a, b in spans) <= 1


def test_alone_every_collective_is_the_identity():
    ranks = Ranks()
    assert ranks.is_main and ranks.sum(1.5, 2) == (1.5, 2.0) and ranks.gather_objects("x") == ["x"]
    assert ranks.any(True) and not ranks.any(False) and ranks.all(True) and not ranks.all(False)
    module = object()
    assert ranks.wrap(module) is module and ranks.prepare(module) is module
    assert ranks.on_main(lambda: 7) == 7 and Ranks(1, 2).on_main(lambda: 7) is None
    assert Ranks(1, 2).publisher(lambda: "real").publish({"a": 1}, epoch=2) == {"epoch": 2, "a": 1.0}
    state = {"rng": "rank0", "rank_rng": ["rank0", "rank1"]}
    assert Ranks(1, 2).rng_for_rank(state) == "rank1" and Ranks(2, 3).rng_for_rank(state) == "rank0"
    assert Ranks().rng_for_rank({"rng": "old"}) == "old"  # a checkpoint written before rank_rng existed


def test_distribution_is_typed_and_travels_with_the_spec():
    spec = TrainingJobSpec({"backbone": "resnet18"}, "data", {"batch_size": 8}, instance_type="ml.g5.12xlarge",
                           instance_count=2, distribution={"processes_per_host": 4})
    assert spec.distribution == Distribution(4) and spec.distribution.world_size(spec.instance_count) == 8
    again = TrainingJobSpec.from_dict(spec.to_dict())
    assert again.distribution == Distribution(4) and again.instance_count == 2
    assert TrainingJobSpec({"backbone": "resnet18"}, "data").to_dict()["distribution"] is None
    assert Distribution().world_size(2) is None and Distribution().world_size(2, per_host=4) == 8


@pytest.mark.parametrize("fields, training, match", [
    ({"distribution": Distribution(3)}, {"batch_size": 64},
     r"batch_size \(--batch-size\) 64 is not divisible by the world size 3 \(1 instance\(s\) x 3 process"),
    ({"instance_count": 2}, {}, "instance_count 2 needs distribution=Distribution"),
    ({"instance_count": 0}, {}, "instance_count must be a positive int, got 0"),
    ({"distribution": {"processes_per_host": 0}}, {}, "processes_per_host must be an int >= 1 .*got 0"),
    ({"distribution": {"processes_per_host": True}}, {}, "processes_per_host must be an int >= 1 .*got True"),
    ({"distribution": {"gpus": 2}}, {}, r"unknown distribution field\(s\) \['gpus'\]"),
    ({"distribution": 2}, {}, "distribution must be a dogclf.training.Distribution"),
    ({"distribution": Distribution(2)}, {"batchnorm": "sync", "device": "cpu"},
     "batchnorm 'sync' with device 'cpu' cannot run"),
    ({}, {"batchnorm": "global"}, "batchnorm.* is 'global'; choose one of 'auto', 'sync', 'local', 'frozen'"),
])
def test_bad_distributions_name_the_value(fields, training, match):
    with pytest.raises(ConfigError, match=match):
        TrainingJobSpec({"backbone": "resnet18"}, "data", training, **fields)


def test_local_processes_come_from_the_spec_or_the_backend():
    spec = TrainingJobSpec({"backbone": "resnet18"}, "data", {"batch_size": 8})
    assert job_processes(None, spec) is None and job_processes(4, spec) == 4
    assert job_processes(None, TrainingJobSpec({}, "data", {"batch_size": 8}, distribution=Distribution())) == 1
    assert job_processes(4, TrainingJobSpec({}, "data", {"batch_size": 8}, distribution=Distribution(2))) == 2
    with pytest.raises(ConfigError, match=r"8 is not divisible by the world size 3 \(3 local processes\)"):
        job_processes(3, spec)
    check_job_distribution(None, 1, TrainingConfig())  # one process: nothing to check


def test_distributed_trials_do_not_go_to_the_warm_pool(tmp_path):
    from dogclf.backends import get_backend

    spec = TrainingJobSpec({"backbone": "resnet18"}, "data", {"batch_size": 8})
    assert get_backend("local", root=tmp_path).trial_pool(spec, {}, 2) is not None  # head-only, cached: pooled
    assert get_backend("local", root=tmp_path, processes=2).trial_pool(spec, {}, 2) is None
    assert get_backend("local", root=tmp_path).trial_pool(
        TrainingJobSpec({"backbone": "resnet18"}, "data", {"batch_size": 8}, distribution=Distribution(2)), {}, 2) \
        is None


def test_the_entry_point_checks_torchruns_world_before_joining_it(monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    alone = start(TrainingConfig(batch_size=6, device="cpu", batchnorm="sync"))
    assert alone.world_size == 1 and alone.device.type == "cpu" and alone.batchnorm == "local"
    assert start(TrainingConfig(batchnorm="frozen", device="cpu")).batchnorm == "frozen"
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(ConfigError, match=r"batch_size \(--batch-size\) 6 is not divisible by the world size 4"):
        start(TrainingConfig(batch_size=6))
    with pytest.raises(ConfigError, match="batchnorm 'sync' cannot run on cpu"):
        start(TrainingConfig(batch_size=8, device="cpu", batchnorm="sync"))
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="RANK=4, WORLD_SIZE=4"):
        start(TrainingConfig(batch_size=8))
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(ConfigError, match="RANK='one' is not an integer"):
        start(TrainingConfig(batch_size=8))


def _failure(pid: int, exitcode: int):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    return ProcessFailure(local_rank=0, pid=pid, exitcode=exitcode, error_file="/nonexistent/error.json")


def test_the_failure_reason_names_the_rank_that_died_first():
    killed = {0: _failure(10, -15), 1: _failure(11, -9)}
    reason = failure_reason(killed, 2, "rank 0 of 2: RuntimeError: Connection closed by peer")
    assert reason == ("rank 1 of 2 (pid 11) was killed by SIGKILL; torchrun stopped the job's other processes "
                      "(then rank 0 of 2: RuntimeError: Connection closed by peer)")
    # A rank's own reason (a Python error it wrote) stands; without one the exit status is the reason.
    assert failure_reason({1: _failure(11, 2)}, 2, "rank 1 of 2: DataError: ...") is None
    assert failure_reason({1: _failure(11, 2)}, 2, None) == "rank 1 of 2 (pid 11) exited with status 2"
    assert failure_reason({0: _failure(10, -15)}, 2, None).startswith("rank 0 of 2 (pid 10) was killed by SIGTERM")


def test_ranks_other_than_0_log_warnings_and_their_own_lines(caplog):
    from dogclf.training.distributed import _RankLog

    keep = _RankLog(1, 2)
    records = [logging.LogRecord("dogclf.training.loop", logging.INFO, "", 0, "checkpoint saved", (), None),
               logging.LogRecord("dogclf.training.loop", logging.WARNING, "", 0, "slow %s", ("disk",), None),
               logging.LogRecord("dogclf.training.features", logging.INFO, "", 0, "computed %d", (7,), None)]
    records[2].all_ranks = True
    assert [keep.filter(r) for r in records] == [False, True, True]
    assert records[1].getMessage() == "[rank 1/2] slow disk" and records[2].getMessage() == "[rank 1/2] computed 7"
    assert _RankLog(0, 2).filter(records[0]) and records[0].getMessage() == "[rank 0/2] checkpoint saved"


def test_no_hyperparameter_is_taken_for_one_of_torchruns_options():
    """torchrun parses the whole command line, the entry point's arguments after the script included, with
    argparse's prefix matching: an entry-point option that abbreviates torchrun's options is an error
    ("ambiguous option: --monitor could match --monitor-interval") or, matching one, silently becomes torchrun's.
    SageMaker's torch_distributed launcher builds the same command line, so no option may be such a prefix."""
    from torch.distributed.run import get_args_parser

    from dogclf.training.train import build_parser

    torchrun = {s for a in get_args_parser()._actions for s in a.option_strings if s.startswith("--")}
    ours = {s for a in build_parser()._actions for s in a.option_strings if s.startswith("--")} - {"--help"}
    assert len(ours) > 40 and "--monitor-metric" in ours
    clashes = {o: sorted(t for t in torchrun if t.startswith(o)) for o in ours}
    assert {o: t for o, t in clashes.items() if t} == {}
    # The check itself: torchrun's parser does reject an abbreviation after the script.
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--standalone", "train.py", "--monitor", "valid_loss"])

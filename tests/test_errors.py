from __future__ import annotations

import inspect

import pytest

import dogclf.errors as errors
from dogclf.errors import DogclfError, JobError, UnknownBreedError


def test_every_error_derives_from_root_and_a_builtin():
    classes = [obj for _, obj in inspect.getmembers(errors, inspect.isclass) if obj.__module__ == errors.__name__]
    assert set(errors.__all__) == {c.__name__ for c in classes}
    for cls in classes:
        assert issubclass(cls, DogclfError)
        if cls is not DogclfError:
            builtin = [b for b in cls.__mro__ if b.__module__ == "builtins" and b not in (Exception, BaseException, object)]
            assert builtin, f"{cls.__name__} should also derive from a built-in exception"


def test_key_errors_render_their_message_without_quotes():
    assert str(UnknownBreedError("unknown breed 'x'")) == "unknown breed 'x'"
    with pytest.raises(KeyError):
        raise UnknownBreedError("y")


def test_job_error_carries_id_status_and_reason():
    exc = JobError("training job failed", job_id="job-1", status="Failed", reason="AlgorithmError: boom")
    assert (exc.job_id, exc.status, exc.reason) == ("job-1", "Failed", "AlgorithmError: boom")
    assert str(exc) == "training job failed (job_id='job-1', status='Failed') reason: AlgorithmError: boom"
    assert isinstance(exc, RuntimeError)

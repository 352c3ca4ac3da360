"""Every example in examples/ runs (on a tiny dataset), so none rots. The main job has its own test
(tests/test_e2e_workflow.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

# script, extra arguments, files it must write under --out, text its output must contain
CASES = [
    ("stage_dataset.py", [], ["dogImages/manifest.json", "dogImages/train"], "channel train"),
    ("tune_hyperparameters.py", [], ["hpo.png", "best_params.json"], "best:"),
    ("train_with_debugger.py", [], ["report/debug-report.html"], "model artifact"),
    # rebuilds the report of the job the train example ran (without --job-output it trains one itself)
    ("debug_report.py", ["--job-output", "<trained>"], ["debug-report.html", "debug-report-loss.png"],
     "HeadWeightsTooLarge: fired"),
    ("deploy_and_predict.py", [], ["model/model.pt", "gallery"], "endpoint deleted"),
]


def test_every_example_is_covered():
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    # the main job: tests/test_e2e_workflow.py; the SageMaker one: its dry run below
    covered = {c[0] for c in CASES} | {"workflow_local.py", "workflow_sagemaker.py"}
    assert scripts == covered, f"examples without a test: {sorted(scripts - covered)}"


def _run(script: str, out: Path, extra: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DOGCLF_HOME": str(home), "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
           "SMDEBUG_LOG_LEVEL": "error"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--tiny", "--out", str(out), *extra],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The train example's run, shared with the report example (which reads the job it wrote)."""
    out = tmp_path_factory.mktemp("train")
    return out, _run("train_with_debugger.py", out, [], out / "home")


@pytest.mark.slow
@pytest.mark.parametrize(("script", "extra", "files", "text"), CASES, ids=[c[0] for c in CASES])
def test_example_runs(script, extra, files, text, tmp_path, request):
    if script == "train_with_debugger.py":
        out, proc = request.getfixturevalue("trained")
    else:
        if "<trained>" in extra:
            train_out, _ = request.getfixturevalue("trained")
            job = next((train_out / "backend" / "jobs").iterdir())
            extra = [str(job / "output" / "data") if a == "<trained>" else a for a in extra]
        out = tmp_path / "out"
        proc = _run(script, out, extra, tmp_path / "home")
    for rel in files:
        assert (out / rel).exists(), rel
    assert text in proc.stdout


@pytest.mark.slow
def test_sagemaker_dry_run_prints_each_request_of_the_workflow(tmp_path):
    """The dry run goes through staging, tuning, training, deployment, prediction and deletion requests."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SAGEMAKER_SUPPRESS_V2_WARNING": "1"}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        env.pop(key, None)  # no credentials needed: nothing is sent
    proc = subprocess.run([sys.executable, str(EXAMPLES / "workflow_sagemaker.py"), "--dry-run", "--out",
                           str(tmp_path), "--bucket", "my-bucket", "--trials", "3", "--parallel", "2"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    requests = [line.strip()[3:] for line in proc.stdout.splitlines() if line.startswith("  -> ")]
    ops = [r.split(" ", 1)[0] for r in requests]
    order = ["s3.PutObject", "sagemaker.CreateHyperParameterTuningJob", "sagemaker.CreateTrainingJob",
             "sagemaker.CreateModel", "sagemaker.CreateEndpoint", "sagemaker-runtime.InvokeEndpoint",
             "sagemaker.DeleteEndpoint"]
    positions = [ops.index(op) for op in order]
    assert positions == sorted(positions), ops
    import json

    tuning = json.loads(next(r for r in requests if r.startswith("sagemaker.CreateHyperParameterTuningJob "))
                        .split(" ", 1)[1])
    config = tuning["HyperParameterTuningJobConfig"]
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 3, "MaxParallelTrainingJobs": 2}
    assert config["ParameterRanges"]["ContinuousParameterRanges"][0]["ScalingType"] == "Logarithmic"
    training = json.loads(next(r for r in requests if r.startswith("sagemaker.CreateTrainingJob ")).split(" ", 1)[1])
    # the final job gets the tuned values of the trial with the lowest test_loss in the (canned) listing, which is
    # not its first entry: taking another trial, or the values the test itself expects, would fail here
    jobs = _dry_tuning_jobs()
    best = min(jobs, key=lambda job: job[1])[0]
    assert best != jobs[0][0] and best != jobs[-1][0]
    assert {k: training["HyperParameters"][k].strip('"') for k in best} == best
    # the seed's collections travel to the job: as SageMaker's DebugHookConfig, or packed in dogclf's own
    # hyperparameter (which needs no Debugger)
    from dogclf.debug.callbacks import decode_settings

    hook = training.get("DebugHookConfig")
    if hook is None:
        packed = training["HyperParameters"]["dogclf-debug"]
        hook = decode_settings(json.loads(packed) if packed.startswith('"') else packed)["hook"]
    assert {c["CollectionName"] for c in hook["CollectionConfigurations"]} >= {
        "model_weights", "model_gradients", "biases_values", "LossOutput"}
    assert "(dogclf-debug unpacked: " in proc.stdout or "DebugHookConfig" in json.dumps(training)
    assert all("s3://my-bucket/" in json.dumps(c) for c in training["InputDataConfig"])
    assert "none sent" in proc.stdout


def _dry_tuning_jobs() -> list:
    """``DRY_TUNING_JOBS`` of examples/workflow_sagemaker.py, read from its source (importing it would change this
    process's environment)."""
    import ast

    tree = ast.parse((EXAMPLES / "workflow_sagemaker.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") ==
                "DRY_TUNING_JOBS")
    return ast.literal_eval(node.value)

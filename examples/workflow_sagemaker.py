"""The seed's workflow end to end on AWS SageMaker, with the same dogclf calls as the local main job.

    python examples/workflow_sagemaker.py --role arn:aws:iam::123456789012:role/SageMakerRole --bucket my-bucket
    python examples/workflow_sagemaker.py --dry-run     # no AWS: print every request it would send

What it needs
-------------
* **An IAM execution role** (``--role``) that SageMaker assumes for training, tuning and the endpoint: the managed
  policy ``AmazonSageMakerFullAccess`` plus ``s3:GetObject``/``s3:PutObject``/``s3:ListBucket`` on the bucket,
  trusted by ``sagemaker.amazonaws.com``. Your own credentials need ``iam:PassRole`` on it.
* **An S3 bucket** (``--bucket``) in the same region: the staged dataset goes to ``s3://BUCKET/dogclf/data/``,
  code and models to ``s3://BUCKET/dogclf/training/``, the packed endpoint model to ``s3://BUCKET/dogclf/endpoints/``.
* **Service quotas** (Service Quotas console, "Amazon SageMaker"): ``ml.c5.2xlarge for training job usage`` >= the
  tuning parallelism (2 by default; new accounts often have 0 or 1), ``ml.m5.large for endpoint usage`` >= 1, and
  ``Number of instances across all training jobs`` >= 2.
* **Costs** (us-east-1, 2026 on-demand list prices, roughly): each tuning trial and the final job run about 20
  minutes on ml.c5.2xlarge (~$0.41/hour) with the full dogImages data; the endpoint costs ~$0.115/hour on
  ml.m5.large *until it is deleted* (this script deletes it at the end unless ``--keep-endpoint``).
* **SageMaker Debugger**: closed to new customers since 2026-07-30. dogclf evaluates the rules and builds the
  report itself from the tensors the job writes, so nothing here needs Debugger's rule containers; accounts that
  still have it can add ``--sagemaker-debugger`` to run ``LossNotDecreasing`` as a SageMaker rule job too.

``--dry-run`` runs the very same code with every AWS API call intercepted before it leaves this process
(``botocore``'s ``BaseClient._make_api_call``): each request is printed (operation and parameters; object bodies
summarised) and answered with a canned response so the next step can go on. The canned answers (job statuses,
metrics, predictions) are placeholders; only the requests are real. No credentials or network are needed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import logging
import os
import threading
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
os.environ.setdefault("SMDEBUG_LOG_LEVEL", "error")

from dogclf.backends import get_backend  # noqa: E402
from dogclf.data import DatasetStager, make_synthetic_dataset  # noqa: E402
from dogclf.debug import DebuggerConfig, DebugTrainer, seed_collections  # noqa: E402
from dogclf.hpo import Categorical, Continuous, HPOExperiment  # noqa: E402
from dogclf.serving import BreedPredictor, EndpointDeployer  # noqa: E402
from dogclf.training import TrainingJobSpec  # noqa: E402

DOGIMAGES_URL = "https://s3-us-west-1.amazonaws.com/udacity-aind/dog-project/dogImages.zip"
SEED_PHOTOS = Path(__file__).resolve().parents[1].parent / "shared" / "seed" / "test-photos-of-dogs"
SEED_SPACE = {"lr": Continuous(0.001, 0.1, scale="log"), "batch_size": Categorical([32, 64, 128]),
              "epochs": Categorical([1, 2])}
DRY_ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
# The seed's three tuning jobs in creation order, (tuned hyperparameters, test_loss): the dry run's canned listing.
DRY_TUNING_JOBS = [({"lr": "0.0947", "batch-size": "32", "epochs": "1"}, 3.2288),
                   ({"lr": "0.0010152583471663874", "batch-size": "64", "epochs": "2"}, 0.6566),  # the best
                   ({"lr": "0.0501", "batch-size": "128", "epochs": "2"}, 1.2591)]
DRY_BUCKET = "dogclf-dry-run"


# -- the dry run: every AWS request printed and answered locally ---------------------------------------------------
class DryRunAWS:
    """Intercept every botocore API call in this process: print it, record it, answer it with a canned response."""

    def __init__(self, bucket: str, out: Any = sys.stdout, max_puts_shown: int = 3) -> None:
        self.bucket = bucket
        self.out = out
        self.max_puts_shown = max_puts_shown
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.counts: Counter[str] = Counter()
        self._patch: Any = None
        self._lock = threading.Lock()  # requests come from several threads (uploads, predictions)
        self._env: Any = None

    def __enter__(self) -> DryRunAWS:
        from unittest import mock

        import botocore.client

        dry = self

        def _make_api_call(client: Any, operation: str, params: dict[str, Any]) -> Any:
            service = client.meta.service_model.service_name
            return dry.answer(service, operation, params)

        self._env = mock.patch.dict(os.environ, {"AWS_ACCESS_KEY_ID": "dry-run", "AWS_SECRET_ACCESS_KEY": "dry-run",
                                                 "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION",
                                                                                      "us-east-1")})
        self._env.start()
        self._patch = mock.patch.object(botocore.client.BaseClient, "_make_api_call", _make_api_call)
        self._patch.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._patch.stop()
        self._env.stop()

    # printing
    def _show(self, service: str, operation: str, params: dict[str, Any]) -> None:
        key = f"{service}.{operation}"
        self.counts[key] += 1
        if operation in ("PutObject", "UploadPart") and self.counts[key] > self.max_puts_shown:
            if self.counts[key] == self.max_puts_shown + 1:
                print(f"  -> {key} ... (more of these are counted, not shown)", file=self.out)
            return
        print(f"  -> {key} {json.dumps(_printable(params), default=str, sort_keys=True)}", file=self.out)
        packed = (params.get("HyperParameters") or {}).get("dogclf-debug") if operation == "CreateTrainingJob" else None
        if packed:  # Debugger settings travel packed in one hyperparameter; show them readable too
            from dogclf.debug.callbacks import decode_settings

            settings = decode_settings(json.loads(packed) if packed.startswith('"') else packed)
            print(f"     (dogclf-debug unpacked: {json.dumps(settings, sort_keys=True)})", file=self.out)

    # answering
    def answer(self, service: str, operation: str, params: dict[str, Any]) -> Any:
        from botocore.exceptions import ClientError
        from botocore.response import StreamingBody

        with self._lock:
            self.calls.append((service, operation, params))
            self._show(service, operation, params)
        now = dt.datetime.now(dt.timezone.utc)
        if operation in ("GetObject", "HeadObject") and str(params.get("Key", "")).endswith(".tar.gz"):
            data = _placeholder_tar()  # the SDK repacks model.tar.gz with code/ before CreateModel
            if operation == "HeadObject":
                return {"ContentLength": len(data), "ETag": '"0"', "LastModified": now}
            return {"Body": StreamingBody(io.BytesIO(data), len(data)), "ContentLength": len(data), "ETag": '"0"',
                    "LastModified": now}
        if operation in ("GetObject", "HeadObject"):
            raise ClientError({"Error": {"Code": "NoSuchKey" if operation == "GetObject" else "404",
                                         "Message": "dry run: nothing is stored"}}, operation)
        if operation in ("ListObjectsV2", "ListObjects"):
            return {"Contents": [], "KeyCount": 0, "IsTruncated": False}
        if operation == "ListBuckets":
            return {"Buckets": [{"Name": self.bucket, "CreationDate": now}]}
        if operation == "GetBucketLocation":
            return {"LocationConstraint": None}
        if operation == "CreateMultipartUpload":
            return {"UploadId": "dry-run"}
        if operation in ("PutObject", "UploadPart"):
            return {"ETag": '"00000000000000000000000000000000"'}
        if operation == "GetCallerIdentity":
            return {"Account": "123456789012", "Arn": "arn:aws:iam::123456789012:user/dry-run", "UserId": "DRY"}
        if operation == "DescribeTrainingJob":
            name = params["TrainingJobName"]
            return {"TrainingJobName": name, "TrainingJobStatus": "Completed", "SecondaryStatus": "Completed",
                    "CreationTime": now, "TrainingStartTime": now, "TrainingEndTime": now,
                    "ModelArtifacts": {"S3ModelArtifacts": f"s3://{self.bucket}/dogclf/training/{name}/output/"
                                                           "model.tar.gz"},
                    "OutputDataConfig": {"S3OutputPath": f"s3://{self.bucket}/dogclf/training"},
                    "FinalMetricDataList": [{"MetricName": "test_loss", "Value": 0.0, "Timestamp": now}],
                    "HyperParameters": {}, "ResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.c5.2xlarge"},
                    "AlgorithmSpecification": {"TrainingInputMode": "File"}}
        if operation == "DescribeHyperParameterTuningJob":
            return {"HyperParameterTuningJobName": params["HyperParameterTuningJobName"],
                    "HyperParameterTuningJobStatus": "Completed", "CreationTime": now}
        if operation == "ListTrainingJobsForHyperParameterTuningJob":
            name = params["HyperParameterTuningJobName"]
            return {"TrainingJobSummaries": [
                {"TrainingJobName": f"{name}-{i + 1:03d}-0000000{i}", "TrainingJobStatus": "Completed",
                 "CreationTime": now, "TrainingStartTime": now, "TrainingEndTime": now, "TunedHyperParameters": hp,
                 "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "test_loss", "Value": value}}
                for i, (hp, value) in enumerate(DRY_TUNING_JOBS)]}
        if operation == "DescribeEndpoint":
            return {"EndpointName": params["EndpointName"], "EndpointStatus": "InService",
                    "EndpointConfigName": params["EndpointName"], "CreationTime": now}
        if operation == "DescribeEndpointConfig":
            return {"EndpointConfigName": params["EndpointConfigName"], "ProductionVariants": [
                {"VariantName": "AllTraffic", "ModelName": params["EndpointConfigName"]}]}
        if operation == "InvokeEndpoint":
            body = json.dumps({"predictions": [{
                "breed": "Golden_retriever", "display_name": "Golden retriever", "index": 75, "probability": 0.0,
                "top_k": [{"breed": "Golden_retriever", "display_name": "Golden retriever", "index": 75,
                           "probability": 0.0}]}]}).encode()
            return {"Body": StreamingBody(io.BytesIO(body), len(body)), "ContentType": "application/json"}
        if operation.startswith("Describe") and service == "logs":
            return {"logStreams": [], "logGroups": []}
        if operation == "GetLogEvents":
            return {"events": [], "nextForwardToken": "x"}
        if operation.startswith("Create"):
            return {"Arn": f"arn:aws:sagemaker:us-east-1:123456789012:{operation[6:].lower()}/dry-run",
                    "TrainingJobArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/dry-run",
                    "HyperParameterTuningJobArn": "arn:aws:sagemaker:us-east-1:123456789012:"
                                                  "hyper-parameter-tuning-job/dry-run",
                    "ModelArn": "arn:aws:sagemaker:us-east-1:123456789012:model/dry-run",
                    "EndpointConfigArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/dry-run",
                    "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/dry-run"}
        return {}


def _placeholder_tar() -> bytes:
    """A tiny ``model.tar.gz`` standing in for a training job's output on a dry run."""
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("README.txt")
        text = b"dry run placeholder for a dogclf model artifact\n"
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    return buffer.getvalue()


def _printable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if hasattr(value, "read"):
        return "<stream>"
    if isinstance(value, dict):
        return {k: _printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_printable(v) for v in value]
    return value


# -- the workflow -------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    """The workflow on SageMaker; on a dry run, steps that need a finished job's real output are described."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_id = time.strftime("%m%d-%H%M%S", time.gmtime())
    backend = get_backend("sagemaker", role=args.role, bucket=args.bucket, region=args.region)
    results: dict[str, Any] = {}

    print("\n[1/6] stage the dataset to S3 (DatasetStager)")
    source: Any = args.data
    if args.dry_run and not args.data:
        source = make_synthetic_dataset(out / "synthetic", n_classes=3, per_class=1, image_size=16, overwrite=True)
        print(f"  (dry run: a 9-image synthetic dataset stands in for {DOGIMAGES_URL})")
    staged = DatasetStager(source or DOGIMAGES_URL, f"s3://{args.bucket}/dogclf/data/dogImages",
                           labels=None if args.dry_run else "dogimages-133").run()
    results["dataset"] = staged.uri

    spec = TrainingJobSpec({"backbone": args.backbone, "weights": args.weights}, staged.channels, {"seed": 0},
                           instance_type=args.instance_type)

    print(f"\n[2/6] tune lr, batch size and epochs: {args.trials} jobs, {args.parallel} at a time (HPOExperiment)")
    experiment = HPOExperiment(spec, SEED_SPACE, "test_loss", max_trials=args.trials, max_parallel=args.parallel,
                               strategy="bayesian", early_stopping="auto", backend=backend, name=f"dogclf-{run_id}",
                               seed=0).run()
    best = experiment.best_params_
    print(experiment.format_jobs_table())
    print(f"  best: {best}")
    if args.dry_run:
        print("  (dry run: the canned tuning results are the seed's three jobs, objectives 3.23 / 0.66 / 1.26)")
    results["best_params"] = best

    print("\n[3/6] train the best configuration with Debugger collections, rules and profiling (DebugTrainer)")
    config = DebuggerConfig(collections=seed_collections(), sagemaker_debugger=args.sagemaker_debugger,
                            s3_output_path=f"s3://{args.bucket}/dogclf/debug")
    trainer = DebugTrainer(experiment.best_spec_, config, backend=backend, job_name=f"dogclf-{run_id}-debug")
    if args.dry_run:
        job = backend.train(trainer.build_spec(backend), wait=False)  # the same request fit() sends
        artifact = f"s3://{args.bucket}/dogclf/training/{job.job_name}/output/model.tar.gz"
        print("\n[4/6] report: built by DebugTrainer.fit() from the job's output.tar.gz once the job has ended "
              "(dry run: nothing to read, skipped)")
    else:
        trainer.fit()
        artifact = trainer.result_.model_artifact
        print(f"\n[4/6] report: {trainer.report_.html_path} (rules triggered: "
              f"{', '.join(trainer.report_.triggered) or 'none'})")
        results["report"] = str(trainer.report_.html_path)
    results["artifact"] = artifact

    print(f"\n[5/6] deploy {artifact} on {args.endpoint_instance_type} (EndpointDeployer)")
    endpoint = EndpointDeployer(instance_type=args.endpoint_instance_type, endpoint_name=f"dogclf-{run_id}",
                                wait_poll_s=1 if args.dry_run else 15, backend=backend).deploy(artifact)
    try:
        print("\n[6/6] predict the seed's photos (BreedPredictor)")
        predictor = BreedPredictor(endpoint, k=3, labels="dogimages-133")
        photos = args.photos or (SEED_PHOTOS if SEED_PHOTOS.is_dir() else None)
        if photos is None:
            photos = out / "photos"
            photos.mkdir(exist_ok=True)
            from PIL import Image

            Image.new("RGB", (64, 48), (200, 160, 90)).save(photos / "dog1.jpg")
            print(f"  ../shared is absent: predicting a generated image in {photos}")
        table = predictor.predict_folder(photos, None if args.dry_run else out / "gallery")
        results["predictions"] = len(table)
        if not args.dry_run:
            print(table[["file", "display_name", "probability"]].to_string(index=False))
    finally:
        if args.keep_endpoint:
            endpoint.keep()
            print(f"  endpoint {endpoint.name} left running (and billing); delete it when done")
        else:
            endpoint.delete()
            print(f"  endpoint {endpoint.name} deleted")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--role", default=None, help="IAM execution role ARN (see the module docs)")
    p.add_argument("--bucket", default=None, help="S3 bucket in the same region")
    p.add_argument("--region", default=None, help="AWS region (default: the environment's)")
    p.add_argument("--data", default=None, help=f"dataset zip/URL/folder/s3 prefix (default {DOGIMAGES_URL})")
    p.add_argument("--photos", type=Path, default=None, help="photos to predict (default: the seed's)")
    p.add_argument("--backbone", default="resnet50", help="the seed's ResNet50")
    p.add_argument("--weights", default="IMAGENET1K_V2", help="torchvision weights the job downloads")
    p.add_argument("--trials", type=int, default=3, help="tuning jobs (the seed ran 3)")
    p.add_argument("--parallel", type=int, default=2, help="tuning jobs at once (check your quota)")
    p.add_argument("--instance-type", default="ml.c5.2xlarge", help="training instance (the seed's)")
    p.add_argument("--endpoint-instance-type", default="ml.m5.large", help="endpoint instance (the seed's)")
    p.add_argument("--sagemaker-debugger", action="store_true",
                   help="also run SageMaker's Debugger rule jobs (only for accounts that still have Debugger)")
    p.add_argument("--keep-endpoint", action="store_true", help="do not delete the endpoint at the end")
    p.add_argument("--out", type=Path, default=Path("runs/sagemaker"), help="local outputs")
    p.add_argument("--dry-run", action="store_true", help="no AWS: print the requests it would send")
    p.add_argument("--tiny", action="store_true", help="same as --dry-run (what CI runs)")
    args = p.parse_args(argv)
    args.dry_run = args.dry_run or args.tiny
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.dry_run:
        args.role, args.bucket = args.role or DRY_ROLE, args.bucket or DRY_BUCKET
        home = Path(tempfile.mkdtemp(prefix="dogclf-dry-run-"))
        os.environ["DOGCLF_HOME"] = str(home)  # experiment state of the dry run stays out of ~/.dogclf
        # The SDK's usage telemetry goes over plain HTTPS, around botocore: switch it off for the dry run.
        config = home / "sagemaker-config.yaml"
        config.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n"
                          "      TelemetryOptOut: true\n")
        os.environ["SAGEMAKER_USER_CONFIG_OVERRIDE"] = str(config)
        with DryRunAWS(args.bucket) as dry:
            results = run(args)
        print(f"\ndry run: {len(dry.calls)} AWS requests, none sent:")
        for key, n in sorted(dry.counts.items()):
            print(f"  {n:4d} x {key}")
        return 0
    if not (args.role and args.bucket):
        p.error("--role and --bucket are required (or --dry-run)")
    results = run(args)
    print(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())

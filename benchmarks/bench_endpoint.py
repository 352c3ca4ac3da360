"""Local endpoint throughput: dynamic batching on and off, against the in-process limit.

8 concurrent clients send the seed's ``dog2.jpg`` (2123x1413 JPEG) to a local endpoint serving a randomly initialised
ResNet50 with 133 breeds (no downloads): first with dynamic batching (max batch 8), then with batching off. Each run
prints requests/s, p50 and p99 latency and the error count. The in-process limit is decode + preprocess + forward of
the same image in one process at the best batch size (1, 2, 4 or 8), with the same handler code, measured before
and after the endpoint runs (the better one counts).

Last line: ``ratio=<endpoint batched requests/s / in-process limit images/s>`` (goal >= 0.85, with 0 errors).

Run: ``.venv/bin/python benchmarks/bench_endpoint.py [--requests-per-client 12]``. Takes a few minutes on 2 cores.
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
DOG2 = REPO.parent / "shared" / "seed" / "test-photos-of-dogs" / "dog2.jpg"
CLIENTS = 8


def photo() -> bytes:
    if DOG2.is_file():
        return DOG2.read_bytes()
    from dogclf.serving.testing import synthetic_photo  # a stand-in of the same size when ../shared is absent

    print(f"note: {DOG2} not found; using a synthetic 2123x1413 JPEG", file=sys.stderr)
    return synthetic_photo(2123, 1413, fmt="JPEG", quality=90)


def in_process_limit(model, body: bytes, seconds: float) -> tuple[float, int]:
    """Best images/s of decode + preprocess + forward in this process, and the batch size that reached it."""
    import torch

    from dogclf.serving import handler

    def make_step(batch_size: int):
        def step() -> None:
            arrays = [handler.input_fn(body, "image/jpeg").batch for _ in range(batch_size)]
            handler.predict_fn(handler.InferenceInput(batch=torch.cat(arrays)), model)
        return step

    # Warm-up until a forward pass stops getting faster: the first passes in a fresh process are several times
    # slower (allocator and oneDNN caches), which would flatter the endpoint.
    warm, last = time.perf_counter(), float("inf")
    while time.perf_counter() - warm < 60:
        t0 = time.perf_counter()
        make_step(4)()
        took = time.perf_counter() - t0
        if took > 0.9 * last and time.perf_counter() - warm > 5:
            break
        last = min(last, took)
    best, best_batch = 0.0, 1
    for batch_size in (1, 2, 4, 8):
        step = make_step(batch_size)
        step()
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or done < 2 * batch_size:
            step()
            done += batch_size
        rate = done / (time.perf_counter() - start)
        print(f"in-process   batch={batch_size}: {rate:6.2f} images/s")
        if rate > best:
            best, best_batch = rate, batch_size
    return best, best_batch


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
            "p99": latencies[p99_index] if latencies else float("nan"), "errors": errors[0], "n": len(latencies)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests-per-client", type=int, default=12)
    parser.add_argument("--limit-seconds", type=float, default=4.0)
    parser.add_argument("--max-delay-ms", type=float, default=10.0)
    args = parser.parse_args()

    from dogclf.serving import EndpointDeployer
    from dogclf.serving.testing import make_artifact

    body = photo()
    with tempfile.TemporaryDirectory(prefix="bench-endpoint-") as tmp:
        model_dir = make_artifact(Path(tmp) / "resnet50", "dogimages-133", backbone="resnet50")
        print(f"model: resnet50, 133 breeds, random init; image: {len(body)} bytes; {CLIENTS} clients x "
              f"{args.requests_per_client} requests; cpus={os.cpu_count()}")
        # The in-process limit is measured before and after the endpoint runs and the better one is kept: other
        # processes on a shared machine can slow either phase. It runs on a worker thread, as the server's forwards
        # do (handler.predict_fn moves main-thread forwards to a helper thread anyway: under CPU contention the
        # main thread's busy-waiting OpenMP team made them 3-12x slower).
        from dogclf.serving import handler

        model = handler.model_fn(model_dir)
        pool = ThreadPoolExecutor(1)
        limits = [pool.submit(in_process_limit, model, body, args.limit_seconds).result()]
        results = {}
        for label, options in (("batched", {"max_batch_size": 8, "max_delay_ms": args.max_delay_ms}),
                               ("unbatched", {"batching": False})):
            with EndpointDeployer(workers=2, backend="local", **options).deploy(model_dir) as endpoint:
                r = load(endpoint, body, args.requests_per_client)
                stats = endpoint.stats()
            mean_batch = stats["images"] / max(1, stats["batches"])
            print(f"endpoint {label:9s}: {r['rps']:6.2f} requests/s  p50 {r['p50'] * 1000:7.1f} ms  "
                  f"p99 {r['p99'] * 1000:7.1f} ms  errors {r['errors']}  (mean forward batch {mean_batch:.2f})")
            results[label] = r
        limits.append(pool.submit(in_process_limit, model, body, args.limit_seconds).result())
        pool.shutdown()
        limit, batch = max(limits)
    print(f"in-process limit: {limit:.2f} images/s at batch {batch}")
    print(f"batching speed-up: {results['batched']['rps'] / results['unbatched']['rps']:.2f}x")
    errors = results["batched"]["errors"] + results["unbatched"]["errors"]
    print(f"errors: {errors}")
    print(f"ratio={results['batched']['rps'] / limit:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

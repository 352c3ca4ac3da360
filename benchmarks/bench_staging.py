"""Benchmark: staging N synthetic dogImages files to S3 with DatasetStager vs a sequential boto3 upload_file loop.

S3 is emulated by moto running as its own process (``python -m moto.server``), reached through a small HTTP
latency shim (another process on 127.0.0.1) that holds every request for 20 ms, as the round trip to a remote S3
region would. Against an in-process moto, concurrency buys nothing (the emulator is the bottleneck); with the
shim, the request latency is what concurrent transfers hide, as they do against real S3.

Measured, for both ways, on the same files:
* first upload into an empty prefix (DatasetStager also decodes, hashes and writes a manifest);
* a second run with nothing changed (the naive loop uploads everything again; DatasetStager finds its manifest).

Run: ``.venv/bin/python benchmarks/bench_staging.py [--files 600] [--workers 16] [--latency-ms 20]``.
The last line is ``ratio=<naive first-upload seconds / DatasetStager first-upload seconds>``.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


# -- the latency shim (runs in its own process: `bench_staging.py --shim LISTEN_PORT UPSTREAM_PORT LATENCY_MS`) ----
def run_shim(listen_port: int, upstream_port: int, latency_s: float) -> None:
    local = threading.local()

    def upstream() -> http.client.HTTPConnection:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=120)
        return conn

    class Shim(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _forward(self) -> None:
            body = self._body()
            time.sleep(latency_s)  # the round trip to a remote region
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            for attempt in range(2):
                conn = upstream()
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    break
                except (http.client.HTTPException, OSError):
                    conn.close()
                    local.conn = None
                    if attempt:
                        raise
            self.send_response(resp.status, resp.reason)
            chunked = resp.getheader("Transfer-Encoding", "").lower() == "chunked"
            for k, v in resp.getheaders():
                if k.lower() not in _HOP and not (chunked and k.lower() == "content-length"):
                    self.send_header(k, v)
            if chunked:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    server = http.server.ThreadingHTTPServer(("127.0.0.1", listen_port), Shim)
    server.daemon_threads = True
    server.serve_forever()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def naive_upload(client, bucket: str, root: Path, files: list[Path]) -> None:
    """What the seed did by hand, as a loop: one upload_file per file, one after the other."""
    for path in files:
        client.upload_file(str(path), bucket, "dogImages/" + path.relative_to(root).as_posix())


def measure_cache(shared: Path) -> None:
    """What the compact cache (short side 256) saves on real photos: bytes, and decode+resize time per image."""
    from PIL import Image

    from dogclf.data.cache import resize_short_side

    photos = sorted(p for p in shared.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        print("cache: no photos found in", shared)
        return
    with tempfile.TemporaryDirectory() as tmp:
        cached = []
        for p in photos:
            dest = Path(tmp) / (p.stem + ".jpg")
            resize_short_side(p, dest, 256)
            cached.append(dest)

        def load_all(paths):
            t = time.perf_counter()
            for _ in range(3):
                for p in paths:
                    with Image.open(p) as im:
                        im.convert("RGB").resize((224, 224))
            return (time.perf_counter() - t) / (3 * len(paths))

        orig_bytes = sum(p.stat().st_size for p in photos)
        cache_bytes = sum(p.stat().st_size for p in cached)
        t_orig, t_cache = load_all(photos), load_all(cached)
    print(f"cache-256 on {len(photos)} real photos ({shared}): {orig_bytes / 1e6:.2f} MB -> {cache_bytes / 1e6:.2f} MB "
          f"({cache_bytes / orig_bytes:.1%} of the originals); decode+resize to 224: {t_orig * 1e3:.1f} ms -> "
          f"{t_cache * 1e3:.1f} ms per image ({t_orig / t_cache:.1f}x faster)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=600, help="number of synthetic images (split 4:1:1)")
    parser.add_argument("--workers", type=int, default=16, help="DatasetStager concurrent transfers")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="added per S3 request by the shim")
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_REGION="us-east-1")
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(key, None)
    import boto3

    from dogclf.data import DatasetStager, make_synthetic_dataset

    moto_port, shim_port = _free_port(), _free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        _wait_port(moto_port)
        procs.append(subprocess.Popen([sys.executable, __file__, "--shim", str(shim_port), str(moto_port),
                                       str(args.latency_ms / 1000)]))
        _wait_port(shim_port)
        endpoint = f"http://127.0.0.1:{shim_port}"
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        print(f"S3: moto server in its own process (port {moto_port}) behind a {args.latency_ms:.0f} ms-per-request "
              f"latency shim at {endpoint}, standing in for a remote S3 region")

        with tempfile.TemporaryDirectory() as tmp:
            classes = 20
            per = max(1, args.files // (classes * 6))
            ds = make_synthetic_dataset(Path(tmp) / "dogImages", classes,
                                        {"train": 4 * per, "valid": per, "test": per}, args.image_size, seed=0)
            files = sorted(Path(ds.root).rglob("*.jpg"))
            n = len(files)
            total_mb = sum(p.stat().st_size for p in files) / 1e6
            print(f"data: {n} synthetic JPEGs ({args.image_size}px, {classes} classes, {total_mb:.1f} MB)")

            client = boto3.client("s3")
            client.create_bucket(Bucket="naive")
            client.create_bucket(Bucket="dogclf")

            t = time.perf_counter()
            naive_upload(client, "naive", ds.root, files)
            naive_first = time.perf_counter() - t
            t = time.perf_counter()
            naive_upload(client, "naive", ds.root, files)
            naive_again = time.perf_counter() - t

            t = time.perf_counter()
            first = DatasetStager(ds, "s3://dogclf/dogImages", workers=args.workers).run()
            dogclf_first = time.perf_counter() - t
            t = time.perf_counter()
            again = DatasetStager(ds, "s3://dogclf/dogImages", workers=args.workers).run()
            dogclf_again = time.perf_counter() - t
            assert first.stats["uploaded"] == n and again.noop, (first.stats, again.stats)
            listed = sum(1 for page in client.get_paginator("list_objects_v2").paginate(Bucket="dogclf")
                         for o in page.get("Contents", ()) if o["Key"].endswith(".jpg"))
            assert listed == n, listed

        print(f"naive sequential upload_file, first upload : {naive_first:7.2f} s  {n / naive_first:8.1f} files/s")
        print(f"naive sequential upload_file, no change    : {naive_again:7.2f} s  {n / naive_again:8.1f} files/s")
        print(f"DatasetStager ({args.workers} workers), first upload : {dogclf_first:7.2f} s  "
              f"{n / dogclf_first:8.1f} files/s  (includes decode check, sha256 and manifest)")
        print(f"DatasetStager ({args.workers} workers), no change    : {dogclf_again:7.2f} s  "
              f"{n / dogclf_again:8.1f} files/s  (manifest found: no-op)")
        print(f"re-run ratio (naive / DatasetStager): {naive_again / dogclf_again:.1f}")
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()

    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "pet_images"
    if shared.is_dir():
        measure_cache(shared)
    print(f"ratio={naive_first / dogclf_first:.2f}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--shim":
        run_shim(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    else:
        main()

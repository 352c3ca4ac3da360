"""Resumable downloads against a real HTTP server on 127.0.0.1 that supports Range and can cut connections."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import threading

import pytest

from dogclf.data.fetch import download
from dogclf.errors import ChecksumMismatchError, ConfigError, DataNotFoundError, DownloadError, InvalidURIError


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):  # noqa: N802
        srv = self.server
        srv.requests.append({"path": self.path, "range": self.headers.get("Range"),
                             "if_range": self.headers.get("If-Range")})
        if self.path == "/broken.zip":
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path != "/dogImages.zip":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body, start = srv.body, 0
        rng = self.headers.get("Range")
        honour = srv.honour_range and rng and (self.headers.get("If-Range") in (None, srv.etag))
        if honour:
            start = int(re.match(r"bytes=(\d+)-", rng).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("ETag", srv.etag)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if srv.cuts:
            cut = srv.cuts.pop(0)
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # drop the connection mid-body
            return
        self.wfile.write(payload)


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.body = os.urandom(300_000)
    httpd.etag = '"v1"'
    httpd.requests = []
    httpd.cuts = []
    httpd.honour_range = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/dogImages.zip"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_download_streams_with_progress_and_checks_sha256(server, tmp_path):
    seen = []
    sha = hashlib.sha256(server.body).hexdigest()
    out = download(server.url, tmp_path / "d.zip", sha256=sha, progress=lambda *a: seen.append(a),
                   chunk_size=64 * 1024)
    assert out.read_bytes() == server.body
    assert seen[-1] == ("download", len(server.body), len(server.body))
    assert [s[1] for s in seen] == sorted(s[1] for s in seen) and len(seen) >= 4
    assert sorted(os.listdir(tmp_path)) == ["d.zip"]
    # already there and matching: no request at all
    n = len(server.requests)
    download(server.url, tmp_path / "d.zip", sha256=sha)
    assert len(server.requests) == n


def test_cut_connection_is_resumed_with_range(server, tmp_path):
    server.cuts = [100_000, 50_000]  # first two responses die part-way
    out = download(server.url, tmp_path / "d.zip", sha256=hashlib.sha256(server.body).hexdigest(),
                   chunk_size=1000, retries=3)
    assert out.read_bytes() == server.body
    assert server.requests[0]["range"] is None
    assert server.requests[1]["range"] == "bytes=100000-" and server.requests[1]["if_range"] == '"v1"'
    assert server.requests[2]["range"] == "bytes=150000-"
    assert len(server.requests) == 3


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    server.cuts = [120_000]
    with pytest.raises(DownloadError, match="120000 bytes kept"):
        download(server.url, tmp_path / "d.zip", retries=0, chunk_size=1000)
    assert (tmp_path / "d.zip.part").stat().st_size == 120_000 and not (tmp_path / "d.zip").exists()
    download(server.url, tmp_path / "d.zip", retries=0)
    assert (tmp_path / "d.zip").read_bytes() == server.body
    assert server.requests[-1]["range"] == "bytes=120000-"
    assert not (tmp_path / "d.zip.part").exists() and not (tmp_path / "d.zip.part.json").exists()


def test_changed_resource_restarts_instead_of_splicing(server, tmp_path):
    server.cuts = [120_000]
    with pytest.raises(DownloadError):
        download(server.url, tmp_path / "d.zip", retries=0, chunk_size=1000)
    server.body, server.etag = os.urandom(200_000), '"v2"'  # the file changed on the server
    download(server.url, tmp_path / "d.zip", retries=0)
    assert (tmp_path / "d.zip").read_bytes() == server.body


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.cuts = [100_000]
    server.honour_range = False
    out = download(server.url, tmp_path / "d.zip", retries=2, chunk_size=8192)
    assert out.read_bytes() == server.body


def test_sha256_mismatch_deletes_the_file(server, tmp_path):
    with pytest.raises(ChecksumMismatchError, match="expected " + "0" * 64):
        download(server.url, tmp_path / "d.zip", sha256="0" * 64)
    assert os.listdir(tmp_path) == []


def test_bad_urls_and_missing_files(server, tmp_path):
    with pytest.raises(DataNotFoundError, match="nope.zip"):
        download(server.url.replace("dogImages", "nope"), tmp_path / "x.zip")
    with pytest.raises(DownloadError, match="HTTP 503"):
        download(server.url.replace("dogImages", "broken"), tmp_path / "x.zip")
    assert os.listdir(tmp_path) == []
    with pytest.raises(InvalidURIError, match="ftp://"):
        download("ftp://example.com/x.zip", tmp_path / "x.zip")
    with pytest.raises(ConfigError, match="64 hex"):
        download(server.url, tmp_path / "x.zip", sha256="abc")
    with pytest.raises(DownloadError, match="after 1 retries"):
        download("http://127.0.0.1:9/x.zip", tmp_path / "x.zip", retries=1, timeout=2)

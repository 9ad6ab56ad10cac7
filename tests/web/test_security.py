"""The web page against a hostile caller (issue 34), served over TLS beside a TLS job API
(`orchestrator serve --http --tls-cert --tls-key`): the page works; uploads over the byte
limit, inputs over the resolution and duration limits (on upload, inspect and preview),
cross-site posts and foreign host names are refused with one line; errors show no server
path; the service's memory stays low."""
from __future__ import annotations

import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ..helpers import REPO, huge_frame_video, unknown_length_video
from ..jobs.conftest import make_tape
from .conftest import free_port, start, stop

TOKEN = "tls-web-token"
MAX_BYTES = 2_000_000
PEAK_MIB = 1.5 * 1024


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (openssl)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


class Page:
    def __init__(self, url: str, cert: Path, process: subprocess.Popen, root: Path):
        self.url, self.process, self.root = url, process, root
        self.context = ssl.create_default_context(cafile=str(cert))

    def call(self, method: str, path: str, body=None, raw: bytes | None = None,
             headers: dict | None = None) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {TOKEN}", **(headers or {})}
        data = raw
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120, context=self.context) as reply:
                return reply.status, json.loads(reply.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def upload(self, path: Path) -> str:
        data = path.read_bytes()
        status, info = self.call("POST", "/api/uploads", {"name": path.name, "size": len(data)})
        assert status == 200, info
        status, info = self.call("PUT", f"/api/uploads/{info['id']}?offset=0", raw=data)
        assert status == 200 and info["complete"], info
        return info["id"]

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls-stack")
    cert, key = make_certificate(root)
    jobs_port, web_port = free_port(), free_port()
    process = start(["-m", "orchestrator", "serve", "--listen", f"127.0.0.1:{jobs_port}",
                     "--http", f"127.0.0.1:{web_port}", "--store", str(root / "store"),
                     "--tls-cert", str(cert), "--tls-key", str(key), "--token", TOKEN,
                     "--max-input-bytes", str(MAX_BYTES), "--max-duration", "5",
                     "--device", "cpu"], root / "serve.log", web_port)
    try:
        yield Page(f"https://127.0.0.1:{web_port}", cert, process, root)
    finally:
        stop(process)


def one_line(reply: dict) -> str:
    error = reply.get("error", "")
    assert error and "\n" not in error, reply
    assert str(REPO) not in error and "/store/" not in error and "/tmp" not in error, error
    return error


def test_the_page_works_over_tls_against_a_tls_job_api(page, tmp_path):
    request = urllib.request.Request(page.url + "/")
    with urllib.request.urlopen(request, timeout=30, context=page.context) as reply:
        assert reply.status == 200 and b"<html" in reply.read().lower()
    status, config = page.call("GET", "/api/config")
    assert status == 200 and config["max_upload_bytes"] == MAX_BYTES
    upload_id = page.upload(make_tape(tmp_path / "tape.mp4", scenes=1, frames=4))
    status, job = page.call("POST", "/api/jobs", {"upload": upload_id, "tasks": ["denoise"]})
    assert status == 200, job
    deadline = time.monotonic() + 180
    while not job["finished"] and time.monotonic() < deadline:
        time.sleep(0.5)
        status, job = page.call("GET", f"/api/jobs/{job['id']}")
    assert job["state"] == "SUCCEEDED", job
    with pytest.raises(OSError):  # plain HTTP is not spoken
        urllib.request.urlopen(page.url.replace("https", "http") + "/api/config", timeout=10)


def test_an_upload_over_the_byte_limit_is_refused(page):
    status, reply = page.call("POST", "/api/uploads", {"name": "big.mp4", "size": MAX_BYTES + 1})
    assert status == 413 and str(MAX_BYTES) in one_line(reply)


def test_inputs_over_the_limits_are_refused_before_decoding_on_every_route(page, tmp_path):
    cases = {huge_frame_video(tmp_path / "huge.mov"): "over the limit of 7680x4320",
             unknown_length_video(tmp_path / "live.mkv", 20): "over the limit of 5s"}
    for path, reason in cases.items():
        upload_id = page.upload(path)
        for route, body in ((f"/api/uploads/{upload_id}/inspect", {"tasks": ["denoise"]}),
                            (f"/api/uploads/{upload_id}/preview", {"tasks": ["denoise"]}),
                            ("/api/jobs", {"upload": upload_id, "tasks": ["denoise"]})):
            status, reply = page.call("POST", route, body)
            assert status == 400 and reason in one_line(reply), (route, reply)
    assert page.call("GET", "/api/jobs")[0] == 200
    print(f"job service + web page peak RSS {page.peak_rss_mib():.0f} MiB")
    assert page.peak_rss_mib() < PEAK_MIB, f"peak {page.peak_rss_mib():.0f} MiB"


def test_cross_site_posts_and_foreign_host_names_are_refused(page):
    body = {"name": "tape.mp4", "size": 10}
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Host": "evil.example"}):
        status, reply = page.call("POST", "/api/uploads", body, headers=headers)
        assert status == 403, (headers, reply)
        one_line(reply)
    assert page.call("GET", "/api/jobs", headers={"Host": "rebound.example"})[0] == 403
    port = page.url.rsplit(":", 1)[1]
    same = {"Origin": f"https://127.0.0.1:{port}"}
    assert page.call("POST", "/api/uploads", body, headers=same)[0] == 200


def test_errors_show_no_server_path(page, tmp_path):
    notes = tmp_path / "notes.mp4"
    notes.write_text("wedding, june 1994\n" * 50)
    upload_id = page.upload(notes)
    status, reply = page.call("POST", f"/api/uploads/{upload_id}/inspect", {"tasks": ["denoise"]})
    assert status == 400 and "notes.mp4" in one_line(reply)

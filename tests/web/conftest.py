"""The web page's stack as real processes on loopback: `orchestrator serve` (the job
service, with a token) and `python -m orchestrator.web` in front of it."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..helpers import REPO

TOKEN = "web-test-token"


@dataclass
class Stack:
    url: str
    jobs: str
    uploads: Path
    token: str

    def request(self, method: str, path: str, body=None, raw: bytes | None = None,
                token: str | None = TOKEN) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = raw
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=120) as reply:
                return reply.status, json.loads(reply.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_service_available() -> bool:
    result = subprocess.run([sys.executable, "-m", "orchestrator", "serve", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    return result.returncode == 0


def wait_for_port(port: int, process: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listening on {port} after {seconds}s:\n{log.read_text()[-3000:]}")


def start(args: list[str], log: Path, port: int) -> subprocess.Popen:
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=out,
                                   stderr=subprocess.STDOUT)
    wait_for_port(port, process, log)
    return process


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not job_service_available():
        pytest.skip("`orchestrator serve` (the job service) is not available")
    root = tmp_path_factory.mktemp("web-stack")
    uploads = root / "web" / "uploads"
    uploads.mkdir(parents=True)
    jobs_port, web_port = free_port(), free_port()
    jobs = start(["-m", "orchestrator", "serve", "--listen", f"127.0.0.1:{jobs_port}",
                  "--store", str(root / "store"), "--input-root", str(uploads),
                  "--token", TOKEN, "--device", "cpu"], root / "jobs.log", jobs_port)
    try:
        web = start(["-m", "orchestrator.web", "--listen", f"127.0.0.1:{web_port}",
                     "--jobs", f"127.0.0.1:{jobs_port}", "--token", TOKEN,
                     "--upload-dir", str(root / "web"), "--device", "cpu",
                     "--chunk-mb", "0.25", "--max-upload-gb", "0.05"], root / "web.log", web_port)
    except BaseException:
        stop(jobs)
        raise
    try:
        yield Stack(f"http://127.0.0.1:{web_port}", f"127.0.0.1:{jobs_port}", uploads, TOKEN)
    finally:
        stop(web)
        stop(jobs)


@pytest.fixture(scope="module")
def tape(tmp_path_factory) -> Path:
    from orchestrator.media.simulate import make_demo_tape
    return make_demo_tape(tmp_path_factory.mktemp("tape") / "wedding tape.mp4", seconds=1)

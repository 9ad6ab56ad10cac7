"""Real processes for the job tests: the orchestrator service, probe stages, small tapes."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from services.stagekit.testing import REPO, free_port, running_service, wait_serving

from ..helpers import textured, write_video

TINTS = [(1.0, 0.3, 0.3), (0.3, 1.0, 0.3), (0.3, 0.3, 1.0), (1.0, 1.0, 0.2), (0.2, 1.0, 1.0),
         (1.0, 0.2, 1.0)]


def make_tape(path: Path, scenes: int = 4, frames: int = 10, size=(64, 48),
              audio_seconds: float | None = None) -> Path:
    """Scenes of differently tinted moving texture: one clip each (shot cuts between)."""
    out = []
    for k in range(scenes):
        tint = np.array(TINTS[k % len(TINTS)])
        out += [np.clip(f * tint, 0, 255).astype(np.uint8) for f in textured(k, size, frames)]
    return write_video(path, out, audio_seconds=audio_seconds)


class Orchestrator:
    """`orchestrator serve` as a real process on 127.0.0.1."""

    def __init__(self, store: Path, *args: str, port: int | None = None, healthy: bool = True):
        self.store = store
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.args = args
        self.log = open(store.parent / f"{store.name}.serve.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "serve", "--listen", self.address,
             "--store", str(store), "--allow-endpoint", "grpc://127.0.0.1:", *args], cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        if healthy:
            wait_serving(self.address, 60, self.proc)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def restart(self) -> "Orchestrator":
        self.stop()
        self.successor = Orchestrator(self.store, *self.args, port=self.port)
        return self.successor

    def stop_all(self) -> None:
        """This one and every one restarted from it."""
        server = self
        while server is not None:
            server.stop()
            server = getattr(server, "successor", None)

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


@pytest.fixture
def orchestrator(tmp_path):
    """A factory: orchestrator(*serve_args) starts one; all are stopped afterwards."""
    started: list[Orchestrator] = []

    def start(*args: str, store: Path | None = None) -> Orchestrator:
        server = Orchestrator(store or tmp_path / "store", *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop_all()


@contextlib.contextmanager
def probe_service(log: Path | None = None, delay: float = 0.0, fail: str = ""):
    env = {"PROBE_LOG": str(log or ""), "PROBE_DELAY": str(delay), "PROBE_FAIL": fail}
    with running_service("tests.jobs.probe_stage", env=env) as address:
        yield address


def start_probe(log: Path, delay: float = 0.0) -> tuple[subprocess.Popen, str]:
    """A probe stage the test kills itself."""
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "PROBE_LOG": str(log), "PROBE_DELAY": str(delay)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.jobs.probe_stage", "--listen", address],
                            cwd=REPO, env=env)
    wait_serving(address, 60, proc)
    return proc, address


def wait_for(check, timeout: float = 120.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


def probe_options(endpoint: str, **extra):
    """Denoise on the probe stage(s), lossless output: outputs compare frame for frame."""
    from orchestrator.jobs.client import jobs_pb2
    options = jobs_pb2.JobOptions(codec="ffv1", native="full", **extra)
    options.stages.add(task="denoise", model="auto", endpoint=endpoint)
    return options


def finished(client, job_id: str, timeout: float = 120.0):
    from orchestrator.jobs.client import state_name
    return wait_for(lambda: (lambda s: s if state_name(s) in ("SUCCEEDED", "FAILED", "CANCELLED")
                             else None)(client.status(job_id)), timeout)


def reference_frames(tape: Path, endpoint: str, tmp_path: Path) -> list[np.ndarray]:
    """The uninterrupted embedded run of the same job."""
    from ..helpers import read_frames, run_cli
    out = tmp_path / "reference.mkv"
    done = run_cli("submit", tape, "-o", out, "--codec", "ffv1", "--native", "full", "-q",
                   "--stages", "denoise", "--endpoint", f"denoise={endpoint}", timeout=300)
    assert done.returncode == 0, done.stderr
    return read_frames(out)


def clips_logged(log: Path) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []

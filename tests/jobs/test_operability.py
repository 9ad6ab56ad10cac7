"""Operating the services: a stage restart waited out, a stage server drained, health
answered while every stream is busy, a stage that stays down failing the job in time."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orchestrator.jobs.client import JobClient, state_name
from services.stagekit import ClipInfo
from services.stagekit.client import StageClient
from services.stagekit.testing import REPO, free_port, wait_serving

from .conftest import clips_logged, finished, make_tape, probe_options, reference_frames, wait_for
from .test_recovery import fetch_frames, same_frames

OUTAGE = 20.0   # seconds the stage stays down in the restart test


def start_probe_at(address: str, log, delay: float = 0.0, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PROBE_LOG": str(log), "PROBE_DELAY": str(delay)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.jobs.probe_stage", "--listen", address,
                             *args], cwd=REPO, env=env)
    wait_serving(address, 60, proc)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def health(address: str, timeout: float = 2.0) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=timeout).status


def clip(frames: int, clip_id: str = "clip00000") -> tuple[ClipInfo, list[np.ndarray]]:
    pictures = [np.full((24, 32, 3), i % 256, np.uint8) for i in range(frames)]
    return ClipInfo(clip_id, width=32, height=24, fps=Fraction(25)), pictures


def stream_in_background(address: str, frames: int, clip_id: str = "clip00000") -> dict:
    """Send one clip from a thread; the dict gets 'frames' (what came back) or 'error'."""
    result: dict = {}

    def send():
        info, pictures = clip(frames, clip_id)
        try:
            with StageClient(address, timeout=120) as client:
                _, out = client.process(info, pictures, task="denoise")
                result["frames"] = list(out)
        except grpc.RpcError as exc:
            result["error"] = exc.code()

    result["thread"] = threading.Thread(target=send, daemon=True)
    result["thread"].start()
    return result


def job_across(tmp_path, orchestrator, delay: float, interrupt, *serve_args) -> list[str]:
    """A job on one probe stage at a fixed address; ``interrupt(stage, restart, client, job)``
    runs once clip00001 has started and returns the stage process serving afterwards
    (``restart()`` starts one on the same address). The job must succeed with the frames of
    an uninterrupted run. Returns the clips the job's stage processes logged, in order."""
    tape = make_tape(tmp_path / "tape.mp4", scenes=4)
    log = tmp_path / "probe.log"
    address = f"127.0.0.1:{free_port()}"
    endpoint = f"grpc://{address}"
    stage = start_probe_at(address, log, delay)
    try:
        server = orchestrator(*serve_args)
        with JobClient(server.address) as client:
            job = client.submit(tape, probe_options(endpoint))
            wait_for(lambda: "clip00001" in clips_logged(log), interval=0.02)
            stage = interrupt(stage, lambda: start_probe_at(address, log, 0.0), client, job)
            status = finished(client, job.job_id)
            assert state_name(status) == "SUCCEEDED", status.error
            got = fetch_frames(client, job.job_id, tmp_path)
        logged = clips_logged(log)   # before the reference run adds its own
        assert same_frames(got, reference_frames(tape, endpoint, tmp_path))
        return logged
    finally:
        stop(stage)


def test_stage_killed_mid_job_and_back_20s_later_the_job_completes(tmp_path, orchestrator):
    def outage(stage, restart, client, job):
        stage.send_signal(signal.SIGKILL)
        stage.wait()
        time.sleep(OUTAGE)
        assert state_name(client.status(job.job_id)) == "RUNNING"   # waiting, not failed
        return restart()

    job_across(tmp_path, orchestrator, 0.05, outage, "--stage-outage", "90")


def test_a_stage_down_longer_than_the_outage_window_fails_the_job(tmp_path):
    from orchestrator.pipeline.specs import StageSpec
    from orchestrator.pipeline.stagerunners import ClipFailed, RemoteRunner
    spec = StageSpec("denoise", "probe", {}, f"grpc://127.0.0.1:{free_port()}")
    runner = RemoteRunner(spec, outage=2.0)
    info, pictures = clip(2)
    started = time.monotonic()
    with pytest.raises(ClipFailed) as failed:
        runner.run(info, iter(pictures))
    assert failed.value.final and "no replica answers" in failed.value.reason
    assert 2.0 <= time.monotonic() - started < 15


def test_drained_stage_answers_not_serving_refuses_new_clips_finishes_the_one_in_flight(tmp_path):
    log = tmp_path / "probe.log"
    address = f"127.0.0.1:{free_port()}"
    stage = start_probe_at(address, log, 0.1)
    try:
        in_flight = stream_in_background(address, 30)
        wait_for(lambda: clips_logged(log), interval=0.02)
        stage.send_signal(signal.SIGTERM)
        wait_for(lambda: health(address) == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=15)
        refused = stream_in_background(address, 2, "clip00001")
        refused["thread"].join(timeout=30)
        assert refused.get("error") == grpc.StatusCode.UNAVAILABLE
        in_flight["thread"].join(timeout=60)
        assert len(in_flight.get("frames", [])) == 30, in_flight.get("error")
        assert stage.wait(timeout=30) == 0
        assert clips_logged(log) == ["clip00000"]
    finally:
        stop(stage)


def test_health_answers_while_every_stream_is_busy(tmp_path):
    log = tmp_path / "probe.log"
    address = f"127.0.0.1:{free_port()}"
    stage = start_probe_at(address, log, 0.1, "--workers", "2")
    try:
        busy = [stream_in_background(address, 25, f"clip{i:05d}") for i in range(2)]
        wait_for(lambda: len(clips_logged(log)) == 2, interval=0.02)
        clock = time.monotonic()
        assert health(address, timeout=1.0) == health_pb2.HealthCheckResponse.SERVING
        assert time.monotonic() - clock < 1.0
        extra = stream_in_background(address, 2, "clip00002")
        extra["thread"].join(timeout=30)
        assert extra.get("error") == grpc.StatusCode.RESOURCE_EXHAUSTED
        for stream in busy:
            stream["thread"].join(timeout=60)
            assert len(stream.get("frames", [])) == 25
    finally:
        stop(stage)


@pytest.mark.slow
def test_keepalive_sees_a_frozen_stage_in_seconds(tmp_path):
    """A stage that stops answering mid-clip (SIGSTOP: a node gone without a word) fails
    the clip within keepalive time + timeout, not at the clip's one-hour deadline."""
    from services.stagekit.server import KEEPALIVE_S, KEEPALIVE_TIMEOUT_S
    log = tmp_path / "probe.log"
    address = f"127.0.0.1:{free_port()}"
    stage = start_probe_at(address, log, 30.0)
    try:
        stream = stream_in_background(address, 2)   # sent at once, answered slowly
        wait_for(lambda: clips_logged(log), interval=0.02)
        time.sleep(1.0)
        stage.send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        stream["thread"].join(timeout=KEEPALIVE_S + KEEPALIVE_TIMEOUT_S + 20)
        assert not stream["thread"].is_alive(), "the client still waits on a frozen stage"
        assert stream.get("error") == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - frozen < 2 * (KEEPALIVE_S + KEEPALIVE_TIMEOUT_S)
    finally:
        stage.send_signal(signal.SIGCONT)
        stop(stage)


@pytest.mark.slow
def test_a_rollout_of_the_only_replica_finishes_the_clip_in_flight_and_the_job(tmp_path, orchestrator):
    """SIGTERM (a rollout): the clip in flight is finished, not redone; the next clips wait
    for the new process on the same address."""
    from collections import Counter

    def rollout(stage, restart, client, job):
        stage.send_signal(signal.SIGTERM)
        assert stage.wait(timeout=60) == 0
        return restart()

    logged = job_across(tmp_path, orchestrator, 0.1, rollout)
    assert Counter(logged)["clip00001"] == 1, logged

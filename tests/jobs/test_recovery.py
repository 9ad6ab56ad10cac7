"""Acceptance 1-3: a killed orchestrator, a killed replica, a stage that always fails."""
from __future__ import annotations

import signal
from collections import Counter

import numpy as np

from orchestrator.jobs.client import JobClient, state_name

from ..helpers import read_frames
from .conftest import (clips_logged, finished, make_tape, probe_options, probe_service,
                       reference_frames, start_probe, wait_for)


def fetch_frames(client, job_id, tmp_path):
    return read_frames(client.fetch(job_id, tmp_path / f"{job_id}.mkv"))


def same_frames(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_sigkill_mid_job_resumes_without_redoing_clips(tmp_path, orchestrator):
    tape = make_tape(tmp_path / "tape.mp4", scenes=4)
    log = tmp_path / "probe.log"
    with probe_service(log, delay=0.08) as stage:
        endpoint = f"grpc://{stage}"
        server = orchestrator()
        with JobClient(server.address) as client:
            job = client.submit(tape, probe_options(endpoint))
            wait_for(lambda: client.status(job.job_id).clips_done >= 2, timeout=120, interval=0.05)
        server.kill()
        kept = server.store / "jobs" / job.job_id / "clips"
        done_before = sorted(p.stem for p in kept.glob("clip*.json"))
        processed_before = clips_logged(log)
        assert 2 <= len(done_before) < 4

        server = server.restart()
        with JobClient(server.address) as client:
            status = finished(client, job.job_id)
            assert state_name(status) == "SUCCEEDED", status.error
            got = fetch_frames(client, job.job_id, tmp_path)
        processed_after = clips_logged(log)[len(processed_before):]
        assert not set(done_before) & set(processed_after), "a finished clip was processed again"
        assert Counter(clips_logged(log))["clip00003"] == 1
        assert same_frames(got, reference_frames(tape, endpoint, tmp_path))


def test_killed_replica_the_job_completes_on_the_other(tmp_path, orchestrator):
    tape = make_tape(tmp_path / "tape.mp4", scenes=4)
    log = tmp_path / "probe.log"
    first, a = start_probe(log, delay=0.05)
    second, b = start_probe(log, delay=0.05)
    try:
        server = orchestrator()
        with JobClient(server.address) as client:
            job = client.submit(tape, probe_options(f"grpc://{a},grpc://{b}"))
            # clip00001 goes to the second replica: kill it while it works on it
            wait_for(lambda: f"clip00001 {second.pid}" in log.read_text() if log.exists() else False,
                     interval=0.02)
            second.send_signal(signal.SIGKILL)
            second.wait()
            status = finished(client, job.job_id)
            assert state_name(status) == "SUCCEEDED", status.error
            got = fetch_frames(client, job.job_id, tmp_path)
        assert same_frames(got, reference_frames(tape, f"grpc://{a}", tmp_path))
        retried = [line for line in log.read_text().splitlines() if line.startswith("clip00001")]
        assert retried[-1].endswith(str(first.pid))
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.terminate()
                proc.wait()


def test_stage_failing_every_request_fails_the_job_keeps_its_work(tmp_path, orchestrator):
    tape = make_tape(tmp_path / "tape.mp4", scenes=4)
    with probe_service(fail="clip00002") as stage:
        server = orchestrator("--max-attempts", "2")
        with JobClient(server.address) as client:
            job = client.submit(tape, probe_options(f"grpc://{stage}"))
            status = finished(client, job.job_id)
            assert state_name(status) == "FAILED"
            assert status.failed_stage.startswith("denoise/probe")
            assert "probe lamp blew on clip00002" in status.error
            folder = server.store / "jobs" / job.job_id
            assert (folder / "input" / "tape.mp4").read_bytes() == tape.read_bytes()
            assert sorted(p.stem for p in (folder / "clips").glob("*.json")) == ["clip00000", "clip00001"]
            # the service is still up and serving
            assert [j.job_id for j in client.list()] == [job.job_id]
            second = client.submit(tape, probe_options(f"grpc://{stage}", keep_going=True))
            status = finished(client, second.job_id)
            assert state_name(status) == "FAILED" and "clip00002" in status.error
            kept = sorted(p.stem for p in (server.store / "jobs" / second.job_id / "clips").glob("*.json"))
            assert kept == ["clip00000", "clip00001", "clip00003"]  # went on past the failure

"""Shutdown, metrics, TLS to stage services, and the CLI of the job service."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request

from orchestrator.jobs.client import JobClient, state_name
from services.stagekit.testing import REPO, free_port, running_service

from ..helpers import read_frames, run_cli
from .conftest import (clips_logged, finished, make_tape, probe_options, probe_service,
                       reference_frames, wait_for)
from .test_admission import make_cert


def metrics(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def test_sigterm_stops_cleanly_and_the_job_resumes(tmp_path, orchestrator):
    tape = make_tape(tmp_path / "tape.mp4", scenes=4)
    log = tmp_path / "probe.log"
    with probe_service(log, delay=0.08) as stage:
        server = orchestrator()
        with JobClient(server.address) as client:
            job = client.submit(tape, probe_options(f"grpc://{stage}"))
            wait_for(lambda: client.status(job.job_id).clips_done >= 1, interval=0.05)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=30) == 0
        done_before = sorted(p.stem for p in (server.store / "jobs" / job.job_id / "clips").glob("*.json"))
        logged_before = len(clips_logged(log))
        server = server.restart()
        with JobClient(server.address) as client:
            status = finished(client, job.job_id)
        assert state_name(status) == "SUCCEEDED", status.error
        assert not set(done_before) & set(clips_logged(log)[logged_before:])


def test_metrics_of_orchestrator_and_stage(tmp_path, orchestrator):
    tape = make_tape(tmp_path / "tape.mp4", scenes=2, frames=8)
    stage_port, jobs_port = free_port(), free_port()
    with running_service("tests.jobs.probe_stage", "--metrics-port", str(stage_port)) as stage:
        server = orchestrator("--metrics-port", str(jobs_port))
        with JobClient(server.address) as client:
            job = client.submit(tape, probe_options(f"grpc://{stage}"))
            assert state_name(finished(client, job.job_id)) == "SUCCEEDED"
        text = metrics(jobs_port)
        assert "orchestrator_clips_done_total 2.0" in text
        assert "orchestrator_frames_done_total 16.0" in text
        assert 'orchestrator_jobs_ended_total{state="succeeded"} 1.0' in text
        assert "orchestrator_jobs_queued 0.0" in text
        text = metrics(stage_port)
        assert 'stage_frames_total{model="probe",task="denoise"} 16.0' in text
        # the stream's bookkeeping ends just after the client has its last frame
        wait_for(lambda: "restoration_stage_inflight_clips 0.0" in metrics(stage_port), timeout=10)
        assert "stage_clip_seconds_count 2.0" in text


def test_mutual_tls_to_a_stage_service(tmp_path):
    cert, key = make_cert(tmp_path)
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "tests.jobs.probe_stage", "--listen", address,
                             "--tls-cert", cert, "--tls-key", key, "--tls-client-ca", cert], cwd=REPO)
    try:
        from services.stagekit.client import StageClient
        env = {"RESTORATION_TLS_CA": str(cert), "RESTORATION_TLS_CERT": str(cert),
               "RESTORATION_TLS_KEY": str(key)}
        os.environ.update(env)
        try:
            wait_for(lambda: _describes(StageClient(address, timeout=5)), timeout=60)
        finally:
            for name in env:
                os.environ.pop(name)
        assert not _describes(StageClient(address, timeout=5)), "a plaintext client got in"
    finally:
        proc.terminate()
        proc.wait()


def _describes(client) -> bool:
    try:
        return bool(client.describe())
    except Exception:
        return False
    finally:
        client.close()


def test_cli_submit_to_server_status_list_fetch(tmp_path, orchestrator):
    tape = make_tape(tmp_path / "tape.mp4", scenes=2, frames=8)
    with probe_service() as stage:
        server = orchestrator()
        out = tmp_path / "restored.mkv"
        flags = ("--server", server.address)
        done = run_cli("submit", tape, "-o", out, "--codec", "ffv1", "--native", "full",
                       "--stages", "denoise", "--endpoint", f"denoise=grpc://{stage}", *flags)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == str(out)
        assert ("clip " in done.stderr or "finding shots" in done.stderr) and "elapsed" in done.stderr
        job_id = done.stderr.split("job ", 1)[1].split()[0]
        assert len(read_frames(out)) == 16
        status = run_cli("status", job_id, *flags)
        assert status.returncode == 0 and "SUCCEEDED" in status.stdout and "clips 2/2" in status.stdout
        assert job_id in run_cli("list", *flags).stdout
        again = tmp_path / "again.mkv"
        assert run_cli("fetch", job_id, "-o", again, *flags).returncode == 0
        assert again.read_bytes() == out.read_bytes()
        watched = run_cli("watch", job_id, *flags)
        assert watched.returncode == 0 and "SUCCEEDED" in watched.stdout
        missing = run_cli("status", "nosuchjob", *flags)
        assert missing.returncode == 1 and "no job 'nosuchjob'" in missing.stderr


def test_cli_cancel_a_running_job(tmp_path, orchestrator):
    tape = make_tape(tmp_path / "tape.mp4", scenes=4)
    with probe_service(delay=0.2) as stage:
        server = orchestrator()
        with JobClient(server.address) as client:
            job = client.submit(tape, probe_options(f"grpc://{stage}"))
            wait_for(lambda: state_name(client.status(job.job_id)) == "RUNNING")
            cancelled = run_cli("cancel", job.job_id, "--server", server.address)
            assert cancelled.returncode == 0, cancelled.stderr
            assert state_name(finished(client, job.job_id)) == "CANCELLED"
            assert not (server.store / "jobs" / job.job_id / "clips").exists()


def test_embedded_run_interrupted_says_how_to_resume_and_resumes(tmp_path):
    tape = make_tape(tmp_path / "tape.mp4", scenes=4)
    log = tmp_path / "probe.log"
    out = tmp_path / "out.mkv"
    with probe_service(log, delay=0.08) as stage:
        endpoint = f"grpc://{stage}"
        cmd = [sys.executable, "-m", "orchestrator", "submit", str(tape), "-o", str(out),
               "--codec", "ffv1", "--native", "full", "-q", "--stages", "denoise",
               "--endpoint", f"denoise={endpoint}"]
        proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
        clips = tmp_path / ".out.mkv.clips"
        wait_for(lambda: len(list(clips.glob("clip*.json"))) >= 2, interval=0.05)
        proc.send_signal(signal.SIGINT)                       # Ctrl-C
        interrupted = proc.communicate(timeout=60)[1]
        assert proc.returncode == 130
        assert "finished clip(s) kept" in interrupted and "run the same command again" in interrupted
        done_before = sorted(p.stem for p in clips.glob("clip*.json"))
        logged_before = len(clips_logged(log))
        other_codec = [("h264" if arg == "ffv1" else arg) for arg in cmd]   # another run
        other = subprocess.run(other_codec, cwd=REPO, capture_output=True, text=True)
        assert other.returncode == 1 and "--restart discards them" in other.stderr, other.stderr
        assert sorted(p.stem for p in clips.glob("clip*.json")) == done_before  # nothing lost
        resumed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)  # the default
        assert resumed.returncode == 0, resumed.stderr
        assert "resuming:" in resumed.stderr
        assert not set(done_before) & set(clips_logged(log)[logged_before:])
        assert not clips.exists()
        got = read_frames(out)
        want = reference_frames(tape, endpoint, tmp_path)
    assert len(got) == len(want) and all((a == b).all() for a, b in zip(got, want))

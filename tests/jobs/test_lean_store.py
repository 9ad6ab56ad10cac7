"""Lean disks: checkpoints are the clips' encoded segments, deleted once the output is
written; a job killed mid-way resumes to the output an uninterrupted run gives."""
from __future__ import annotations

import av
import grpc
import numpy as np
import pytest

from orchestrator.jobs.client import JobClient, jobs_pb2, state_name

from ..helpers import read_frames, run_cli
from .conftest import clips_logged, finished, make_tape, probe_service, wait_for

FPS = 24


def h264_options(endpoint: str):
    options = jobs_pb2.JobOptions(codec="h264", crf=18, native="full")
    options.stages.add(task="denoise", model="auto", endpoint=endpoint)
    return options


def video_bytes(path, frames: int) -> int:
    """Bytes of the first ``frames`` pictures of a file's video stream, as encoded."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(p.size for p in container.demux(stream)
                   if p.pts is not None and round(p.pts * stream.time_base * FPS) < frames)


def audio_packets(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for p in container.demux(audio=0) if p.size)


def files_under(folder) -> dict:
    return {p: p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def test_killed_job_resumes_lean_to_the_uninterrupted_output(tmp_path, orchestrator):
    tape = make_tape(tmp_path / "tape.mp4", scenes=4, frames=2 * FPS, size=(96, 72),
                     audio_seconds=8)                           # an 8-second job
    log = tmp_path / "probe.log"
    with probe_service(log, delay=0.03) as stage:
        endpoint = f"grpc://{stage}"
        server = orchestrator()
        with JobClient(server.address) as client:
            job = client.submit(tape, h264_options(endpoint))
            wait_for(lambda: client.status(job.job_id).clips_done >= 2, interval=0.05)
        server.kill()
        clips = server.store / "jobs" / job.job_id / "clips"
        done_before = sorted(p.stem for p in clips.glob("clip*.json"))
        assert 2 <= len(done_before) < 4
        kept_bytes = sum(files_under(clips).values())
        logged_before = len(clips_logged(log))

        server = server.restart()
        with JobClient(server.address) as client:
            status = finished(client, job.job_id)
            assert state_name(status) == "SUCCEEDED", status.error
            got = client.fetch(job.job_id, tmp_path / "got.mp4")
        assert not set(done_before) & set(clips_logged(log)[logged_before:]), "a clip was redone"

        output = server.store / "jobs" / job.job_id / "output" / "tape.restored.mp4"
        # Besides the output only the job's pictures for the page (latest.*, progress.json)
        # may stay: no segment, no upload.
        left = [p.relative_to(output.parents[1]) for p in files_under(server.store / "jobs")]
        assert output.relative_to(output.parents[1]) in left
        assert [p for p in left if p.parts[0] in ("clips", "input")] == [], left
        others = sum(files_under(server.store).values()) - output.stat().st_size
        assert others < 3 * 1024 ** 2, f"{others} bytes besides the output"
        encoded_so_far = video_bytes(output, len(done_before) * 2 * FPS)
        assert kept_bytes <= 1.5 * encoded_so_far, (kept_bytes, encoded_so_far)

        reference = tmp_path / "reference.mp4"
        done = run_cli("submit", tape, "-o", reference, "--crf", "18", "--native", "full", "-q",
                       "--stages", "denoise", "--endpoint", f"denoise={endpoint}", timeout=300)
        assert done.returncode == 0, done.stderr
    want, frames = read_frames(reference), read_frames(got)
    assert len(frames) == len(want) == 4 * 2 * FPS
    worst = max(np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(frames, want))
    assert worst < 1.0, f"frames differ by {worst:.2f} levels on average"
    assert audio_packets(got) == audio_packets(reference) > 0


def test_cancelled_job_keeps_no_checkpoints_and_outputs_expire(tmp_path, orchestrator):
    tape = make_tape(tmp_path / "tape.mp4", scenes=3, frames=8)
    with probe_service(delay=0.1) as stage:
        endpoint = f"grpc://{stage}"
        server = orchestrator("--keep-outputs", "0.00005")       # about 4 s
        with JobClient(server.address) as client:
            job = client.submit(tape, h264_options(endpoint))
            wait_for(lambda: client.status(job.job_id).clips_done >= 1, interval=0.05)
            client.cancel(job.job_id)
            assert state_name(finished(client, job.job_id)) == "CANCELLED"
            clips = server.store / "jobs" / job.job_id / "clips"
            wait_for(lambda: not any(clips.glob("*")), timeout=10)

            second = client.submit(tape, h264_options(endpoint))
            assert state_name(finished(client, second.job_id)) == "SUCCEEDED"
            output = server.store / "jobs" / second.job_id / "output" / "tape.restored.mp4"
            wait_for(lambda: not output.exists(), timeout=30)
            with pytest.raises(grpc.RpcError) as late:
                client.fetch(second.job_id, tmp_path / "late.mp4")
            assert late.value.code() == grpc.StatusCode.NOT_FOUND and "expired" in late.value.details()
            assert second.job_id in [j.job_id for j in client.list()]   # still listed

"""Issue 27: what the job service tells about a job is consistent and useful while it waits,
runs and after it ends: queue position, a clip total fixed from the start, the latest
finished clip (picture and video) while it runs, frames and rates kept once it ended."""
from __future__ import annotations

import io

import av

from orchestrator.jobs.client import JobClient, describe, jobs_pb2, state_name

from .conftest import finished, make_tape, probe_options, probe_service, wait_for


def test_a_job_seen_while_queued_running_and_ended(tmp_path, orchestrator):
    tape = make_tape(tmp_path / "tape.mp4", scenes=4, frames=10)
    with probe_service(delay=0.08) as stage:
        server = orchestrator("--max-running", "1")
        with JobClient(server.address) as client:
            first = client.submit(tape, probe_options(f"grpc://{stage}"))
            second = client.submit(tape, probe_options(f"grpc://{stage}"))
            wait_for(lambda: state_name(client.status(first.job_id)) == "RUNNING", interval=0.05)
            queued = client.status(second.job_id)
            assert state_name(queued) == "QUEUED" and queued.queue_position == 1
            assert "QUEUED (next to start)" in describe(queued)

            # The clip total is known from the shot scan, before the first clip is done.
            running = wait_for(lambda: (lambda s: s if s.clips_total else None)(
                client.status(first.job_id)), interval=0.05)
            assert running.clips_total == 4 and running.clips_done < 4
            # The latest finished clip, picture and video, while the job still runs.
            status = wait_for(lambda: (lambda s: s if s.latest_clip else None)(
                client.status(first.job_id)), interval=0.05)
            assert state_name(status) == "RUNNING", "the job ended before a clip could be seen"
            assert status.thumbnail[:2] == b"\xff\xd8"          # a JPEG
            chunks = list(client.stub.FetchLatestClip(jobs_pb2.JobRef(job_id=first.job_id)))
            assert chunks[0].info.file_name == f"{status.latest_clip}.mp4"
            with av.open(io.BytesIO(b"".join(c.data for c in chunks[1:]))) as video:
                frames = list(video.decode(video=0))
            assert len(frames) == 10 and frames[0].height <= 360

            client.cancel(second.job_id)
            done = finished(client, first.job_id)
            assert state_name(done) == "SUCCEEDED", done.error
            cancelled = client.status(second.job_id)
            assert state_name(cancelled) == "CANCELLED" and cancelled.queue_position == 0

            # An ended job keeps its clip total and each stage's figures.
            done = client.status(first.job_id)
            assert done.clips_total == 4 and done.frames_done == done.frames_total == 40
            assert [s.name for s in done.stages] == ["denoise/probe"]
            assert done.stages[0].frames == 40

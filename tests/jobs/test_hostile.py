"""The job API against a client with a valid token who means harm (issue 34): each
attempt is refused with one line, the service keeps answering and its memory stays low."""
from __future__ import annotations

import hashlib
import threading

import grpc
import pytest

from orchestrator.jobs.client import JobClient, jobs_pb2

from ..helpers import huge_frame_video, refers_to, unknown_length_video
from .conftest import make_tape, probe_options, probe_service, wait_for

PEAK_MIB = 1.5 * 1024


def upload(name: str, data: bytes, options=None):
    info = jobs_pb2.UploadInfo(file_name=name, size=len(data),
                               sha256=hashlib.sha256(data).hexdigest())
    start = jobs_pb2.SubmitStart(options=options or local_options(), upload=info)
    yield jobs_pb2.SubmitRequest(start=start)
    for offset in range(0, len(data), 1 << 20):
        yield jobs_pb2.SubmitRequest(data=data[offset:offset + (1 << 20)])


def local_options(**params):
    options = jobs_pb2.JobOptions(codec="ffv1", native="full")
    options.stages.add(task="denoise", model="classical")
    if params:
        options.stages.add(task="colorize", model="classical", params=params)
    return options


def refused(client, messages) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        client.submit_raw(messages)
    error = caught.value
    assert "\n" not in error.details(), error.details()
    return error


def test_files_that_name_other_files_and_inputs_past_the_limits_are_refused(tmp_path, orchestrator):
    roots, outside = tmp_path / "inputs", tmp_path / "outside"
    roots.mkdir()
    outside.mkdir()
    secret = make_tape(outside / "secret.ts", scenes=1, frames=6)
    server = orchestrator("--input-root", str(roots), "--max-duration", "5",
                          "--allow-endpoint", "grpc://127.0.0.2:5115")
    playlist = refers_to(tmp_path / "a.m3u8", secret, "hls").read_bytes()
    concat = refers_to(tmp_path / "list.txt", secret, "concat").read_bytes()
    cases = {
        "HLS playlist": (upload("a.m3u8", playlist), "HLS playlist"),
        "HLS playlist named .mp4": (upload("a.mp4", playlist), "HLS playlist"),
        "concat list": (upload("list.ffconcat", concat), "concat list"),
        "concat list named .mkv": (upload("list.mkv", concat), "concat list"),
        "16000x16000 frame": (upload("huge.mov", huge_frame_video(tmp_path / "huge.mov").read_bytes()),
                              "over the limit of 7680x4320"),
        "unknown duration": (upload("live.mkv", unknown_length_video(tmp_path / "live.mkv", 20).read_bytes()),
                             "over the limit of 5s"),
        "name ending in a newline": (upload("tape.mp4\n", secret.read_bytes()),
                                     "a plain file name is required"),
    }
    with JobClient(server.address) as client:
        for what, (messages, reason) in cases.items():
            error = refused(client, messages)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, what
            assert reason in error.details(), f"{what}: {error.details()}"
        (roots / "inside.m3u8").write_bytes(playlist)
        error = refused(client, [jobs_pb2.SubmitRequest(start=jobs_pb2.SubmitStart(
            options=local_options(), server_path=str(roots / "inside.m3u8")))])
        assert "HLS playlist" in error.details() and str(roots) not in error.details()

        # A colour reference outside the roots: one answer whether it exists or not.
        (outside / "photo.png").write_bytes(b"\x89PNG not really")
        answers = set()
        for name in ("photo.png", "missing.png", "../outside/photo.png"):
            error = refused(client, upload("tape.mp4", secret.read_bytes(),
                                           local_options(reference=str(outside / name))))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            answers.add(error.details())
        assert answers == {"colorize.reference: not allowed (a job may name only files inside "
                           "the server's input roots)"}

        # The allow-list compares ports, not string prefixes.
        options = jobs_pb2.JobOptions()
        options.stages.add(task="denoise", endpoint="grpc://127.0.0.2:51159")
        error = refused(client, upload("tape.mp4", secret.read_bytes(), options))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED

        assert client.list() is not None  # still answering
    print(f"job service peak RSS {server.peak_rss_mib():.0f} MiB")
    assert server.peak_rss_mib() < PEAK_MIB, f"peak {server.peak_rss_mib():.0f} MiB"
    log = (server.store.parent / f"{server.store.name}.serve.log").read_text()
    assert "tape.mp4\n" not in log  # the newline shown escaped, never a forged log line


def test_list_answers_while_64_watches_are_open(tmp_path, orchestrator):
    server = orchestrator()
    tape = make_tape(tmp_path / "tape.mp4", scenes=1, frames=6)
    with probe_service(delay=1.0) as stage, JobClient(server.address) as client:
        job = client.submit(tape, probe_options(f"grpc://{stage}"))
        streams, first = [], threading.Semaphore(0)

        def follow():
            stream = client.watch(job.job_id)
            streams.append(stream)
            try:
                for _ in stream:
                    first.release()
            except grpc.RpcError:
                pass

        threads = [threading.Thread(target=follow, daemon=True) for _ in range(64)]
        for thread in threads:
            thread.start()
        for _ in threads:
            assert first.acquire(timeout=60)  # every watch is open and has had a status
        assert [s.job_id for s in client.stub.List(jobs_pb2.ListRequest(), timeout=5,
                                                    metadata=client.metadata).jobs] == [job.job_id]
        assert client.status(job.job_id).job_id == job.job_id
        with pytest.raises(grpc.RpcError) as caught:
            next(iter(client.watch(job.job_id)))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "watchers" in caught.value.details()
        client.cancel(job.job_id)
        for stream in streams:
            stream.cancel()
        for thread in threads:
            thread.join(timeout=30)
        wait_for(lambda: client.status(job.job_id).state == jobs_pb2.CANCELLED, 60)

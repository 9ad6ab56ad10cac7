"""The size flags reach a job run by the service: honoured, or refused at submission."""
from __future__ import annotations

import grpc
import pytest

from orchestrator.jobs.client import JobClient, jobs_pb2, state_name

from ..helpers import read_frames
from .conftest import finished, make_tape


def superres_options(**sizes):
    options = jobs_pb2.JobOptions(codec="ffv1", native="full", **sizes)
    options.stages.add(task="superres", model="classical")
    return options


def test_the_service_honours_scale_and_refuses_a_bad_one(tmp_path, orchestrator):
    server = orchestrator()
    tape = make_tape(tmp_path / "tape.mp4", scenes=1, frames=4)     # 64x48
    with JobClient(server.address) as client:
        job = client.submit(tape, superres_options(scale="2"))
        status = finished(client, job.job_id)
        assert state_name(status) == "SUCCEEDED", status.error
        out = read_frames(client.fetch(job.job_id, tmp_path / "out.mkv"))
        assert out[0].shape[:2] == (96, 128)
        with pytest.raises(grpc.RpcError) as caught:
            client.submit(tape, superres_options(scale="3"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "--scale 3: expected auto, 1, 2 or 4" in caught.value.details()
        job = client.submit(tape, superres_options(scale="4", max_height=100))
        status = finished(client, job.job_id)
        assert state_name(status) == "FAILED"
        assert "above --max-height 100" in status.error

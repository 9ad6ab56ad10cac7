"""A job's precision: `submit --server --precision` builds that job's in-process neural
stages in it (another job on the same server keeps the server's own --precision), and a
precision the server's device cannot run is refused at submit, before any work."""
from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from orchestrator.jobs.client import JobClient, jobs_pb2, state_name
from services.stagekit import randomweights
from services.stagekit.testing import REPO

from ..helpers import run_cli
from .conftest import finished, make_tape, wait_for

STAGE = "deblur/mmprnn"      # MMP-RNN: the smallest network whose weights take a second


def built_in(server, precision: str) -> bool:
    """Whether the service's log says an in-process STAGE was built in ``precision``."""
    server.log.flush()
    text = (server.store.parent / f"{server.store.name}.serve.log").read_text()
    return f"{STAGE}: in-process on cpu in {precision}" in text


def test_a_jobs_precision_reaches_its_stages_and_fp16_is_refused_on_a_cpu_server(
        tmp_path, orchestrator, monkeypatch):
    store = tmp_path / "weights"
    randomweights.install("mmprnn", store)
    monkeypatch.setenv("RESTORATION_WEIGHTS", str(store))    # the server's weights store
    server = orchestrator("--device", "cpu", "--precision", "fp32")
    tape = make_tape(tmp_path / "tape.mp4", scenes=1, frames=4)
    job_flags = ["--server", server.address, "--stages", "deblur", "--model", "deblur=mmprnn",
                 "--codec", "ffv1", "-q", "-y"]

    refused = run_cli("submit", tape, *job_flags, "--precision", "fp16", timeout=120)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "error: this job service: precision fp16 needs a CUDA device (use bf16 or fp32 on the CPU)"]
    with JobClient(server.address) as client:
        for precision, reason in (("fp16", "needs a CUDA device"), ("fp8", "must be one of")):
            with pytest.raises(grpc.RpcError) as caught:
                client.submit(tape, _options(precision))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason in caught.value.details()

    submit = subprocess.Popen([sys.executable, "-m", "orchestrator", "submit", str(tape),
                               *job_flags, "--precision", "bf16"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with JobClient(server.address) as client:
            [job] = wait_for(lambda: client.list(), timeout=60)   # the refused left none
            wait_for(lambda: built_in(server, "bf16"), timeout=120)
            client.cancel(job.job_id)      # the stage is built: the frames are not needed
            assert state_name(finished(client, job.job_id)) in ("CANCELLED", "SUCCEEDED")
            assert not built_in(server, "fp32")
            # a job that names no precision (the web page's) runs in the server's own
            other = client.submit(tape, _options())
            wait_for(lambda: built_in(server, "fp32"), timeout=120)
            client.cancel(other.job_id)
            finished(client, other.job_id)
    finally:
        submit.kill()
        submit.wait()


def _options(precision: str = ""):
    options = jobs_pb2.JobOptions(codec="ffv1", precision=precision)
    options.stages.add(task="deblur", model="mmprnn")
    return options

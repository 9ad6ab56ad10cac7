"""The client of the job API (``jobs.proto``): what `orchestrator submit --server`,
`status`, `watch`, `list`, `cancel` and `fetch` use.

    client = JobClient("127.0.0.1:50100", token="s3cret")
    job = client.submit(Path("tape.mp4"), options)
    for status in client.watch(job.job_id): ...
    client.fetch(job.job_id, Path("tape.restored.mp4"))
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

import grpc

import services.stagekit.protos  # noqa: F401  (puts proto/ on the import path)
from services.stagekit.client import Closing, open_channel
from services.stagekit.weights import sha256_file

jobs_pb2, jobs_pb2_grpc = grpc.protos_and_services("restoration/v1/jobs.proto")

CHUNK = 1024 * 1024
STATE_NAMES = {v: k for k, v in jobs_pb2.JobState.items()}


def channel_credentials(ca: Path | None = None, cert: Path | None = None,
                        key: Path | None = None) -> grpc.ChannelCredentials:
    """TLS to the server (``ca`` to trust it), and mutual TLS with ``cert`` and ``key``."""
    read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
    return grpc.ssl_channel_credentials(read(ca), read(key), read(cert))


class JobClient(Closing):
    def __init__(self, address: str, token: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None, timeout: float = 60.0):
        self.address = address
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.channel = open_channel(address, credentials)
        self.stub = jobs_pb2_grpc.JobServiceStub(self.channel)

    def submit(self, path: Path, options=None, name: str | None = None):
        """Upload a local file as a new job; returns its first JobStatus."""
        path = Path(path)
        info = jobs_pb2.UploadInfo(file_name=name or path.name, size=path.stat().st_size,
                                   sha256=sha256_file(path))
        start = jobs_pb2.SubmitStart(options=options or jobs_pb2.JobOptions(), upload=info)
        return self.stub.Submit(_upload(start, path), metadata=self.metadata)

    def submit_server_path(self, server_path: str, options=None):
        start = jobs_pb2.SubmitStart(options=options or jobs_pb2.JobOptions(),
                                     server_path=server_path)
        return self.stub.Submit(iter([jobs_pb2.SubmitRequest(start=start)]),
                                metadata=self.metadata, timeout=self.timeout)

    def submit_raw(self, messages):
        """Send Submit messages as given (tests: broken uploads)."""
        return self.stub.Submit(iter(messages), metadata=self.metadata, timeout=self.timeout)

    def status(self, job_id: str):
        return self.stub.Status(jobs_pb2.JobRef(job_id=job_id), metadata=self.metadata,
                                timeout=self.timeout)

    def list(self):
        return self.stub.List(jobs_pb2.ListRequest(), metadata=self.metadata,
                              timeout=self.timeout).jobs

    def cancel(self, job_id: str):
        return self.stub.Cancel(jobs_pb2.JobRef(job_id=job_id), metadata=self.metadata,
                                timeout=self.timeout)

    def watch(self, job_id: str) -> Iterator:
        return self.stub.Watch(jobs_pb2.JobRef(job_id=job_id), metadata=self.metadata)

    def fetch(self, job_id: str, output: Path) -> Path:
        """Download the result into ``output`` (atomically, its checksum checked)."""
        output = Path(output)
        part = output.with_name(f".{output.name}.part")
        digest = hashlib.sha256()
        info = None
        try:
            with open(part, "wb") as f:
                for chunk in self.stub.Fetch(jobs_pb2.JobRef(job_id=job_id), metadata=self.metadata):
                    if chunk.HasField("info"):
                        info = chunk.info
                        continue
                    digest.update(chunk.data)
                    f.write(chunk.data)
            if info is None or digest.hexdigest() != info.sha256:
                raise OSError(f"download of job {job_id} is incomplete or damaged")
            os.replace(part, output)
        finally:
            part.unlink(missing_ok=True)
        return output


def _upload(start, path: Path):
    yield jobs_pb2.SubmitRequest(start=start)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            yield jobs_pb2.SubmitRequest(data=block)


# What a refused call means, for codes whose details alone would not say it.
CODE_WORDS = {
    grpc.StatusCode.UNAUTHENTICATED: "the job service needs a valid token (--token or --token-file)",
    grpc.StatusCode.PERMISSION_DENIED: "the job service does not allow this",
    grpc.StatusCode.NOT_FOUND: "no such job",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the job service did not answer in time",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "the request is larger than the job service accepts",
}


def in_words(exc: grpc.RpcError, address: str) -> str:
    """A failed job API call as a sentence, without gRPC's status names."""
    code, details = exc.code(), (exc.details() or "").strip()
    if code == grpc.StatusCode.UNAVAILABLE and "shutting down" not in details:
        return f"cannot reach the job service at {address}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED or not details:
        return CODE_WORDS.get(code, f"the job service at {address} failed the request")
    return details


def state_name(status) -> str:
    return STATE_NAMES.get(status.state, "UNKNOWN")


def describe(status) -> str:
    """One line for a job, as `orchestrator status` and `list` print it."""
    state = state_name(status)
    if status.queue_position:
        state += f" ({queue_words(status.queue_position)})"
    parts = [status.job_id, state]
    if status.clips_total:
        parts.append(f"clips {status.clips_done}/{status.clips_total}")
    parts.append(f"frames {status.frames_done}/{status.frames_total}")
    parts += [f"{s.name} {s.frames_per_second:.1f} f/s" for s in status.stages]
    if status.eta_seconds >= 0:
        parts.append(f"ETA {status.eta_seconds:.0f}s")
    parts.append(status.input_name)
    if status.error:
        parts.append(f"error: {status.error}")
    return " | ".join(parts)


def queue_words(position: int) -> str:
    ahead = position - 1
    return "next to start" if ahead == 0 else f"{ahead} job{'s' if ahead > 1 else ''} ahead"

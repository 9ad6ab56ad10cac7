"""The web server's view of the job service: JobService calls with the caller's token,
and JobStatus as JSON for the page."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import grpc

from services.stagekit.server import CLIENT_OPTIONS

from ..jobs.client import CODE_WORDS, jobs_pb2, jobs_pb2_grpc, state_name

CHUNK = 1024 * 1024

# gRPC outcomes as the HTTP status the page understands.
HTTP_STATUS = {
    grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 409, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413, grpc.StatusCode.UNAVAILABLE: 502,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class JobServiceError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _translate(exc: grpc.RpcError) -> JobServiceError:
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return JobServiceError(502, "the job service cannot be reached")
    return JobServiceError(HTTP_STATUS.get(code, 500),
                           exc.details() or CODE_WORDS.get(code, "the job service failed the request"))


class Gateway:
    def __init__(self, address: str, timeout: float = 30.0, credentials=None):
        """``credentials``: TLS to the job API (grpc.ChannelCredentials), None for plain."""
        self.address = address
        self.timeout = timeout
        self.channel = (grpc.secure_channel(address, credentials, options=CLIENT_OPTIONS)
                        if credentials else grpc.insecure_channel(address, options=CLIENT_OPTIONS))
        self.stub = jobs_pb2_grpc.JobServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def submit(self, path: Path, tasks: list[str], output_name: str, token: str | None,
               send_file: bool = False):
        """A job on ``path``: named as a server path, or its bytes sent when the job service
        cannot see this server's folder (another machine)."""
        stages = [jobs_pb2.StageSetting(task=task, model="auto") for task in tasks]
        options = jobs_pb2.JobOptions(stages=stages, codec="h264", crf=18, native="auto",
                                      output_name=output_name)
        if not send_file:
            start = jobs_pb2.SubmitStart(options=options, server_path=str(path))
            return self._call(self.stub.Submit, iter([jobs_pb2.SubmitRequest(start=start)]), token)
        info = jobs_pb2.UploadInfo(file_name=path.name, size=path.stat().st_size)
        start = jobs_pb2.SubmitStart(options=options, upload=info)
        return self._call(self.stub.Submit, _file_messages(start, path), token, timeout=None)

    def status(self, job_id: str, token: str | None):
        return self._call(self.stub.Status, jobs_pb2.JobRef(job_id=job_id), token)

    def list(self, token: str | None):
        return self._call(self.stub.List, jobs_pb2.ListRequest(), token).jobs

    def cancel(self, job_id: str, token: str | None):
        return self._call(self.stub.Cancel, jobs_pb2.JobRef(job_id=job_id), token)

    def fetch(self, job_id: str, output: Path, token: str | None) -> tuple[Path, str]:
        """The result into ``output`` with its checksum checked; returns it and its name."""
        return self._download(self.stub.Fetch, job_id, output, token)

    def fetch_latest_clip(self, job_id: str, output: Path, token: str | None) -> tuple[Path, str]:
        """The latest finished clip's small video, as ``fetch`` does the result."""
        return self._download(self.stub.FetchLatestClip, job_id, output, token)

    def _download(self, method, job_id: str, output: Path, token: str | None) -> tuple[Path, str]:
        part = output.with_name(f".{output.name}.part")
        digest, info = hashlib.sha256(), None
        try:
            with open(part, "wb") as f:
                for chunk in method(jobs_pb2.JobRef(job_id=job_id), metadata=_metadata(token)):
                    if chunk.HasField("info"):
                        info = chunk.info
                        continue
                    digest.update(chunk.data)
                    f.write(chunk.data)
            if info is None or (info.sha256 and digest.hexdigest() != info.sha256):
                raise JobServiceError(502, f"the download of job {job_id} arrived damaged")
            os.replace(part, output)
        except grpc.RpcError as exc:
            raise _translate(exc) from None
        finally:
            part.unlink(missing_ok=True)
        return output, info.file_name

    def _call(self, method, request, token: str | None, timeout: float | None = -1.0):
        try:
            return method(request, metadata=_metadata(token),
                          timeout=self.timeout if timeout == -1.0 else timeout)
        except grpc.RpcError as exc:
            raise _translate(exc) from None


def _file_messages(start, path: Path):
    yield jobs_pb2.SubmitRequest(start=start)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            yield jobs_pb2.SubmitRequest(data=block)


def _metadata(token: str | None) -> tuple:
    return (("authorization", f"Bearer {token}"),) if token else ()


def has_thumbnail_field() -> bool:
    """JobStatus may carry the latest restored frame; the page falls back when it does not."""
    return "thumbnail" in jobs_pb2.JobStatus.DESCRIPTOR.fields_by_name


def status_json(status) -> dict:
    total = status.frames_total
    return {
        "id": status.job_id, "state": state_name(status),
        "clips_done": status.clips_done, "clips_total": status.clips_total,
        "frames_done": status.frames_done, "frames_total": total,
        "fraction": min(status.frames_done / total, 1.0) if total > 0 else None,
        "eta_seconds": status.eta_seconds if status.eta_seconds >= 0 else None,
        "stages": [{"name": s.name, "frames": s.frames, "fps": round(s.frames_per_second, 2)}
                   for s in status.stages],
        "error": status.error, "failed_stage": status.failed_stage,
        "input_name": status.input_name, "output_name": status.output_name,
        "created": status.created, "updated": status.updated,
        "queue_position": status.queue_position,
        "latest_clip": getattr(status, "latest_clip", ""),
    }


FINISHED = {"SUCCEEDED", "FAILED", "CANCELLED"}

"""Acceptance 4-5: bad uploads rejected with clear errors while other jobs go on; a token
and TLS keep out who has neither."""
from __future__ import annotations

import hashlib
import subprocess

import grpc
import pytest

from orchestrator.jobs.client import JobClient, channel_credentials, jobs_pb2, state_name

from .conftest import finished, make_tape, wait_for


def local_options():
    options = jobs_pb2.JobOptions(codec="ffv1", native="full")
    options.stages.add(task="denoise", model="classical")
    return options


def upload(name: str, data: bytes, size: int | None = None):
    info = jobs_pb2.UploadInfo(file_name=name, size=len(data) if size is None else size,
                               sha256=hashlib.sha256(data).hexdigest())
    yield jobs_pb2.SubmitRequest(start=jobs_pb2.SubmitStart(options=local_options(), upload=info))
    for start in range(0, len(data), 4096):
        yield jobs_pb2.SubmitRequest(data=data[start:start + 4096])


def rejected(client, messages) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        client.submit_raw(messages)
    return caught.value


def test_bad_inputs_are_rejected_and_the_server_keeps_serving(tmp_path, orchestrator):
    server = orchestrator("--max-input-bytes", "400000", "--max-resolution", "100x100")
    good = make_tape(tmp_path / "good.mp4", scenes=2, frames=6)
    big = make_tape(tmp_path / "big.mp4", scenes=1, frames=4, size=(160, 96))
    data = good.read_bytes()
    with JobClient(server.address) as client:
        running = client.submit(good, local_options())
        cases = {
            "corrupt upload": (upload("noise.mp4", bytes(range(256)) * 64), "not a readable video"),
            "truncated upload": (upload("cut.mp4", data[: len(data) // 2], size=len(data)),
                                 "upload truncated"),
            "truncated file": (upload("half.mp4", data[: len(data) // 3]), "not a readable video"),
            "over the size limit": (upload("huge.mp4", b"", size=500000), "over the limit of 400000"),
            "over the resolution limit": (upload("big.mp4", big.read_bytes()),
                                          "resolution 160x96 is over the limit of 100x100"),
            "path traversal": (upload("../../evil.mp4", data), "a plain file name is required"),
            "hidden path": (upload("/etc/passwd", data), "a plain file name is required"),
        }
        for what, (messages, reason) in cases.items():
            error = rejected(client, messages)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, what
            assert reason in error.details(), f"{what}: {error.details()}"
        assert not (tmp_path / "evil.mp4").exists() and not (server.store.parent / "evil.mp4").exists()
        error = rejected(client, iter([jobs_pb2.SubmitRequest(start=jobs_pb2.SubmitStart(
            options=local_options(), server_path="/etc/hostname"))]))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        status = finished(client, running.job_id)
        assert state_name(status) == "SUCCEEDED", status.error
        assert [j.job_id for j in client.list()] == [running.job_id]
        leftovers = [p.name for p in (server.store / "jobs").iterdir()]
        assert leftovers == [running.job_id], "a rejected upload left files behind"


def test_token_required(tmp_path, orchestrator):
    server = orchestrator("--token", "s3cret")
    with JobClient(server.address) as anonymous:
        with pytest.raises(grpc.RpcError) as caught:
            anonymous.list()
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with JobClient(server.address, token="wrong") as wrong:
        with pytest.raises(grpc.RpcError) as caught:
            wrong.status("anything")
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with JobClient(server.address, token="s3cret") as client:
        assert list(client.list()) == []


def make_cert(folder):
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", key, "-out", cert, "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


def test_tls_keeps_out_plaintext_clients(tmp_path, orchestrator):
    cert, key = make_cert(tmp_path)
    from .conftest import Orchestrator
    server = Orchestrator(tmp_path / "store", "--tls-cert", str(cert), "--tls-key", str(key),
                          healthy=False)
    try:
        with JobClient(server.address, credentials=channel_credentials(cert)) as client:
            wait_for(lambda: _answers(client), timeout=60)
        with JobClient(server.address, timeout=5) as plaintext:
            with pytest.raises(grpc.RpcError) as caught:
                plaintext.list()
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def _answers(client) -> bool:
    try:
        client.list()
        return True
    except grpc.RpcError:
        return False


def test_a_job_cannot_send_frames_to_an_endpoint_the_server_does_not_allow(tmp_path, orchestrator):
    from .conftest import probe_options
    server = orchestrator()
    tape = make_tape(tmp_path / "tape.mp4", scenes=1, frames=4)
    with JobClient(server.address) as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.submit(tape, probe_options("grpc://198.51.100.7:50051"))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "198.51.100.7" in caught.value.details()


def test_tls_from_a_secret_folder_with_health_alone_on_a_plaintext_port(tmp_path):
    cert, key = make_cert(tmp_path)
    secret = tmp_path / "tls"
    secret.mkdir()
    (secret / "tls.crt").write_bytes(cert.read_bytes())
    (secret / "tls.key").write_bytes(key.read_bytes())
    from services.stagekit.testing import free_port, wait_serving
    from .conftest import Orchestrator
    health = f"127.0.0.1:{free_port()}"
    server = Orchestrator(tmp_path / "store", "--tls-dir", str(secret), "--health-listen", health,
                          "--token", "s3cret", healthy=False)
    try:
        wait_serving(health, 60, server.proc)     # plaintext, while the job API is TLS only
        with JobClient(server.address, "s3cret", credentials=channel_credentials(cert)) as client:
            assert len(client.list()) == 0
        with JobClient(server.address, "s3cret", timeout=5) as plaintext:
            with pytest.raises(grpc.RpcError):
                plaintext.list()
    finally:
        server.stop()

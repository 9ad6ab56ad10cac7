"""Acceptance 3: the Triton path. The stage adapter (deploy/triton/backend.py) is tested
in-process; the slow test runs deploy/triton/models in a real Triton server (the
``tritonserver`` that nvidia-pytriton's wheel carries, on the CPU) and streams clips
through it with the orchestrator's ``triton://`` client."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import grpc
import numpy as np
import pytest

from deploy import generate
from deploy.stack import ROOT
from deploy.triton.backend import ClipPump, StageAborted
from deploy.triton.client import TritonStageClient, client_for, parse_endpoint
from services.stagekit import ClipInfo, StageError, codec
from services.stagekit.protos import stage_pb2 as pb
from services.stagekit.server import StageServicer
from services.stagekit.testing import free_port

from .recipes import ENVS

STUB_REQUIREMENTS = ROOT / "deploy" / "triton" / "requirements.txt"
SERVER_WHEEL = "nvidia-pytriton==0.7.0"   # installed --no-deps: only its server binary is used
SYSTEM_LIBPYTHON = Path("/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0")


def classical(task: str):
    from services.classical.stage import create_stage
    return next(s for s in create_stage() if s.task == task)


def frames_of(count: int, height: int = 36, width: int = 52) -> list[np.ndarray]:
    rng = np.random.default_rng(count)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def clip(frames, **params) -> ClipInfo:
    height, width = frames[0].shape[:2]
    return ClipInfo("clip", width=width, height=height, fps=Fraction(30000, 1001),
                    params={k: str(v) for k, v in params.items()}, frame_count=len(frames))


def test_endpoints_parse():
    assert parse_endpoint("triton://gpu-1:8001/rvrt") == ("gpu-1:8001", "rvrt")
    for bad in ("grpc://a:1/rvrt", "triton://a:1", "triton://a:1/x/y", "triton:///rvrt"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)


def test_each_endpoint_scheme_gets_its_client():
    from services.stagekit.client import StageClient
    with client_for("grpc://127.0.0.1:50051") as client:
        assert isinstance(client, StageClient) and client.address == "127.0.0.1:50051"
    with client_for("triton://127.0.0.1:8001/rvrt") as client:
        assert isinstance(client, TritonStageClient) and client.model == "rvrt"


def test_every_triton_model_is_a_sequence_of_clip_chunks():
    for name, (service, task) in generate.triton_models().items():
        config = (generate.TRITON / name / "config.pbtxt").read_text()
        assert f'name: "{name}"' in config and f'string_value: "{task}"' in config
        for control in ("CONTROL_SEQUENCE_START", "CONTROL_SEQUENCE_END", "CONTROL_SEQUENCE_CORRID"):
            assert control in config
        assert ("KIND_GPU" in config) == service.gpu


@pytest.mark.parametrize("task,params", [("denoise", {}), ("interpolate", {"factor": 2})])
def test_the_pump_streams_a_clip_as_the_stage_does(task, params):
    """Requests of one chunk each, as Triton delivers them: the header is answered at
    once, each batch with what it made possible, the end with the rest."""
    frames = frames_of(7)
    info = clip(frames, **params)
    expected = list(classical(task).run(info, iter(frames))[1])
    pump = ClipPump(StageServicer([classical(task)]))
    answers = [pump.push(chunk) for chunk in codec.encode_clip(info, iter(frames), 2, task)]
    assert [c.WhichOneof("kind") for c in answers[0]] == ["header"]
    assert answers[-1][-1].WhichOneof("kind") == "end" and pump.finished
    _, out_info, out = codec.decode_clip(iter([c for answer in answers for c in answer]))
    out = list(out)
    assert len(out) == len(expected) and all(np.array_equal(a, b) for a, b in zip(out, expected))
    pump.thread.join(timeout=5)
    assert not pump.thread.is_alive()


def test_the_pump_reports_a_bad_chunk_and_an_abandoned_clip_ends():
    frames = frames_of(3)
    pump = ClipPump(StageServicer([classical("denoise")]))
    pump.push(codec.header_message(clip(frames), "denoise"))
    with pytest.raises(StageAborted) as caught:
        pump.push(pb.ClipChunk(batch=pb.FrameBatch(count=1, data=b"short")))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT and "bytes" in caught.value.details
    abandoned = ClipPump(StageServicer([classical("denoise")]))
    abandoned.push(codec.header_message(clip(frames), "denoise"))
    abandoned.close()
    abandoned.thread.join(timeout=5)
    assert not abandoned.thread.is_alive()


# --- a real Triton server -------------------------------------------------------------------

REFERENCE = """
import sys
from fractions import Fraction
import numpy as np
from services.classical.stage import create_stage
from services.stagekit import ClipInfo
frames, task, factor = list(np.load(sys.argv[1])), sys.argv[2], sys.argv[3]
stage = next(s for s in create_stage() if s.task == task)
params = {"factor": factor} if task == "interpolate" else {}
info = ClipInfo("clip", frames[0].shape[1], frames[0].shape[0], Fraction(30000, 1001),
                params=params, frame_count=len(frames))
np.save(sys.argv[4], np.stack(list(stage.run(info, iter(frames))[1])))
"""


def stub_env() -> Path:
    """The stub's site-packages and the server binary, kept under build/ like the image envs."""
    digest = hashlib.sha256(STUB_REQUIREMENTS.read_bytes() + SERVER_WHEEL.encode()).hexdigest()
    venv = ENVS / f"triton-{digest[:16]}"
    if not (venv / ".complete").is_file():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "-r", str(STUB_REQUIREMENTS)], check=True)
        subprocess.run([*pip, "--no-deps", SERVER_WHEEL], check=True)
        server = site_packages(venv) / "pytriton" / "tritonserver"
        # what pytriton does before it starts the server: the stub for this Python goes in the backend
        shutil.copy(server / "python_backend_stubs" / "3.11" / "triton_python_backend_stub",
                    server / "backends" / "python" / "triton_python_backend_stub")
        (venv / ".complete").touch()
    return venv


def site_packages(venv: Path) -> Path:
    return venv / "lib" / "python3.11" / "site-packages"


@contextlib.contextmanager
def triton_server(venv: Path, *models: str):
    server = site_packages(venv) / "pytriton" / "tritonserver"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{site_packages(venv)}"}
    loads = [f"--load-model={m}" for m in models]
    proc = subprocess.Popen(
        [str(server / "bin" / "tritonserver"), f"--model-repository={generate.TRITON}",
         "--model-control-mode=explicit", *loads, f"--backend-directory={server / 'backends'}",
         "--grpc-address=127.0.0.1", f"--grpc-port={port}", "--allow-http=false",
         "--allow-metrics=false", "--log-verbose=0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(f"127.0.0.1:{port}", models, proc)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(address: str, models, proc, timeout: float = 120) -> None:
    import tritonclient.grpc as triton
    client = triton.InferenceServerClient(address)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tritonserver exited with {proc.returncode}:\n{proc.stdout.read()[-4000:]}")
        with contextlib.suppress(Exception):
            if client.is_server_ready() and all(client.is_model_ready(m) for m in models):
                return
        time.sleep(0.5)
    raise TimeoutError(f"tritonserver at {address} not ready after {timeout:.0f}s")


def reference(venv: Path, frames, task: str, factor: int, tmp_path) -> np.ndarray:
    np.save(tmp_path / "in.npy", np.stack(frames))
    subprocess.run([str(venv / "bin" / "python"), "-c", REFERENCE, str(tmp_path / "in.npy"), task,
                    str(factor), str(tmp_path / "out.npy")],
                   check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return np.load(tmp_path / "out.npy")


@pytest.mark.slow
@pytest.mark.skipif(not SYSTEM_LIBPYTHON.is_file(), reason="Triton's Python stub needs libpython3.11")
def test_clips_stream_through_a_real_triton_server(tmp_path):
    venv = stub_env()
    frames = frames_of(9)
    with triton_server(venv, "classical_denoise", "classical_interpolate") as address:
        for task, factor in (("denoise", 1), ("interpolate", 2)):
            expected = reference(venv, frames, task, factor, tmp_path)
            with TritonStageClient(f"triton://{address}/classical_{task}", timeout=120) as client:
                info = clip(frames, **({"factor": factor} if task == "interpolate" else {}))
                out_info, out = client.process(info, iter(frames), batch=2, task=task)
                out = np.stack(list(out))
            assert out_info.fps == info.fps * factor
            assert out.shape == expected.shape and np.array_equal(out, expected)
        with TritonStageClient(f"triton://{address}/classical_denoise", timeout=120) as client:
            assert client.describe() == [{"task": "denoise", "model": "classical",
                                          "backend": "triton classical_denoise"}]
            with pytest.raises(StageError, match="no single stage"):
                client.process(clip(frames), iter(frames), task="superres")
            with pytest.raises(StageError, match="bytes"):
                list(client.process(clip(frames), iter([np.zeros((4, 4, 3), np.uint8)]), task="denoise")[1])
            # the failed clips ended their sequences: the model instances serve the next one
            _, out = client.process(clip(frames), iter(frames), task="denoise")
            assert len(list(out)) == len(frames)


def orchestrator_takes_triton() -> bool:
    from orchestrator.errors import UserError
    from orchestrator.pipeline.specs import StageSpec, _check
    try:
        _check(StageSpec("denoise", "classical", endpoint="triton://127.0.0.1:1/classical_denoise"))
    except UserError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not SYSTEM_LIBPYTHON.is_file(), reason="Triton's Python stub needs libpython3.11")
@pytest.mark.skipif(not orchestrator_takes_triton(), reason="the orchestrator takes no triton:// endpoints yet")
def test_the_orchestrator_restores_a_video_through_triton(tmp_path):
    import av
    from services.stagekit.testing import shared_dir
    source = shared_dir() / "footage" / "oldfilm_001.mp4"
    if not source.is_file():
        pytest.skip(f"no footage at {source}")
    output = tmp_path / "out.mp4"
    with triton_server(stub_env(), "classical_denoise") as address:
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator", "submit", str(source), "-o", str(output), "-q",
             "--stages", "denoise", "--endpoint", f"denoise=triton://{address}/classical_denoise"],
            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with av.open(str(output)) as restored, av.open(str(source)) as original:
        assert restored.streams.video[0].frames == original.streams.video[0].frames

"""Test helpers shared by every model's tests: fixtures' location and real services."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    """The project's ``shared/`` (fixtures, footage): $RESTORATION_SHARED or ../shared."""
    return Path(os.environ.get("RESTORATION_SHARED", REPO.parent / "shared"))


def parity_dir(model: str) -> Path:
    return shared_dir() / "parity" / model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_serving(address: str, timeout: float = 90.0, proc=None) -> None:
    """Block until the gRPC health service at ``address`` says SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"service at {address} exited with {proc.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"service at {address} not serving after {timeout:.0f}s")


@contextlib.contextmanager
def running_service(module: str, *args: str, env: dict | None = None, timeout: float = 90.0):
    """Start ``python -m MODULE --listen 127.0.0.1:PORT ARGS`` as a real process; yield its
    address once it is healthy; stop it afterwards."""
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--listen", address, *args], cwd=REPO,
        env={**os.environ, **(env or {})})
    try:
        wait_serving(address, timeout, proc)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def clip_info(frames, fmt: str | None = None, **params):
    """A clip header for ``frames`` (a sequence of HxWx3 arrays): its size, its pixel format
    (from the dtype unless given), 25 fps, and ``params`` as the strings a header carries."""
    from fractions import Fraction

    import numpy as np

    from .stage import ClipInfo
    height, width = frames[0].shape[:2]
    fmt = fmt or ("rgbf16" if frames[0].dtype == np.float16 else "rgb24")
    return ClipInfo("clip", width=width, height=height, fps=Fraction(25), pixel_format=fmt,
                    frame_count=len(frames), params={k: str(v) for k, v in params.items()})


def damaged(state: dict, damage: str, key: str) -> dict:
    """``state`` (changed in place) with ``key`` 'missing', 'extra' (a stray tensor) or
    'misshaped' (its second dimension one short): what a strict load must name."""
    import torch
    if damage == "missing":
        del state[key]
    elif damage == "extra":
        state[key] = torch.zeros(1)
    else:
        state[key] = state[key][:, :-1]
    return state


def check_cpu_precisions(create_stage, run, mean_levels: float, **kwargs) -> float:
    """A model's ``create_stage(**kwargs, precision=...)`` on the CPU as a service's
    --precision and a job's precision reach it: fp32 and bf16 build the network in those
    dtypes and give frames that differ (bf16 really ran) by less than ``mean_levels`` on
    average; fp16 is refused in one sentence naming CUDA. ``run(stage)``: its uint8 frames.
    Returns the mean difference, in levels."""
    import numpy as np
    import torch

    from .server import precision_kwargs
    assert precision_kwargs(create_stage, "bf16") == {"precision": "bf16"}
    out = {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        stage = create_stage(**kwargs, precision=precision)
        assert stage.dtype == dtype, (precision, stage.dtype)
        out[precision] = np.asarray(run(stage)).astype(np.int16)
    difference = np.abs(out["bf16"] - out["fp32"])
    assert 0 < difference.mean() < mean_levels, difference.mean()
    try:
        create_stage(**kwargs, precision="fp16")
    except ValueError as exc:
        assert "fp16 needs a CUDA device" in str(exc), exc
    else:
        raise AssertionError("fp16 on the CPU was not refused")
    return float(difference.mean())

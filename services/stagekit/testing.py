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

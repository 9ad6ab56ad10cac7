"""A small client for any stage service, for the orchestrator and for users' own tools.

    from services.stagekit.client import StageClient
    from services.stagekit import ClipInfo
    client = StageClient("127.0.0.1:50051")
    info = ClipInfo("clip0", width=360, height=240, fps=Fraction(30000, 1001))
    out_info, frames = client.process(info, my_frames, task="denoise")
    for frame in frames: ...   # numpy (H, W, 3) uint8
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import grpc
import numpy as np

from . import codec
from .auth import stage_metadata
from .protos import stage_pb2 as pb
from .protos import stage_pb2_grpc as pb_grpc
from .server import CLIENT_OPTIONS
from .stage import ClipInfo, StageError


def default_credentials() -> grpc.ChannelCredentials | None:
    """TLS to stage services when $RESTORATION_TLS_CA is set (the CA that signed them),
    mutual with $RESTORATION_TLS_CERT and $RESTORATION_TLS_KEY: one setting for every
    stage client of a process."""
    ca = os.environ.get("RESTORATION_TLS_CA")
    if not ca:
        return None
    read = lambda name: Path(os.environ[name]).read_bytes() if os.environ.get(name) else None  # noqa: E731
    return grpc.ssl_channel_credentials(Path(ca).read_bytes(), read("RESTORATION_TLS_KEY"),
                                        read("RESTORATION_TLS_CERT"))


def open_channel(address: str, credentials: grpc.ChannelCredentials | None = None,
                 options=CLIENT_OPTIONS) -> grpc.Channel:
    """A channel to ``address``: TLS when ``credentials`` are given, else plaintext."""
    if credentials:
        return grpc.secure_channel(address, credentials, options=options)
    return grpc.insecure_channel(address, options=options)


class Closing:
    """A client that owns a connection (``channel``, a gRPC channel, unless ``close`` says
    otherwise): ``with Client(...) as client:`` closes it after."""

    channel: grpc.Channel

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class StageClient(Closing):
    def __init__(self, address: str, timeout: float | None = None,
                 credentials: grpc.ChannelCredentials | None = None):
        self.address = address
        self.timeout = timeout
        # Round robin over every address a name resolves to (a headless Service's pods).
        options = CLIENT_OPTIONS + [("grpc.lb_policy_name", "round_robin")]
        credentials = credentials or default_credentials()
        self.channel = open_channel(address, credentials, options)
        self.stub = pb_grpc.StageServiceStub(self.channel)
        self.metadata = stage_metadata()

    def describe(self) -> list[dict]:
        reply = self.stub.Describe(pb.DescribeRequest(), timeout=self.timeout,
                                   metadata=self.metadata)
        return [{"task": s.task, "model": s.model, "backend": s.backend, "weights": s.weights,
                 "window_past": s.window_past, "window_future": s.window_future,
                 "scale": s.scale, "fps_factor": s.fps_factor, "max_batch": s.max_batch,
                 "accepts": [codec.PB_TO_FORMAT[f] for f in s.accepts]} for s in reply.stages]

    def process(self, info: ClipInfo, frames: Iterable[np.ndarray], batch: int = 4,
                task: str = "", model: str = "") -> tuple[ClipInfo, Iterator[np.ndarray]]:
        """Stream one clip through the service; returns the output header and a lazy
        iterator of output frames. A rejected request raises StageError with the reason."""
        replies = self.stub.Process(codec.encode_clip(info, frames, batch, task, model),
                                    timeout=self.timeout, metadata=self.metadata)
        try:
            _, out_info, out_frames = codec.decode_clip(replies)
        except grpc.RpcError as exc:
            raise _stage_error(exc) from None
        return out_info, _reraise(out_frames)


def _stage_error(exc: grpc.RpcError) -> Exception:
    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return StageError(exc.details())
    return exc


def _reraise(frames: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    try:
        yield from frames
    except grpc.RpcError as exc:
        raise _stage_error(exc) from None

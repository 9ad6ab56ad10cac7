"""A stage client for ``triton://HOST:PORT/MODEL`` endpoints, shaped like StageClient.

    from deploy.triton.client import TritonStageClient
    with TritonStageClient("triton://127.0.0.1:8001/rvrt") as client:
        out_info, frames = client.process(info, my_frames, task="denoise")

The clip goes to Triton's gRPC port as one sequence (see deploy/triton/__init__.py); the
replies are read back with the same codec as the gRPC stage service's.
"""
from __future__ import annotations

import contextlib
import secrets
from typing import Iterable, Iterator
from urllib.parse import urlsplit

import numpy as np

from services.stagekit import codec
from services.stagekit.client import Closing
from services.stagekit.protos import stage_pb2 as pb
from services.stagekit.server import CLIENT_OPTIONS
from services.stagekit.stage import ClipInfo, StageError

SCHEME = "triton://"


def parse_endpoint(endpoint: str) -> tuple[str, str]:
    """``triton://HOST:PORT/MODEL`` -> ("HOST:PORT", "MODEL")."""
    parts = urlsplit(endpoint)
    model = parts.path.strip("/")
    if parts.scheme != "triton" or not parts.netloc or not model or "/" in model:
        raise ValueError(f"expected triton://HOST:PORT/MODEL, not {endpoint!r}")
    return parts.netloc, model


class TritonStageClient(Closing):
    def __init__(self, endpoint: str, timeout: float | None = None):
        import tritonclient.grpc as triton
        self.address, self.model = parse_endpoint(endpoint)
        self.timeout = timeout
        self.triton = triton
        self.client = triton.InferenceServerClient(self.address, channel_args=CLIENT_OPTIONS)

    def close(self) -> None:
        self.client.close()

    def describe(self) -> list[dict]:
        """The stage the Triton model serves, from its configuration's ``task`` and ``model``
        parameters (what the orchestrator plans with; the rest is the stage's own)."""
        try:
            config = self.client.get_model_config(self.model, as_json=True,
                                                  client_timeout=self.timeout)["config"]
        except self.triton.InferenceServerException as exc:
            raise _stage_error(exc) from None
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        return [{"task": params["task"], "model": params["model"], "backend": f"triton {self.model}"}]

    def process(self, info: ClipInfo, frames: Iterable[np.ndarray], batch: int = 4,
                task: str = "", model: str = "") -> tuple[ClipInfo, Iterator[np.ndarray]]:
        """Stream one clip through the Triton model; the output header now, the frames
        lazily. A rejected request raises StageError with the reason."""
        sequence = secrets.randbits(63) or 1   # 0 means "no sequence" to Triton
        chunks = codec.encode_clip(info, frames, batch, task, model)
        _, out_info, out_frames = codec.decode_clip(self._replies(sequence, chunks))
        return out_info, out_frames

    def _replies(self, sequence: int, chunks: Iterator["pb.ClipChunk"]) -> Iterator["pb.ClipChunk"]:
        ended = False
        try:
            for index, chunk in enumerate(chunks):
                ended = chunk.WhichOneof("kind") == "end"
                yield from self._send(sequence, chunk, start=index == 0, end=ended)
        finally:
            if not ended:
                self._release(sequence)

    def _release(self, sequence: int) -> None:
        """End a sequence cut short (an error, a reader that stopped): until its end
        arrives Triton keeps a model instance's sequence slot for it."""
        # the server answers this stray end with an error; the slot is freed all the same
        with contextlib.suppress(StageError, self.triton.InferenceServerException):
            self._send(sequence, pb.ClipChunk(end=pb.ClipEnd()), start=False, end=True)

    def _send(self, sequence: int, chunk: "pb.ClipChunk", start: bool, end: bool):
        data = self.triton.InferInput("CHUNK", [1], "BYTES")
        data.set_data_from_numpy(np.array([chunk.SerializeToString()], dtype=np.object_))
        try:
            reply = self.client.infer(self.model, [data], sequence_id=sequence,
                                      sequence_start=start, sequence_end=end,
                                      client_timeout=self.timeout)
        except self.triton.InferenceServerException as exc:
            raise _stage_error(exc) from None
        return [pb.ClipChunk.FromString(bytes(c)) for c in reply.as_numpy("CHUNKS").reshape(-1)]


def _stage_error(exc) -> Exception:
    if "INVALID_ARGUMENT" in str(exc.status()):
        return StageError(exc.message())
    return exc


def client_for(endpoint: str, timeout: float | None = None):
    """The stage client for a pipeline endpoint: ``grpc://HOST:PORT`` or
    ``triton://HOST:PORT/MODEL``."""
    if endpoint.startswith(SCHEME):
        return TritonStageClient(endpoint, timeout)
    from services.stagekit.client import StageClient
    return StageClient(endpoint.removeprefix("grpc://"), timeout)

